"""The demo's stages side by side (chapter 15, `workers`): the same numbers as one process, the same files, and a kill at
any point of the parent resumes to the uninterrupted result."""
import json, subprocess, sys
from pathlib import Path
import pytest
from splat_and_distill.demo import demo_default, demo_workers
from test_faults_commands import DEMO, kill_and_resume, strip_clock, differences

def _demo(tmp_path, name, threads, workers, *more) -> dict:
    "snd_demo in a fresh process (the test process stays single-threaded: later tests fork it), its results.json with the run's folder as <out>."
    argv = [a for a in DEMO] + ['--workers', str(workers), '--out', str(tmp_path / name), '--set', f'cache_dir={tmp_path / ("cache_" + name)}', *more]
    argv[argv.index('--threads') + 1] = str(threads)
    code = f'from splat_and_distill.demo import snd_demo; snd_demo({argv!r})'
    subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, timeout=600)
    return json.loads((tmp_path / name / 'results.json').read_text().replace(str(tmp_path / name), '<out>'))

def test_demo_workers_share_the_threads():
    assert demo_workers(demo_default(threads=2)) == (2, 1)           # README command (a) on 2 cores
    assert demo_workers(demo_default(threads=1)) == (1, 1)
    assert demo_workers(demo_default(threads=16)) == (4, 4)          # at most one per seed plus one
    assert demo_workers(demo_default(threads=16, seeds=(0,))) == (2, 8)
    assert demo_workers(demo_default(threads=3, workers=2)) == (2, 1)
    assert demo_workers(demo_default(threads=2, workers=8)) == (2, 1)  # never more processes than threads

def test_parallel_demo_equals_one_process(tmp_path):
    "Two one-thread processes compute exactly what one one-thread process computes: teacher, students, summary; the same files."
    one, two = _demo(tmp_path, 'one', 1, 1), _demo(tmp_path, 'two', 2, 2)
    assert (one['machine']['workers'], two['machine']['workers'], two['machine']['threads_per_worker']) == (1, 2, 1)
    same = lambda r: strip_clock({k: r[k] for k in ('teacher', 'runs', 'summary')})
    diff = differences(same(one), same(two))
    assert not diff, '\n'.join(diff[:20])
    assert list(two['runs']) == ['0', '1'] and list(two['runs']['0']['models']) == ['student', 'student+teacher']
    files = lambda out: sorted(str(p.relative_to(tmp_path / out)) for p in (tmp_path / out).rglob('*.json'))
    assert files('one') == files('two') and not list((tmp_path / 'two').rglob('probes_*.json'))
    assert '2 processes of 1' in (tmp_path / 'two' / 'results.md').read_text()
    again = _demo(tmp_path, 'two', 2, 2, '--resume')                      # finished: every stage kept
    assert not differences(same(again), same(two))

def test_parallel_demo_with_a_reconstructor_equals_one_process(tmp_path):
    "The geometry stage's two halves in two threads (grad_chunks=2) and, with two processes, the teacher's probes queued behind the distillations: the numbers of one process, the reconstructor bit for bit."
    from safetensors.torch import load_file
    more = ['--set', 'geometry=reconstructor', '--set', 'recon_steps=3', '--set', 'recon_scenes=1']
    one, two = _demo(tmp_path, 'one', 1, 1, *more), _demo(tmp_path, 'two', 2, 2, *more)
    assert two['machine']['workers'] == 2 and json.loads((tmp_path / 'two' / 'recon' / 'config.json').read_text())['grad_chunks'] == 2
    a, b = (load_file(tmp_path / n / 'recon' / 'model.safetensors') for n in ('one', 'two'))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    same = lambda r: strip_clock({k: r[k] for k in ('teacher', 'runs', 'summary', 'geometry_eval')})
    diff = differences(same(one), same(two))
    assert not diff, '\n'.join(diff[:20])
    assert set(two['timing_s']) >= {'geometry', 'teacher_probes', 'students'} and two['teacher'].keys() == one['teacher'].keys()

def test_parallel_demo_resumes_exactly(tmp_path):
    "The parent killed after the teacher's probes, after the first student and before the results (its pool dies with it): resumed, the same numbers."
    argv = [a for a in DEMO] + ['--workers', '2', '--set', f'cache_dir={tmp_path / "cache"}']
    argv[argv.index('--threads') + 1] = '2'
    want = kill_and_resume(tmp_path, 'splat_and_distill.demo.snd_demo', argv, ['teacher', 'student:1', 'results'], ['results.json'])
    assert set(want['results.json']['runs']) == {'0', '1'}



def test_probe_data_goes_through_the_scene_cache(tmp_path, monkeypatch):
    "The probe scenes are read from (or rendered into) the scene cache like every stage's, the default one when none is set: the same splits."
    import torch
    from splat_and_distill import demo as D, probes as P
    monkeypatch.setenv('SND_CACHE', str(tmp_path / 'default'))
    cfg = D.demo_default(probe_overrides=dict(n_views=6, n_train_scenes=1, n_test_scenes=1, image_size=32), progress=False)
    first = D.demo_probe_data(cfg)
    assert len(list((tmp_path / 'default' / 'scenes').glob('*.pt'))) == 2
    again, fresh = D.demo_probe_data(cfg), P.probe_splits(D.probe_seeded(D.demo_protocol(cfg), 0), None, False)
    for split in ('train', 'test'):
        for k in ('rgb', 'depth', 'normals', 'semantic'):
            assert torch.equal(getattr(first[split], k), getattr(again[split], k)) and torch.equal(getattr(first[split], k), getattr(fresh[split], k))


def test_geometry_scenes_go_to_the_demos_scene_cache(tmp_path, monkeypatch):
    "cache_dir reaches the reconstructor's scenes too (they went to the default cache before)."
    from splat_and_distill import demo as D
    monkeypatch.setenv('SND_CACHE', str(tmp_path / 'default'))
    cfg = D.demo_default(out=str(tmp_path / 'run'), recon_scenes=2, recon_size=16, n_views=10, recon_steps=1,
                         cache_dir=str(tmp_path / 'mine'), progress=False)
    assert D.demo_geometry(cfg) == str(tmp_path / 'run' / 'recon')
    made = sorted(p.name for p in (tmp_path / 'mine' / 'scenes').glob('*.pt'))
    rc = D.demo_recon_config(cfg)
    assert len(made) == 2 + rc.n_val_scenes and all('16x16' in n for n in made)
    assert not (tmp_path / 'default').exists()
