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

def test_parallel_demo_resumes_exactly(tmp_path):
    "The parent killed after the teacher's probes, after the first student and before the results (its pool dies with it): resumed, the same numbers."
    argv = [a for a in DEMO] + ['--workers', '2', '--set', f'cache_dir={tmp_path / "cache"}']
    argv[argv.index('--threads') + 1] = '2'
    want = kill_and_resume(tmp_path, 'splat_and_distill.demo.snd_demo', argv, ['teacher', 'student:1', 'results'], ['results.json'])
    assert set(want['results.json']['runs']) == {'0', '1'}


def test_warm_scene_cache_renders_what_the_other_stages_read(tmp_path, monkeypatch):
    "Beside the geometry stage, the teacher's pool process renders the reconstructor's last scenes and the distillation's; the same tensors as rendering."
    import torch
    from splat_and_distill import demo as D, scenes as S
    monkeypatch.setenv('SND_CACHE', str(tmp_path / 'default'))             # where train_reconstructor reads its scenes
    cfg = D.demo_default(recon_scenes=4, recon_size=16, size=32, n_views=10, train_scenes=2, cache_dir=str(tmp_path / 'mine'), progress=False)
    D.warm_scene_cache(cfg, recon=True)
    rc = D.demo_recon_config(cfg)
    names = lambda d: sorted(p.name for p in (tmp_path / d / 'scenes').glob('*.pt'))
    want_recon = [S.scene_cache_path(s, rc.n_views, rc.size).name for s in S.scene_seeds('val', rc.n_val_scenes) + S.scene_seeds('train', 4)[2:]]
    assert names('default') == sorted(want_recon)                         # validation, then the training scenes' second half
    tc = D.demo_train_config(cfg, None)
    want_train = [S.scene_cache_path(s, tc.n_views, (32, 32)).name for s in S.scene_seeds('train', 2) + S.scene_seeds('val', tc.val_scenes)]
    assert names('mine') == sorted(want_train)
    cached = S.load_or_make_scene(S.scene_seeds('train', 1)[0], tc.n_views, (32, 32), cfg.cache_dir)
    fresh = S.make_scene(S.scene_seeds('train', 1)[0], tc.n_views, (32, 32))
    assert all(torch.equal(getattr(cached, k), getattr(fresh, k)) for k in S.Scene._TENSORS)
    D.warm_scene_cache(cfg, recon=False)                                   # a given reconstructor: only the distillation's scenes
    assert names('default') == sorted(want_recon)
