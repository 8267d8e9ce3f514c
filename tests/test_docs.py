"The offline documentation site (`python bench/build_docs.py`) builds, links every chapter in order, and shows every figure."
import re, sys
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

@pytest.mark.skipif(not (build_docs.MATHJAX/'MathJax.js').exists(), reason='no local MathJax (apt-get install libjs-mathjax)')
def test_formulas_render_offline(site):
    assert (site/'mathjax'/'MathJax.js').is_file()
    assert 'src="mathjax/MathJax.js' in (site/'05_splat.html').read_text()
