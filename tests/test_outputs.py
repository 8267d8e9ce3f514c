"""Committed outputs are current: no stale outputs, no missing figures.

`bench/run_notebooks.py` executes notebooks in place and stores, in each executed code cell's metadata (`snd`), a hash
of the source that produced the outputs and how many images it drew. Here:
(a) every code cell that carries outputs or a hash must carry the hash of its *current* source (edit a cell without
    re-running it and this fails: run `python bench/run_notebooks.py NB`);
(b) a cell that drew a figure (recorded as such, or whose source draws with matplotlib) must have an image output;
(c) the notebooks in `WITH_OUTPUTS` must have been executed: every code cell that is not skipped (`#| slow`, `#| cuda`,
    `#| eval: false`, the `nbdev_export()` cell) carries outputs made by its current source.
"""
import ast, re, sys
from pathlib import Path
import nbformat, pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'bench'))
from run_notebooks import KEY, n_images, skipped, source_hash

# Notebooks that must be committed with outputs (extend as chapters are executed with bench/run_notebooks.py)
WITH_OUTPUTS = ['00_core', '00a_runs', '01_cameras', '02_scenes', '02a_scene_io', '03_backbones', '04_gaussians', '05_splat', '06_triton',
                '06a_render', '07_lift', '08_reconstruct', '09_distill', '09a_controls', '10_probes', '10_probes_hard', '10a_probe_runs', '10b_evaluate', '11_train',
                '12_fit3d', '13_reconkd', '14_fullscale',
                '15_demo', '16_walkthrough', '17_results']
NBS = sorted((ROOT/'nbs').glob('*.ipynb'))
# Matplotlib calls that put a figure on screen (a cell that closes its figure or only saves it is not counted)
DRAWS = re.compile(r'plt\.(subplots|figure|imshow|plot|scatter)\(|\.imshow\(')

def draws(src: str) -> bool:
    "Whether a cell draws with matplotlib when it runs: a drawing call outside any `def`/`class` it defines."
    if 'plt.close(' in src: return False
    try: tree = ast.parse(src)
    except SyntaxError: return bool(DRAWS.search(src))
    return any(DRAWS.search(ast.get_source_segment(src, st) or '') for st in tree.body
               if not isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))

def problems(path: Path, must_run: bool) -> list[str]:
    "Everything wrong with the stored outputs of the notebook at `path`."
    nb, out = nbformat.read(path, as_version=4), []
    for i, c in enumerate(nb.cells):
        if c.cell_type != 'code': continue
        meta, where = c.metadata.get(KEY), f'{path.name} cell {i} ({c.source.splitlines()[0][:50] if c.source else ""!r})'
        if c.outputs or meta:
            if not meta: out.append(f'{where}: outputs made outside bench/run_notebooks.py (no source hash)')
            elif meta.get('source') != source_hash(c.source): out.append(f'{where}: stale, the source changed since it ran')
            elif (meta.get('images', 0) or draws(c.source)) and not n_images(c.outputs):
                out.append(f'{where}: draws a figure but has no image output')
        elif must_run and not skipped(c): out.append(f'{where}: not executed')
    return out

@pytest.mark.parametrize('nb', NBS, ids=[p.stem for p in NBS])
def test_outputs_are_current(nb):
    bad = problems(nb, nb.stem in WITH_OUTPUTS)
    assert not bad, '\n'.join(bad) + '\nrefresh with `python bench/run_notebooks.py ' + nb.stem + '` and commit'

def test_listed_notebooks_exist():
    missing = set(WITH_OUTPUTS) - {p.stem for p in NBS}
    assert not missing, f'WITH_OUTPUTS names notebooks that do not exist: {sorted(missing)}'

def test_notebooks_stay_small():
    "Figures are downscaled PNGs: the notebooks together stay a few MB."
    total = sum(p.stat().st_size for p in NBS)
    assert total < 8e6, f'notebooks take {total / 1e6:.1f} MB: lower --dpi in bench/run_notebooks.py or shrink figures'

def _fabricate(path, src, outputs, meta):
    nb = nbformat.v4.new_notebook()
    c = nbformat.v4.new_code_cell(src, outputs=outputs)
    if meta is not None: c.metadata[KEY] = meta
    nb.cells = [nbformat.v4.new_markdown_cell('# t'), c]
    nbformat.write(nb, path)
    return path

PNG = nbformat.v4.new_output('display_data', data={'image/png': 'iVBORw0KGgo=', 'text/plain': '<Figure>'})
TXT = nbformat.v4.new_output('stream', name='stdout', text='1\n')

def test_the_check_can_fail(tmp_path):
    "Each rule on a fabricated notebook: it passes when current and fails for each way of going stale."
    src = 'import matplotlib.pyplot as plt\nplt.plot([1, 2]);'
    ok = _fabricate(tmp_path/'ok.ipynb', src, [PNG], {'source': source_hash(src), 'images': 1})
    assert problems(ok, True) == []
    edited = _fabricate(tmp_path/'edited.ipynb', src + '\nplt.title("x");', [PNG], {'source': source_hash(src), 'images': 1})
    assert 'stale' in ' '.join(problems(edited, False))
    cleared = _fabricate(tmp_path/'cleared.ipynb', 'show()', [], {'source': source_hash('show()'), 'images': 1})
    assert 'no image output' in ' '.join(problems(cleared, False))
    swallowed = _fabricate(tmp_path/'agg.ipynb', src, [TXT], {'source': source_hash(src), 'images': 0})
    assert 'no image output' in ' '.join(problems(swallowed, False))
    by_hand = _fabricate(tmp_path/'hand.ipynb', 'print(1)', [TXT], None)
    assert 'outside' in ' '.join(problems(by_hand, False))
    never = _fabricate(tmp_path/'never.ipynb', 'print(1)', [], None)
    assert problems(never, False) == [] and 'not executed' in ' '.join(problems(never, True))
    slow = _fabricate(tmp_path/'slow.ipynb', '#| slow\nprint(1)', [], None)
    assert problems(slow, True) == []
    defines = 'def show(x):\n    plt.imshow(x)'                 # defining a plotting function draws nothing
    only_def = _fabricate(tmp_path/'def.ipynb', defines, [], {'source': source_hash(defines), 'images': 0})
    assert problems(only_def, True) == []
