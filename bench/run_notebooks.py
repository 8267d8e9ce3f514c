"""Execute chapter notebooks in place so they are committed with their outputs (figures visible on opening).

    python bench/run_notebooks.py [NB ...] [--slow] [--cuda] [--dpi 60] [--timeout 600]

Each notebook runs top to bottom in a fresh kernel started in `nbs/` (as JupyterLab would), skipping cells flagged
`#| slow` / `#| cuda` unless `--slow` / `--cuda` is given, cells flagged `#| eval: false` always, and the hidden
`nbdev_export()` cell. Every executed code cell records a hash of its source in its metadata (key `snd`, kept by
`nbdev_clean` through `allowed_cell_metadata_keys`), with the number of images it drew; `tests/test_outputs.py` uses
both to fail on stale outputs and on figures gone missing. Skipped cells keep outputs only if those were made by their
current source (an earlier `--slow` run); otherwise they are cleared. PNGs are drawn at a small dpi and re-encoded
with a 256-colour palette (a few tens of kB each). Nothing is written if a cell fails; the notebook is then cleaned
with `nbdev_clean` (which keeps outputs: `clear_all = False` in settings.ini).
"""
import argparse, base64, copy, hashlib, io, os, subprocess, sys, time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbdev.process import extract_directives

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'
KEY = 'snd'                   # cell metadata key: {'source': hash of the source, 'images': images drawn}
IMAGE_TYPES = ('image/png', 'image/jpeg', 'image/svg+xml')
MAX_WIDTH = 1000              # px; wider figures are downscaled

def source_hash(src: str) -> str:
    "The hash stored with a cell's outputs: sha1 of its source, trailing whitespace ignored."
    return hashlib.sha1(src.rstrip().encode()).hexdigest()[:16]

def cell_flags(cell) -> set:
    "The nbdev flags of a code cell: `slow`, `cuda`, ..., plus `eval:false` and `export-call` (the `nbdev_export()` cell)."
    d = extract_directives(copy.deepcopy(cell), remove=False)
    fl = {k for k in d if not k.endswith(':')}
    if d.get('eval:', [''])[0].lower() == 'false': fl.add('eval:false')
    if 'nbdev_export' + '(' in cell.source: fl.add('export-call')
    return fl

def skipped(cell, run_flags=()) -> bool:
    "Whether `run_notebooks` leaves this code cell unexecuted (the tests exempt such cells)."
    fl = cell_flags(cell)
    return bool({'eval:false', 'export-call'} & fl or ({'slow', 'cuda'} - set(run_flags)) & fl)

def n_images(outputs) -> int:
    return sum(any(t in o.get('data', {}) for t in IMAGE_TYPES) for o in outputs)

def shrink_png(b64: str) -> str:
    "Downscale to `MAX_WIDTH` and re-encode a PNG with an adaptive 256-colour palette (figures lose nothing visible)."
    from PIL import Image
    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    if im.width > MAX_WIDTH: im = im.resize((MAX_WIDTH, round(im.height * MAX_WIDTH / im.width)), Image.LANCZOS)
    im = im.convert('RGB').quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buf = io.BytesIO(); im.save(buf, 'PNG', optimize=True)
    new = base64.b64encode(buf.getvalue()).decode()
    return new if len(new) < len(b64) else b64

def run_notebook(path: Path, run_flags=(), dpi=72, timeout=600, log=print) -> dict:
    "Execute `path` in place; returns counts. Raises (and writes nothing) if a cell fails."
    nb = nbformat.read(path, as_version=4)
    env = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1'), 'HF_HUB_OFFLINE': '1',
           'PYTHONPATH': os.pathsep.join([str(ROOT)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p])}
    env.pop('MPLBACKEND', None)           # the kernel's inline backend draws the figures; Agg would swallow them
    client = NotebookClient(nb, timeout=timeout, kernel_name='python3', resources={'metadata': {'path': str(path.parent)}},
                            store_widget_state=True)
    stats = dict(run=0, skipped=0, images=0)
    # small PNGs: the inline backend's options, given on the kernel's command line (nothing added to the notebook)
    figure = [f"--InlineBackend.print_figure_kwargs={{'bbox_inches': 'tight', 'dpi': {dpi}}}",
              "--InlineBackend.figure_formats={'png'}"]
    client.extra_arguments = figure
    with client.setup_kernel(env=env, cwd=str(path.parent)):
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != 'code': continue
            if skipped(cell, run_flags):
                meta = cell.metadata.get(KEY, {})
                if meta.get('source') != source_hash(cell.source) or not cell.outputs:
                    cell.outputs, cell.execution_count = [], None
                    cell.metadata.pop(KEY, None)
                stats['skipped'] += 1; continue
            t0 = time.time()
            client.execute_cell(cell, i)     # raises CellExecutionError on failure: nothing is written
            for o in cell.outputs:
                if 'image/png' in o.get('data', {}): o['data']['image/png'] = shrink_png(o['data']['image/png'])
            k = n_images(cell.outputs)
            cell.metadata[KEY] = {'source': source_hash(cell.source), 'images': k}
            stats['run'] += 1; stats['images'] += k
            if time.time() - t0 > 10: log(f'  cell {i} took {time.time() - t0:.0f}s')
    nbformat.write(nb, path)
    subprocess.run([str(Path(sys.executable).parent/'nbdev_clean'), '--fname', str(path)], cwd=ROOT, check=True)
    return stats

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('nbs', nargs='*', help='notebooks (paths or stems like 05_splat); default: every notebook in nbs/')
    p.add_argument('--slow', action='store_true', help='also run `#| slow` cells')
    p.add_argument('--cuda', action='store_true', help='also run `#| cuda` cells (needs a GPU)')
    p.add_argument('--dpi', type=int, default=72, help='figure resolution (default 72: small PNGs)')
    p.add_argument('--timeout', type=int, default=600, help='seconds per cell')
    a = p.parse_args(argv)
    paths = []
    for s in a.nbs or sorted(q.stem for q in NBS.glob('*.ipynb')):
        q = Path(s) if s.endswith('.ipynb') else NBS/f'{s}.ipynb'
        if not q.exists(): p.error(f'no notebook {q}: give a path or a stem of a notebook in nbs/')
        paths.append(q.resolve())
    flags = [f for f, on in (('slow', a.slow), ('cuda', a.cuda)) if on]
    for q in paths:
        t0 = time.time(); print(f'{q.name}: running', flush=True)
        s = run_notebook(q, flags, a.dpi, a.timeout)
        print(f'{q.name}: {s["run"]} cells run, {s["skipped"]} skipped, {s["images"]} images, '
              f'{q.stat().st_size / 1e3:.0f} kB, {time.time() - t0:.0f}s', flush=True)

if __name__ == '__main__': main()
