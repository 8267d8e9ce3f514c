"""Build the documentation site offline: one HTML page per notebook (with its stored outputs) and an index.

    python bench/build_docs.py [--out _docs]

Quarto (what `nbdev_docs` needs) cannot be installed offline, so pages are made by nbconvert's HTML exporter (the
JupyterLab look), figures inlined as data URIs, links between notebooks rewritten to the pages, and a bar on every
page linking the index and the previous and next chapters. `index.html` is `nbs/index.ipynb` followed by the chapter
list in reading order. Open `_docs/index.html` in a browser; nothing is fetched from the network.

Formulas are typeset by a copy of MathJax 2.7 inside the site (`mathjax/`), taken from Debian's libjs-mathjax
(`apt-get install libjs-mathjax`) or else from the pip package jupyter-server-mathjax (a dev requirement); `--mathjax`
or the environment variable `SND_MATHJAX` (auto|debian|pip|none) picks the source; with none, pages load MathJax from its
CDN and show raw LaTeX offline. Every figure's alt text is its caption: a `#| fig-alt:` (or `#| fig-cap:`) directive of the
cell that drew it, else the first sentence of the nearest markdown cell above it. The site is built in a temporary
folder and moved into place, so a failed build leaves the old one intact.
"""
import argparse, copy, html, importlib.util, json, logging, os, re, shutil, tempfile
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter
from nbdev.process import extract_directives

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'
MATHJAX = Path('/usr/share/javascript/mathjax')   # Debian's libjs-mathjax (2.7)
MATHJAX_PARTS = ['MathJax.js', 'config/TeX-AMS_CHTML-full.js', 'config/Safe.js', 'extensions', 'jax/element', 'jax/input/TeX',
                 'jax/output/CommonHTML', 'fonts/HTML-CSS/TeX/woff', 'localization/en']
# jupyter-server-mathjax ships MathJax 2.7 with one combined config (TeX + MathML in, HTML-CSS out) and only the STIX-Web
# fonts, so its pages use HTML-CSS with STIX-Web (what Jupyter's classic notebook did), set in config/local/snd.js
PIP_MATHJAX_PARTS = ['MathJax.js', 'config/TeX-AMS-MML_HTMLorMML-full.js', 'config/Safe.js', 'extensions', 'jax/element',
                     'jax/input/TeX', 'jax/output/HTML-CSS', 'fonts/HTML-CSS/STIX-Web/woff', 'localization/en', 'LICENSE']
PIP_LOCAL_CONFIG = """MathJax.Hub.Config({
  MMLorHTML: {prefer: "HTML"},
  "HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null}
});
MathJax.Ajax.loadComplete("[MathJax]/config/local/snd.js");
"""
MATHJAX_CONFIG = {'debian': 'TeX-AMS_CHTML-full,Safe', 'pip': 'TeX-AMS-MML_HTMLorMML-full,Safe,local/snd'}
PLACEHOLDER_ALT = 'No description has been provided for this image'   # what nbconvert's HTMLExporter writes
STYLE = ('<style>.snd-nav{position:sticky;top:0;z-index:10;background:#f7f7f7;border-bottom:1px solid #ddd;'
         'padding:6px 16px;font:14px sans-serif}.snd-nav a{margin-right:18px}'
         '.snd-toc li{margin:4px 0;font:15px sans-serif}</style>')

def chapters() -> list[Path]:
    "Chapter notebooks in reading order (their number prefix)."
    return sorted(p for p in NBS.glob('[0-9]*.ipynb'))
_all_chapters = chapters   # `build` has an argument of that name

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

def _plain(fragment: str) -> str:
    "Readable text of a piece of rendered markdown: no tags, no heading anchors, TeX without `$` and backslashes."
    from bs4 import BeautifulSoup
    soup = BeautifulSoup(fragment, 'html.parser')
    for a in soup.select('a.anchor-link'): a.decompose()
    t = re.sub(r'\\[,;:! ]', ' ', soup.get_text().replace('$', ''))
    t = re.sub(r'\\(?:math[a-z]+|operatorname|text|big|Big|bigg|left|right)\b', '', t)
    t = re.sub(r'\\([A-Za-z]+)', r'\1', t).replace('{', '').replace('}', '')
    return re.sub(r'\s+', ' ', t).strip()

def _first_sentence(text: str, limit: int = 200, least: int = 60) -> str:
    "The first sentence of `text`, and the next ones while it is shorter than `least` characters; at most `limit`."
    parts = re.split(r'(?<=[.!?])\s+(?=[A-Z0-9(`"])', text)
    s = parts.pop(0)
    while parts and len(s) < least: s += ' ' + parts.pop(0)
    return s if len(s) <= limit else s[:limit - 1].rsplit(' ', 1)[0] + '\u2026'

def _caption(md_cell_html: str) -> str:
    "A caption from a markdown cell: its first sentence, after its heading when it starts with one."
    from bs4 import BeautifulSoup
    soup = BeautifulSoup(md_cell_html, 'html.parser')
    md = soup.select_one('.jp-RenderedMarkdown') or soup
    blocks = [(b.name, _plain(str(b))) for b in md.find_all(['h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'p', 'li'])
              if not b.find_parent(['p', 'li'])]
    blocks = [(n, t) for n, t in blocks if t] or [('p', _plain(str(md)))]
    if blocks[0][0].startswith('h') and len(blocks) > 1: return f'{blocks[0][1]}: {_first_sentence(blocks[1][1])}'
    return _first_sentence(blocks[0][1])

_PLACEHOLDER = f'alt="{PLACEHOLDER_ALT}"'
_CELL = re.compile(r'<div class="jp-Cell (jp-\w+Cell)\b[^"]*"(?: id="cell-id=([^"]*)")?[^>]*>')

def _alt_texts(body: str, nb, fallback: str) -> str:
    """Replace nbconvert's placeholder alt text of every figure by a caption: the `#| fig-alt:`/`#| fig-cap:` directive
    of the code cell that drew it, else the caption of the nearest markdown cell above it, else `fallback`. Figures
    that would share a text (several in one cell, or cells under one markdown cell) are numbered."""
    by_id = {c.get('id'): c for c in nb.cells}
    cells = list(_CELL.finditer(body))
    texts, context = [], fallback            # the caption of each placeholder, in page order
    for i, m in enumerate(cells):
        chunk = body[m.start():cells[i + 1].start() if i + 1 < len(cells) else len(body)]
        if m.group(1) == 'jp-MarkdownCell': context = _caption(chunk) or context
        elif _PLACEHOLDER in chunk:
            cell = by_id.get(m.group(2))
            d = extract_directives(copy.deepcopy(cell), remove=False) if cell is not None and cell.cell_type == 'code' else {}
            own = ' '.join(next((d[k] for k in ('fig-alt', 'fig-alt:', 'fig-cap', 'fig-cap:') if d.get(k)), []))
            texts += [own or context] * chunk.count(_PLACEHOLDER)
    total = {t: texts.count(t) for t in texts}
    seen, alts = {}, []
    for t in texts:
        seen[t] = seen.get(t, 0) + 1
        alts.append(t if total[t] == 1 else f'{t} (figure {seen[t]} of {total[t]})')
    it = iter(alts)
    return re.sub(re.escape(_PLACEHOLDER), lambda m: f'alt="{html.escape(next(it, fallback))}"', body)

class _AltTextsAdded(logging.Filter):
    "nbconvert warns of images without alt text; `_alt_texts` gives them one, so the warning is noise here."
    def filter(self, record): return 'Alternative text is missing' not in record.getMessage()

def _page(exporter, nb_path, nav, extra='', path=NBS) -> str:
    "One page; markdown images are inlined from `path` (what the notebook's relative links mean)."
    nb = _visible(nbformat.read(nb_path, as_version=4))
    body, _ = exporter.from_notebook_node(nb, resources={'metadata': {'path': str(path)}})
    body = _alt_texts(body, nb, title(nb) or nb_path.stem)
    if 'application/vnd.jupyter.widget-state+json' not in body:   # require.js (from a CDN) only serves widgets
        body = body.replace(f'<script src="{exporter.require_js_url}"></script>', '')
    body = re.sub(r'href="(?:\./)?([0-9A-Za-z_]+)\.ipynb(#[^"]*)?"', lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"', body)
    body = body.replace('</head>', STYLE + '</head>', 1)
    return re.sub(r'(<body[^>]*>)', lambda m: m.group(1) + nav + extra, body, count=1)

def _pip_mathjax() -> Path | None:
    "MathJax 2.7 of the pip package jupyter-server-mathjax, if installed (found without importing it)."
    spec = importlib.util.find_spec('jupyter_server_mathjax')
    root = Path(spec.origin).parent/'static' if spec and spec.origin else None
    return root if root and (root/'MathJax.js').exists() else None

def mathjax_source(choice: str | None = None) -> tuple[str, Path] | None:
    """Where the site's MathJax comes from: `choice` (or `$SND_MATHJAX`) is 'debian', 'pip', 'none' or 'auto' (the
    default: Debian's, else pip's). Returns (name, folder), or None for no local copy; a named source that is missing
    is an error."""
    choice = (choice or os.environ.get('SND_MATHJAX') or 'auto').lower()
    found = {'debian': MATHJAX if (MATHJAX/'MathJax.js').exists() else None, 'pip': _pip_mathjax()}
    if choice == 'none': return None
    if choice == 'auto': return next(((k, v) for k, v in found.items() if v), None)
    if choice not in found: raise ValueError(f'SND_MATHJAX/--mathjax must be auto, debian, pip or none, not {choice!r}')
    if not found[choice]:
        raise FileNotFoundError({'debian': f'no MathJax in {MATHJAX} (apt-get install libjs-mathjax)',
                                 'pip': 'no MathJax from jupyter-server-mathjax (pip install jupyter-server-mathjax)'}[choice])
    return choice, found[choice]

def _copy_mathjax(dst: Path, source: tuple[str, Path]) -> str:
    "Copy the parts of a local MathJax that the pages use (2-3 MB) into `dst/mathjax`; returns the `config=` to load."
    name, root = source
    for part in MATHJAX_PARTS if name == 'debian' else PIP_MATHJAX_PARTS:
        src = (root/part).resolve()
        if src.is_dir(): shutil.copytree(src, dst/'mathjax'/part, ignore=shutil.ignore_patterns('a11y'))
        elif src.exists(): (dst/'mathjax'/part).parent.mkdir(parents=True, exist_ok=True); shutil.copy(src, dst/'mathjax'/part)
    if name == 'pip':
        (dst/'mathjax'/'config'/'local').mkdir(parents=True, exist_ok=True)
        (dst/'mathjax'/'config'/'local'/'snd.js').write_text(PIP_LOCAL_CONFIG)
    return MATHJAX_CONFIG[name]

def build(out: Path = ROOT/'_docs', chapters: list[str] | None = None, mathjax: str | None = None) -> list[Path]:
    """Write the site to `out`; returns the pages written. `chapters`: only these notebooks (stems, e.g. '05_splat'),
    for quick builds; `mathjax`: the MathJax source (see `mathjax_source`)."""
    out = Path(out)
    exporter = HTMLExporter(template_name='lab', embed_images=True)
    if not any(isinstance(f, _AltTextsAdded) for f in exporter.log.filters): exporter.log.addFilter(_AltTextsAdded())
    chs = _all_chapters()
    if chapters is not None:
        unknown = set(chapters) - {p.stem for p in chs}
        if unknown: raise ValueError(f'no such chapters: {sorted(unknown)}')
        chs = [p for p in chs if p.stem in chapters]
    source = mathjax_source(mathjax)
    tmp = Path(tempfile.mkdtemp(prefix='.docs-', dir=out.parent if out.parent.exists() else None))
    try:
        pages = []
        if source: exporter.mathjax_url = f'mathjax/MathJax.js?config={_copy_mathjax(tmp, source)}'
        else: print(f'no local MathJax (apt-get install libjs-mathjax, or pip install jupyter-server-mathjax): '
                    'pages load it from its CDN and show raw LaTeX offline')
        for i, p in enumerate(chs):
            (tmp/f'{p.stem}.html').write_text(_page(exporter, p, _nav(chs[i - 1] if i else None, chs[i + 1] if i + 1 < len(chs) else None)))
            pages.append(out/f'{p.stem}.html')
        toc = _toc(chs)
        idx = NBS/'index.ipynb'
        if idx.exists():   # index.ipynb is also the README: its links are relative to the repository root
            (tmp/'index.html').write_text(_page(exporter, idx, _nav(None, chs[0] if chs else None), path=ROOT).replace('</body>', toc + '</body>', 1))
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
    p.add_argument('--chapters', nargs='+', help='only these chapters (e.g. 05_splat), for a quick look')
    p.add_argument('--mathjax', choices=['auto', 'debian', 'pip', 'none'], help='MathJax source (default $SND_MATHJAX or auto)')
    a = p.parse_args(argv)
    pages = build(Path(a.out), a.chapters, a.mathjax)
    print(f'{len(pages)} pages in {a.out}; open {Path(a.out)/"index.html"}')

if __name__ == '__main__': main()
