"""Build the documentation site offline: one HTML page per notebook (with its stored outputs) and an index.

    python bench/build_docs.py [--out _docs]

Quarto (what `nbdev_docs` needs) cannot be installed offline, so pages are made by nbconvert's HTML exporter (the
JupyterLab look), figures inlined as data URIs, links between notebooks rewritten to the pages, and a bar on every
page linking the index and the previous and next chapters. `index.html` is `nbs/index.ipynb` followed by the chapter
list in reading order. Open `_docs/index.html` in a browser; nothing is fetched from the network for the content.
The site is built in a temporary folder and moved into place, so a failed build leaves the old one intact.
"""
import argparse, copy, html, json, re, shutil, tempfile
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter
from nbdev.process import extract_directives

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'
MATHJAX = Path('/usr/share/javascript/mathjax')   # Debian's libjs-mathjax (2.7); without it pages load MathJax from its CDN
MATHJAX_PARTS = ['MathJax.js', 'config/TeX-AMS_CHTML-full.js', 'config/Safe.js', 'extensions', 'jax/element', 'jax/input/TeX',
                 'jax/output/CommonHTML', 'fonts/HTML-CSS/TeX/woff', 'localization/en']
STYLE = ('<style>.snd-nav{position:sticky;top:0;z-index:10;background:#f7f7f7;border-bottom:1px solid #ddd;'
         'padding:6px 16px;font:14px sans-serif}.snd-nav a{margin-right:18px}'
         '.snd-toc li{margin:4px 0;font:15px sans-serif}</style>')

def chapters() -> list[Path]:
    "Chapter notebooks in reading order (their number prefix)."
    return sorted(p for p in NBS.glob('[0-9]*.ipynb'))

def _first_markdown_match(nb, pattern: str) -> str:
    "The first group of `pattern` in the first markdown cell that matches it, or ''."
    for c in nb.cells:
        m = re.search(pattern, c.source, re.M) if c.cell_type == 'markdown' else None
        if m: return m.group(1).strip()
    return ''

def title(nb) -> str: return _first_markdown_match(nb, r'^#\s+(.+)$')
def summary(nb) -> str: return _first_markdown_match(nb, r'^>\s*(.+)$')

def _visible(nb):
    "Drop hidden cells (`#| hide`), as nbdev's own docs do; directive lines stay in code (they say what is exported)."
    nb = copy.deepcopy(nb)
    nb.cells = [c for c in nb.cells if not (c.cell_type == 'code' and 'hide' in extract_directives(copy.deepcopy(c), remove=False))]
    return nb

def _nav(prev, nxt) -> str:
    links = ['<a href="index.html">splat_and_distill: index</a>']
    if prev: links.append(f'<a href="{prev.stem}.html">&larr; {html.escape(prev.stem)}</a>')
    if nxt: links.append(f'<a href="{nxt.stem}.html">{html.escape(nxt.stem)} &rarr;</a>')
    return f'<div class="snd-nav">{"".join(links)}</div>'

def _toc(chs) -> str:
    items = []
    for p in chs:
        nb = nbformat.read(p, as_version=4)
        items.append(f'<li><a href="{p.stem}.html">{html.escape(p.stem)}: {html.escape(title(nb))}</a>'
                     f' &mdash; {html.escape(summary(nb))}</li>')
    return ('<div class="jp-RenderedHTMLCommon" style="padding:16px 48px"><h2 id="chapters">Chapters, in reading order</h2>'
            f'<ol class="snd-toc">{"".join(items)}</ol></div>')

def _page(exporter, nb_path, nav, extra='') -> str:
    body, _ = exporter.from_notebook_node(_visible(nbformat.read(nb_path, as_version=4)))
    body = re.sub(r'href="(?:\./)?([0-9A-Za-z_]+)\.ipynb(#[^"]*)?"', lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"', body)
    body = body.replace('</head>', STYLE + '</head>', 1)
    return re.sub(r'(<body[^>]*>)', lambda m: m.group(1) + nav + extra, body, count=1)

def _copy_mathjax(dst: Path) -> bool:
    "Copy the parts of a local MathJax that the pages use (about 4 MB), so formulas render offline."
    if not (MATHJAX/'MathJax.js').exists(): return False
    for part in MATHJAX_PARTS:
        src = (MATHJAX/part).resolve()
        if src.is_dir(): shutil.copytree(src, dst/'mathjax'/part)
        elif src.exists(): (dst/'mathjax'/part).parent.mkdir(parents=True, exist_ok=True); shutil.copy(src, dst/'mathjax'/part)
    return True

def build(out: Path = ROOT/'_docs') -> list[Path]:
    "Write the site to `out`; returns the pages written."
    out = Path(out)
    exporter = HTMLExporter(template_name='lab', embed_images=True)
    chs = chapters()
    tmp = Path(tempfile.mkdtemp(prefix='.docs-', dir=out.parent if out.parent.exists() else None))
    try:
        pages = []
        if _copy_mathjax(tmp): exporter.mathjax_url = 'mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe'
        else: print(f'no MathJax in {MATHJAX} (apt-get install libjs-mathjax): pages load it from its CDN')
        for i, p in enumerate(chs):
            (tmp/f'{p.stem}.html').write_text(_page(exporter, p, _nav(chs[i - 1] if i else None, chs[i + 1] if i + 1 < len(chs) else None)))
            pages.append(out/f'{p.stem}.html')
        toc = _toc(chs)
        idx = NBS/'index.ipynb'
        if idx.exists(): (tmp/'index.html').write_text(_page(exporter, idx, _nav(None, chs[0] if chs else None)).replace('</body>', toc + '</body>', 1))
        else: (tmp/'index.html').write_text(f'<html><head>{STYLE}</head><body>{toc}</body></html>')
        pages.append(out/'index.html')
        if (NBS/'images').is_dir(): shutil.copytree(NBS/'images', tmp/'images')
        if out.exists(): shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists(): shutil.rmtree(tmp)
    return pages

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default=str(ROOT/'_docs'), help='output folder (default _docs/, gitignored)')
    a = p.parse_args(argv)
    pages = build(Path(a.out))
    print(f'{len(pages)} pages in {a.out}; open {Path(a.out)/"index.html"}')

if __name__ == '__main__': main()
