"The repository's own rules: library in sync with notebooks, notebooks clean, README generated from index.ipynb, CI runs the README's test command."
import filecmp, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = 'splat_and_distill'

def _tree(d):
    return {p.relative_to(d): p.read_bytes() for p in sorted(Path(d).rglob('*.py')) if '__pycache__' not in p.parts}

def test_export_matches_library(tmp_path):
    "`nbdev_export` run on a copy of the notebooks must reproduce `splat_and_distill/` byte for byte."
    for name in ['settings.ini', 'setup.py', 'pyproject.toml']: shutil.copy(ROOT/name, tmp_path/name)
    shutil.copytree(ROOT/'nbs', tmp_path/'nbs')
    shutil.copytree(ROOT/LIB, tmp_path/LIB, ignore=shutil.ignore_patterns('__pycache__'))
    res = subprocess.run([Path(sys.executable).parent/'nbdev_export'], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    want, got = _tree(ROOT/LIB), _tree(tmp_path/LIB)
    changed = sorted(str(k) for k in set(want) | set(got) if want.get(k) != got.get(k))
    assert not changed, f'nbdev_export would change {changed}: run `nbdev_export` and commit the library with the notebooks'

def test_notebooks_are_clean(tmp_path):
    "`nbdev_clean` must leave every notebook unchanged."
    dst = tmp_path/'nbs'; shutil.copytree(ROOT/'nbs', dst)
    res = subprocess.run([Path(sys.executable).parent/'nbdev_clean', '--fname', str(dst)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    dirty = [p.name for p in sorted((ROOT/'nbs').glob('*.ipynb')) if not filecmp.cmp(p, dst/p.name, shallow=False)]
    assert not dirty, f'not clean: {dirty}; run `nbdev_clean` and commit'

def test_readme_is_generated_from_index(tmp_path):
    "README.md is `jupyter nbconvert --to markdown nbs/index.ipynb` (Quarto, which `nbdev_readme` needs, cannot be installed offline)."
    res = subprocess.run([sys.executable, '-m', 'nbconvert', '--to', 'markdown', str(ROOT/'nbs'/'index.ipynb'),
                          '--output-dir', str(tmp_path), '--output', 'README'], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path/'README.md').read_text() == (ROOT/'README.md').read_text(), \
        'README.md is stale: run `jupyter nbconvert --to markdown nbs/index.ipynb --output-dir . --output README`'

def test_ci_runs_the_readme_test_command():
    "`.ci/run` runs the README's test command verbatim, so the README cannot promise what CI does not check."
    ci = (ROOT/'.ci'/'run').read_text()
    cmd = next(l.split('=', 1)[1].strip().strip("'") for l in ci.splitlines() if l.startswith('TEST_COMMAND='))
    assert cmd in (ROOT/'README.md').read_text(), f'README does not contain the CI test command: {cmd}'
