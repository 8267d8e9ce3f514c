"""The offline documentation site (`python bench/build_docs.py`) builds, links every chapter in order, shows every
figure with a caption as its alt text, and carries its own MathJax (Debian's or jupyter-server-mathjax's)."""
import html, re, sys
from pathlib import Path
import nbformat, pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'bench'))
import build_docs
from run_notebooks import n_images

@pytest.fixture(scope='module')
def site(docs_site): return docs_site

def test_every_notebook_has_a_page(site):
    for p in build_docs.chapters(): assert (site/f'{p.stem}.html').is_file(), f'no page for {p.name}'
    assert (site/'index.html').is_file()

def test_index_links_chapters_in_order(site):
    idx = (site/'index.html').read_text()
    toc = idx[idx.index('Chapters, in reading order'):]
    links = re.findall(r'<li><a href="([^"]+)\.html"', toc)
    assert links == [p.stem for p in build_docs.chapters()], links

def test_chapter_pages_show_their_figures(site):
    "Every image a notebook stores is on its page, inlined (no file next to the page is needed)."
    for p in build_docs.chapters():
        want = sum(n_images(c.outputs) for c in nbformat.read(p, as_version=4).cells if c.cell_type == 'code')
        page = (site/f'{p.stem}.html').read_text()
        got = len(re.findall(r'<img[^>]+src="data:image/(?:png|jpeg)', page))
        assert got >= want, f'{p.stem}.html shows {got} figures, the notebook stores {want}'

def test_pages_link_each_other_not_notebooks(site):
    page = (site/'05_splat.html').read_text()
    assert 'href="04_gaussians.html"' in page and 'href="06_triton.html"' in page
    assert not re.search(r'href="[0-9][^"]*\.ipynb', page), 'a link still points at a notebook'

@pytest.mark.skipif(build_docs.mathjax_source() is None, reason='no local MathJax (apt-get install libjs-mathjax or pip install jupyter-server-mathjax)')
def test_formulas_render_offline(site):
    assert (site/'mathjax'/'MathJax.js').is_file()
    assert 'src="mathjax/MathJax.js' in (site/'05_splat.html').read_text()

def test_nothing_is_fetched_from_the_network(site):
    "No page loads a script, style or image from elsewhere (MathJax is local, require.js is dropped), and every local file a page names is in the site."
    for page in site.glob('*.html'):
        text = page.read_text()
        remote = re.findall(r'<(?:script|img|link)[^>]+(?:src|href)="((?:https?:)?//[^"]+)"', text)
        assert not remote, f'{page.name} loads {remote}'
        for src in re.findall(r'<(?:script|img)[^>]+src="([^"]+)"', text):
            if not src.startswith('data:'): assert (site/src.split('?')[0]).is_file(), f'{page.name}: {src} is not in the site'

def test_every_figure_has_a_caption_as_alt_text(site):
    "No image keeps nbconvert's placeholder; alt texts are non-empty and differ between the figures of a page."
    for page in site.glob('*.html'):
        text = page.read_text()
        assert build_docs.PLACEHOLDER_ALT not in text, f'{page.name} still has the placeholder alt text'
        imgs = re.findall(r'<img[^>]*>', text)
        alts = [html.unescape(m.group(1)) for i in imgs if (m := re.search(r'\balt="([^"]*)"', i))]
        assert len(alts) == len(imgs), f'{page.name}: an image has no alt attribute'
        assert all(a.strip() for a in alts), f'{page.name}: an empty alt text'
        assert len(set(alts)) == len(alts), f'{page.name}: figures share an alt text: {alts}'

def test_alt_text_comes_from_the_markdown_above_or_a_directive():
    "Each figure gets the first sentence of the nearest markdown cell above it (after its heading), or its cell's `#| fig-alt:`; figures under one text are numbered."
    from nbconvert import HTMLExporter
    png = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=='
    def fig(src, n=1):
        c = nbformat.v4.new_code_cell(src)
        c.outputs = [nbformat.v4.new_output('display_data', {'image/png': png, 'text/plain': 'fig'}) for _ in range(n)]
        return c
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell('## The *scene*\n\nTwo views of $\\mathbb{R}^3$ from `render`. More text here.'), fig('a()'),
        nbformat.v4.new_markdown_cell('Depth and colour, side by side, for each of the two context views. Second sentence.'), fig('b()', 2),
        fig('#| fig-alt: A heat map of the error.\nc()')])
    body, _ = HTMLExporter(template_name='lab', embed_images=True).from_notebook_node(nb)
    alts = [html.unescape(a) for a in re.findall(r'<img alt="([^"]*)"', build_docs._alt_texts(body, nb, 'fallback'))]
    assert alts == ['The scene: Two views of R^3 from render. More text here.',
                    'Depth and colour, side by side, for each of the two context views. (figure 1 of 2)',
                    'Depth and colour, side by side, for each of the two context views. (figure 2 of 2)',
                    'A heat map of the error.'], alts

@pytest.fixture(scope='module')
def pip_site(tmp_path_factory):
    "One chapter and the index, with MathJax from jupyter-server-mathjax (a quick build)."
    if build_docs._pip_mathjax() is None: pytest.skip('jupyter-server-mathjax is not installed (pip install -e ".[dev]")')
    out = tmp_path_factory.mktemp('pip_site')/'_docs'
    build_docs.build(out, chapters=['05_splat'], mathjax='pip')
    return out

def test_pip_mathjax_is_copied_and_used(pip_site):
    mj = pip_site/'mathjax'
    for f in ['MathJax.js', 'config/TeX-AMS-MML_HTMLorMML-full.js', 'config/Safe.js', 'config/local/snd.js', 'extensions/Safe.js',
              'extensions/TeX/AMSmath.js', 'jax/output/HTML-CSS/autoload/mtable.js',
              'jax/output/HTML-CSS/fonts/STIX-Web/fontdata.js',
              'fonts/HTML-CSS/STIX-Web/woff/STIXMathJax_Main-Regular.woff', 'localization/en/en.js']:
        assert (mj/f).is_file(), f'mathjax/{f} was not copied'
    assert not (mj/'jax'/'output'/'SVG').exists() and not (mj/'localization'/'de').exists() and not (mj/'extensions'/'a11y').exists()
    size = sum(f.stat().st_size for f in mj.rglob('*') if f.is_file())
    assert size < 4e6, f'the MathJax copy is {size / 1e6:.1f} MB'
    for name in ['05_splat.html', 'index.html']:
        page = (pip_site/name).read_text()
        assert 'src="mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe,local/snd"' in page, name
        assert 'libs/mathjax' not in page.lower() and not re.search(r'src="(?:https?:)?//', page), f'{name} still loads from a CDN'
    assert sorted(p.name for p in pip_site.glob('*.html')) == ['05_splat.html', 'index.html']

def test_named_mathjax_source_must_exist(monkeypatch, tmp_path):
    monkeypatch.setattr(build_docs, 'MATHJAX', tmp_path/'nothing')
    with pytest.raises(FileNotFoundError, match='libjs-mathjax'): build_docs.mathjax_source('debian')
    assert build_docs.mathjax_source('none') is None
    monkeypatch.setenv('SND_MATHJAX', 'none')
    assert build_docs.mathjax_source() is None
    with pytest.raises(ValueError): build_docs.mathjax_source('cdn')
