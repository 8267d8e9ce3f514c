"Issue 11 item 9: every command checks its options before any work; bad input exits 2 with one line, no traceback."
import json
from pathlib import Path
import pytest
from splat_and_distill.scene_io import snd_scenes
from splat_and_distill.reconstruct import snd_recon, Reconstructor, tiny, save_reconstructor
from splat_and_distill.train import snd_train
from splat_and_distill.probe_runs import snd_probe
from splat_and_distill.demo import snd_demo

CASES = [
    (snd_scenes, ['--bogus', '1'], 'unrecognized arguments'), (snd_scenes, ['--size', 'x'], "'x': expected an integer"),
    (snd_scenes, ['--n-views', '0'], 'n_views=0: must be >= 1'), (snd_scenes, ['--n_scene', '2'], 'unrecognized arguments'),
    (snd_train, ['--steps', '0'], 'steps=0: must be >= 1'), (snd_train, ['--set', 'tensorboard=ture'], 'expected true or false'),
    (snd_train, ['--ema_momentum', '1'], 'ema_momentum=1.0: must be in [0, 1)'), (snd_train, ['--teacher_temp', '0'], 'teacher_temp=0.0: must be > 0'),
    (snd_train, ['--val_pairs', '0'], 'val_pairs=0'), (snd_train, ['--log_every', '-1'], 'log_every=-1'), (snd_train, ['--lr', 'abc'], 'expected a number'),
    (snd_train, ['--stepz', '3'], 'unrecognized arguments'), (snd_train, ['--step', '3'], 'unrecognized arguments'),
    (snd_train, ['--resume', '--overwrite'], 'contradict'), (snd_train, ['--resume'], 'no snd_train run to resume'),
    (snd_train, ['--height', '100000', '--width', '100000'], 'GiB of memory'),
    (snd_probe, ['--set', 'epochs=0'], 'epochs=0: must be >= 1'), (snd_probe, ['--set', 'real_image=ture'], 'expected true or false'),
    (snd_probe, ['--backbone', 'resnet50'], "unknown backbone 'resnet50'"), (snd_probe, ['--backbone', 'efficientnet_lite0:/no/such.pt'], 'not found'),
    (snd_probe, ['--threads', '0'], 'threads=0'), (snd_probe, ['--preset', 'huge'], 'unknown probe preset'),
    (snd_probe, ['--set', 'epochs=3,lr=1'], 'expected an integer'), (snd_probe, ['--resume'], 'no snd_probe run to resume'),
    (snd_demo, ['--quick', '--set', 'batch_size=0'], 'batch_size=0'), (snd_demo, ['--quick', '--reconstructor', '/no/such/run'], 'not found'),
    (snd_demo, ['--quick', '--geometry', 'gt', '--reconstructor', 'RECON'], "geometry is 'gt'"), (snd_demo, ['--size', 'abc'], 'expected an integer'),
    (snd_demo, ['--quick', '--set', 'probe_overrides={"epoch": 3}'], 'unknown ProbeConfig fields'),
]

@pytest.mark.parametrize('cmd,argv,msg', CASES, ids=[f'{c.__name__}-{i}' for i, (c, *_ ) in enumerate(CASES)])
def test_bad_input_exits_2_with_one_line(cmd, argv, msg, tmp_path, capsys):
    save_reconstructor(tmp_path / 'recon', Reconstructor(tiny(size=64)))
    argv = [str(tmp_path / 'recon') if a == 'RECON' else a for a in argv]
    out = tmp_path / 'out'
    with pytest.raises(SystemExit) as e: cmd([*argv, '--out', str(out), *(['--cache_dir', str(tmp_path / 'cache')] if cmd in (snd_train, snd_probe) else [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith(f'{cmd.__name__}: error:') and msg in err[0], err
    assert not out.exists() and not (tmp_path / 'cache').exists(), 'nothing may be written or prepared before the checks pass'

def test_one_set_syntax_everywhere():
    "The same `--set KEY=VALUE` strings mean the same thing in every command that takes a config."
    cfg = snd_train(['--print_config', '--set', 'steps=3e2', '--set', 'grad_clip=none', '--set', 'tensorboard=yes'])['config']
    assert (cfg['steps'], cfg['grad_clip'], cfg['tensorboard']) == (300, None, True)
    from splat_and_distill.runs import parse_sets
    from splat_and_distill.reconstruct import ReconConfig
    from splat_and_distill.probes import ProbeConfig
    from splat_and_distill.demo import DemoConfig
    for cls, key, text, want in [(ReconConfig, 'cross_attention', 'off', False), (ProbeConfig, 'corr_gaps', '1,2', (1, 2)),
                                 (DemoConfig, 'probe_overrides', '{"epochs": 3}', {'epochs': 3}), (DemoConfig, 'threads', 'none', None)]:
        assert parse_sets(cls, [f'{key}={text}']) == {key: want}

def test_probe_output_folder_contract(tmp_path, capsys):
    "snd_probe: a second call is refused; --resume keeps the rows of unchanged models; --overwrite replaces."
    args = ['--backbone', 'efficientnet_lite0:random', '--preset', 'tiny', '--set', 'n_views=6', '--set', 'n_train_scenes=1',
            '--set', 'n_test_scenes=1', '--set', 'epochs=1', '--set', 'real_image=false', '--set', 'corr_gaps=1,2',
            '--out', str(tmp_path / 'p'), '--cache_dir', str(tmp_path / 'c'), '--no-progress']
    first = snd_probe(args)
    with pytest.raises(SystemExit) as e: snd_probe(args)
    assert e.value.code == 2 and 'already holds a run' in capsys.readouterr().err
    again = snd_probe(args + ['--resume'])
    assert 'its results are reused' in capsys.readouterr().out
    dump = lambda r: json.dumps(r['models'], sort_keys=True, default=str)
    assert dump(again) == dump(first)
    with pytest.raises(SystemExit): snd_probe(args + ['--resume', '--set', 'epochs=2'])
    assert 'epochs: 1 -> 2' in capsys.readouterr().err
    snd_probe(args + ['--overwrite', '--set', 'epochs=2'])
    assert json.loads((tmp_path / 'p' / 'config.json').read_text())['epochs'] == 2

def test_demo_folder_contract(tmp_path, capsys):
    "snd_demo: refused into a folder holding a demo; --resume of a finished demo keeps every stage's results."
    from splat_and_distill.demo import run_demo, demo_quick
    cfg = demo_quick(out=str(tmp_path / 'd'), train_steps=2, train_scenes=1, n_views=10, progress=False, cache_dir=str(tmp_path / 'c'), workers=1,
                     probe_overrides=dict(n_views=6, n_train_scenes=1, n_test_scenes=1, epochs=1, real_image=False, corr_gaps=(1, 2)))
    first = run_demo(cfg)
    with pytest.raises(SystemExit) as e: snd_demo(['--quick', '--out', cfg.out])
    assert e.value.code == 2 and 'already holds a run' in capsys.readouterr().err
    again = run_demo(cfg, resume=True)
    dump = lambda x: json.dumps(x, sort_keys=True, default=str)
    assert dump(again['runs']) == dump(first['runs']) and dump(again['teacher']) == dump(first['teacher'])
    assert dump(again['summary']) == dump(first['summary'])
    assert 'finished earlier, kept as it is' in capsys.readouterr().err
