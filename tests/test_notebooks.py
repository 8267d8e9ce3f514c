"Every notebook in `nbs/` is a test: executed top to bottom by nbdev's executor, skipping cells flagged in `tst_flags`."
import os, subprocess, sys
from configparser import ConfigParser
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_'))

def _skip_flags():
    cfg = ConfigParser(delimiters=['=']); cfg.read(ROOT/'settings.ini')
    return cfg['DEFAULT'].get('tst_flags', '').split()

RUNNER = '''
import sys
from pathlib import Path
from nbdev.test import test_nb
ok, secs = test_nb(Path(sys.argv[1]), skip_flags=sys.argv[2].split(), basepath=sys.argv[3])
print(f"{sys.argv[1]}: {'ok' if ok else 'FAILED'} in {secs:.1f}s")
sys.exit(0 if ok else 1)
'''

LEFT_BEHIND_MB = 50   # what a notebook may leave in its temporary folder (small caches); run folders must be removed

def _size_mb(d: Path) -> float:
    return sum(f.stat().st_size for f in d.rglob('*') if f.is_file() and not f.is_symlink()) / 2**20

@pytest.mark.parametrize('nb', NBS, ids=[p.stem for p in NBS])
def test_notebook_runs(nb, tmp_path):
    """Run in a fresh interpreter so that one notebook's global state (threads, seeds, caches) cannot leak into the next.
    Its temporary files go to `tmp_path` (TMPDIR), and what it leaves there is measured: a reader's /tmp must not fill up."""
    env = {**os.environ, 'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1'), 'HF_HUB_OFFLINE': '1',
           'TMPDIR': str(tmp_path)}
    res = subprocess.run([sys.executable, '-c', RUNNER, str(nb), ' '.join(_skip_flags()), str(ROOT)],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert res.returncode == 0, f'{nb.name} failed:\n{res.stdout[-4000:]}\n{res.stderr[-12000:]}'
    left = _size_mb(tmp_path)
    assert left <= LEFT_BEHIND_MB, f'{nb.name} left {left:.0f} MB in its temporary folder {tmp_path}: remove run folders at the end of the cell that made them'

def test_there_are_notebooks():
    assert len(NBS) >= 3, f'expected the chapter notebooks in {ROOT/"nbs"}, found {len(NBS)}'
