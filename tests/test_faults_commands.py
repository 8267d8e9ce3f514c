"""Fault injection beyond snd_train (issue 26): `snd_reconkd`, `snd_fit3d`, `snd_demo` and `snd_study` killed with SIGKILL at
named points (`$SND_FAULT`, chapter 00a's `fault_point`) and resumed must end with the result files of an uninterrupted
run, number for number (wall-clock fields and run identities excluded). Kill points are drawn with a fixed seed."""
import json, math, multiprocessing as mp, os, random
from pathlib import Path
import pytest

CLOCK = {'wall_s', 'process_cpu_s', 'train_s', 'train_cpu_s', 'loadavg_start', 'loadavg_end', 'student_train_wall_s',
         'student_train_cpu_s', 'seconds', 'sec', 'time_s', 'elapsed_s', 'timing', 'cost', 'created', 'command', 'machine',
         'fit_s', 'finetune_s', 'wall_min', 'steps_per_s', 'time_per_step', 'sec_per_step', 'cpu_s_per_step', 'run_id',
         'ms_per_frame', 'speedup', 'out', 'date'}

def is_clock(key: str) -> bool:
    "A wall-clock or CPU-time field (they differ between any two runs)."
    return key.endswith(('_s', '_sec')) or any(w in key for w in ('second', 'cpu_s', 'wall', 'loadavg', 'per_s', '_ms', 'ms_per'))

def strip_clock(x):
    "A result with its wall-clock fields (and anything under them) removed, for comparison."
    if isinstance(x, dict): return {k: strip_clock(v) for k, v in x.items() if k not in CLOCK and not is_clock(k)}
    if isinstance(x, list): return [strip_clock(v) for v in x]
    return x

def differences(a, b, path='') -> list[str]:
    "Paths at which two JSON values differ."
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in differences(a.get(k, '<absent>'), b.get(k, '<absent>'), f'{path}/{k}')]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f'{path}[{i}]')]
    same_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return [] if a == b or same_nan else [f'{path}: {a!r} != {b!r}'[:300]]

def _child(func, argv, fault):
    if fault: os.environ['SND_FAULT'] = fault
    import importlib
    mod, name = func.rsplit('.', 1)
    getattr(importlib.import_module(mod), name)(argv)

def run_cmd(func: str, argv: list[str], fault: str | None = None) -> int:
    "The command in a forked process (a fresh one per run, as from a shell); its exit code (-9: killed by SIGKILL)."
    p = mp.get_context('fork').Process(target=_child, args=(func, argv, fault))
    p.start(); p.join(600)
    return p.exitcode

def results_of(run: Path, names: list[str]) -> dict:
    "The result files, wall-clock fields removed and the run's own folder written as <out> (it differs between the runs compared)."
    return {n: strip_clock(json.loads((run / n).read_text().replace(str(run), '<out>'))) for n in names}

def kill_and_resume(tmp_path, func, argv, points, names):
    "Uninterrupted reference, then one run per kill point: killed (-9), resumed (0), results identical to the reference."
    ref = tmp_path / 'ref'
    assert run_cmd(func, argv + ['--out', str(ref)]) == 0
    want = results_of(ref, names)
    for i, point in enumerate(points):
        out = tmp_path / f'kill{i}'
        assert run_cmd(func, argv + ['--out', str(out)], point) == -9, f'{point}: the process was not killed there'
        assert run_cmd(func, argv + ['--out', str(out), '--resume']) == 0, point
        diff = differences(want, results_of(out, names))
        assert not diff, f'{point}: resumed results differ from the uninterrupted run:\n' + '\n'.join(diff[:20])
    return want

def test_reconkd_resumes_exactly(tmp_path):
    argv = ['--preset', 'tiny', '--seeds', '2', '--threads', '1']
    rng = random.Random(26)
    points = [f'student:{k}' for k in sorted(rng.sample(range(1, 5), 2))] + ['results']
    kill_and_resume(tmp_path, 'splat_and_distill.reconkd.snd_reconkd', argv, points, ['results.json'])

def test_fit3d_resumes_exactly(tmp_path):
    "Killed between scenes of stage 1, after stage 2, and before its results: resumed runs equal the uninterrupted one (with the global RNG unseeded per process)."
    argv = ['--preset', 'tiny', '--train_scenes', '2', '--n_views', '8', '--height', '32', '--width', '32', '--max_gaussians', '300',
            '--fit_steps', '6', '--eval_every', '3', '--ft_steps', '3', '--ft_batch_size', '2', '--threads', '1', '--no-progress',
            '--cache_dir', str(tmp_path / 'cache')]
    want = kill_and_resume(tmp_path, 'splat_and_distill.fit3d_runs.snd_fit3d', argv, ['scene:1', 'stage2', 'results'], ['results.json'])
    assert set(want['results.json']['scenes']) == {'scene_0000000', 'scene_0000001'}

DEMO = ['--quick', '--seeds', '0,1', '--threads', '1', '--no-progress', '--set', 'train_steps=2', '--set', 'train_scenes=1', '--set', 'n_views=10',
        '--set', 'probe_overrides={"n_views": 6, "n_train_scenes": 1, "n_test_scenes": 1, "epochs": 1, "real_image": false, "corr_gaps": [1, 2]}']

def test_demo_resumes_exactly(tmp_path):
    "snd_demo killed after the teacher's probes, between students and before its results: each resumed run reports the same numbers."
    argv = DEMO + ['--set', f'cache_dir={tmp_path / "cache"}']
    want = kill_and_resume(tmp_path, 'splat_and_distill.demo.snd_demo', argv, ['teacher', 'student:1', 'results'], ['results.json'])
    assert set(want['results.json']['runs']) == {'0', '1'}

def test_study_resumes_exactly(tmp_path):
    "snd_study (two variants, two seeds) killed between students and before study.json: the resumed study equals the uninterrupted one."
    argv = DEMO + ['--variants', 'default,half_blending', '--set', f'cache_dir={tmp_path / "cache"}']
    want = kill_and_resume(tmp_path, 'splat_and_distill.demo.snd_study', argv, ['student:1', 'student:3', 'results'], ['study.json'])
    assert {'default', 'half_blending'} <= set(want['study.json']['summary'])
