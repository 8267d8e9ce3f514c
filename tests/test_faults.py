"""Fault injection (issue 11): `kill -9` a short `snd_train` run at named points, `--resume` it, and demand a result
bit-identical to an uninterrupted run. The process kills itself with SIGKILL where `$SND_FAULT` says (`fault_point`,
chapter 00), so the test is deterministic; the steps are drawn from a fixed seed. Excluded from the comparison, on
purpose: wall-clock measurements (`wall_s`, `process_cpu_s`, `steps_per_s`, `time_per_step` in results.json,
`sec_per_step` in metrics rows, `spent`/`timer` in the checkpoint state) and the run's identity (`run.json`, run ids)."""
import json, multiprocessing as mp, os, random, signal
from pathlib import Path
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from splat_and_distill.train import snd_train

STEPS, CKPT = 8, 3   # checkpoints at steps 0, 3, 6 and 8 (the newest two kept); metrics every 2 steps: a checkpoint falls mid-window
ARGS = ['--backbone', 'tiny_vit', '--out_dim', '64', '--head_hidden', '32', '--head_bottleneck', '16', '--height', '32', '--width', '32',
        '--n_views', '12', '--train_scenes', '2', '--val_scenes', '1', '--val_pairs', '2', '--batch_size', '2', '--steps', str(STEPS),
        '--lr', '1e-3', '--ema_every', '2', '--log_every', '2', '--val_every', '4', '--ckpt_every', str(CKPT), '--keep_ckpts', '2',
        '--no-progress', '--device', 'cpu', '--threads', '1']
CLOCK_RESULTS = {'wall_s', 'process_cpu_s', 'steps_per_s', 'time_per_step'}
CLOCK_STATE = {'spent', 'timer'}

def _child(argv, fault):
    if fault: os.environ['SND_FAULT'] = fault
    snd_train(argv)

def run(out: Path, cache: Path, fault: str | None = None, resume: bool = False) -> int:
    "`snd_train` in a forked process (a fresh one per run, as from a shell); returns its exit code (-9: killed by SIGKILL)."
    argv = ARGS + ['--out', str(out), '--cache_dir', str(cache)] + (['--resume'] if resume else [])
    p = mp.get_context('fork').Process(target=_child, args=(argv, fault))
    p.start(); p.join(300)
    return p.exitcode

def same(a, b, path='') -> list[str]:
    "Paths where two nested structures of dicts, lists and tensors differ (tensors compared bit for bit)."
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        ok = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        return [] if ok else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        return [f'{path}.{k}: missing' for k in a.keys() ^ b.keys()] + [d for k in a.keys() & b.keys() for d in same(a[k], b[k], f'{path}.{k}')]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return [f'{path}: length'] if len(a) != len(b) else [d for i, (x, y) in enumerate(zip(a, b)) for d in same(x, y, f'{path}[{i}]')]
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray): return [] if np.array_equal(a, b) else [path]
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b: return []     # NaN == NaN
    return [] if type(a) == type(b) and a == b else [path]

def differences(ref: Path, got: Path) -> list[str]:
    "Everything that differs between two run folders, apart from the excluded clock and identity fields."
    files = lambda r: sorted(str(p.relative_to(r)) for p in r.rglob('*') if p.is_file() and p.name != 'run.json')
    diffs = [] if files(ref) == files(got) else [f'files: {files(ref)} vs {files(got)}']
    for name in ('student_timm.safetensors', *[str(p.relative_to(ref)) for p in ref.glob('checkpoints/step_*/*.safetensors')]):
        diffs += same(load_file(str(ref / name)), load_file(str(got / name)), name)
    for p in ref.glob('checkpoints/step_*/state.pt'):
        a, b = (torch.load(r / p.relative_to(ref), weights_only=False) for r in (ref, got))
        for s in (a, b): s['extra'] = {k: v for k, v in s['extra'].items() if k not in CLOCK_STATE}
        diffs += same(a, b, str(p.relative_to(ref)))
    rows = lambda r: [{k: v for k, v in json.loads(l).items() if k != 'sec_per_step'} for l in (r / 'metrics.jsonl').read_text().splitlines()]
    diffs += same(rows(ref), rows(got), 'metrics.jsonl')
    res = lambda r: {k: v for k, v in json.loads((r / 'results.json').read_text()).items() if k not in CLOCK_RESULTS}
    diffs += same(res(ref), res(got), 'results.json')
    cfg = lambda r: {k: v for k, v in json.loads((r / 'config.json').read_text()).items() if k != 'out'}
    return diffs + same(cfg(ref), cfg(got), 'config.json')

def kill_points(seed: int = 11) -> list[tuple[str, int]]:
    "At least five points, drawn from a fixed seed: after a step, inside a checkpoint write, before a manifest, before the results."
    rng, plain = random.Random(seed), [s for s in range(1, STEPS) if s % CKPT]
    return [('step', s) for s in rng.sample(plain, 2)] + [('checkpoint_write', rng.choice([0, 3, 6, STEPS])),
            ('checkpoint_seal', rng.choice([3, 6])), ('checkpoint_seal', STEPS), ('results', STEPS)]

@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp('faults')
    assert run(root / 'ref', root / 'cache') == 0
    return root

@pytest.mark.parametrize('point,step', kill_points())
def test_kill_then_resume_is_bit_identical(reference, point, step):
    out = reference / f'{point}_{step}'
    assert run(out, reference / 'cache', f'{point}:{step}') == -signal.SIGKILL, 'the run was not killed where asked'
    assert not (out / 'results.json').exists()
    if point == 'step':                  # and as if the kill had come mid-write: a torn last line in the metrics
        with open(out / 'metrics.jsonl', 'a') as f: f.write('{"step": %d, "loss": 0.4' % (step + 1))
    assert run(out, reference / 'cache', resume=True) == 0
    diffs = differences(reference / 'ref', out)
    assert not diffs, diffs[:10]
    assert run(out, reference / 'cache', resume=True) == 0           # finished: resuming again changes nothing
    assert not differences(reference / 'ref', out)

def _recon_child(out, fault, resume):
    if fault: os.environ['SND_FAULT'] = fault
    from splat_and_distill.scenes import make_scene
    from splat_and_distill.reconstruct import tiny, train_reconstructor
    scenes = [make_scene(11, n_views=10, size=32), make_scene(14, n_views=10, size=32)]
    train_reconstructor(tiny(steps=4), scenes, evaluate=False, out=out, resume=resume, progress=False)

def _recon(out, fault=None, resume=False):
    p = mp.get_context('fork').Process(target=_recon_child, args=(out, fault, resume)); p.start(); p.join(300); return p.exitcode

@pytest.fixture(scope='module')
def recon_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp('recon_faults')
    assert _recon(root / 'ref') == 0
    return root / 'ref'

@pytest.mark.parametrize('fault', ['checkpoint_write:2', 'checkpoint_seal:4', 'publish:4', 'step:3'])
def test_recon_kill_then_resume_is_bit_identical(recon_reference, tmp_path, fault):
    "snd_recon's run folder: killed between train_state.pt and model.safetensors, before the manifest, before publishing, mid-run."
    go, ref = _recon, recon_reference
    assert go(tmp_path / 'run', fault) == -signal.SIGKILL
    assert go(tmp_path / 'run', resume=True) == 0
    for name in ('model.safetensors', 'checkpoints/step_0000004/model.safetensors', 'checkpoints/step_0000002/model.safetensors'):
        assert not same(load_file(str(ref / name)), load_file(str(tmp_path / 'run' / name)), name), name
    a, b = (torch.load(r / 'checkpoints/step_0000004/train_state.pt', weights_only=False) for r in (ref, tmp_path / 'run'))
    assert not same(a, b)
    rows = lambda r: [{k: v for k, v in json.loads(l).items() if k not in ('steps_per_s', 'time_s', 'cpu_s_per_step')}
                      for l in (r / 'metrics.jsonl').read_text().splitlines()]
    assert not same(rows(ref), rows(tmp_path / 'run'))
