"""Run folders under concurrency and --overwrite (issue 26): one run per folder, and a user's files survive.

Two processes started into one folder at once: exactly one runs, the other exits 2 with one line and writes nothing.
`--overwrite` removes only the files the previous run wrote (its log `.run_files` and the command's own top-level
files): a user's file inside any subfolder a command owns is kept."""
import json, os, subprocess, sys, time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ['--backbone', 'tiny_vit', '--out_dim', '64', '--head_hidden', '32', '--head_bottleneck', '16', '--height', '32',
         '--width', '32', '--n_views', '12', '--train_scenes', '2', '--val_scenes', '1', '--val_pairs', '2', '--batch_size', '2',
         '--steps', '4', '--lr', '1e-3', '--ema_every', '2', '--log_every', '1', '--val_every', '0', '--ckpt_every', '2',
         '--no-progress', '--device', 'cpu', '--threads', '1']

def _cmd(module: str, func: str, argv: list[str]) -> list[str]:
    return [sys.executable, '-c', f'import sys; from splat_and_distill.{module} import {func}; {func}(sys.argv[1:])', *argv]

def _env():
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'Agg'}

def test_two_runs_into_one_folder_at_once(tmp_path):
    out, cache = tmp_path / 'conc', tmp_path / 'cache'
    subprocess.run(_cmd('train', 'snd_train', TRAIN + ['--out', str(tmp_path / 'warm'), '--cache_dir', str(cache)]),
                   env=_env(), check=True, capture_output=True)             # scenes cached: both start equally fast
    # both pass the check that reads the folder, then take it at the same instant (SND_START_AT, well after both have
    # started up and built their data): without the lock both would run
    start_at = str(time.time() + 20)
    procs = [subprocess.Popen(_cmd('train', 'snd_train', TRAIN + ['--out', str(out), '--cache_dir', str(cache)] + extra),
                              env={**_env(), 'SND_START_AT': start_at}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for extra in ([], ['--set', 'lr=0.01'])]
    res = [(p.wait(300), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in res)
    assert codes == [0, 2], f'exit codes {codes}:\n' + '\n'.join(r[2][-2000:] for r in res)
    loser = next(r for r in res if r[0] == 2)
    lines = [l for l in loser[2].splitlines() if l.strip() and not l.startswith('resuming')]
    assert len(lines) == 1 and lines[0].startswith('snd_train: error:') and str(out) in lines[0], loser[2]
    assert 'in use by another run (process' in lines[0], lines[0]
    winner_lr = json.loads((out / 'config.json').read_text())['lr']
    steps = lambda run: [json.loads(l)['step'] for l in (run / 'metrics.jsonl').read_text().splitlines()]
    assert steps(out) == steps(tmp_path / 'warm'), f'metrics of more than one run: {steps(out)}'
    rows = [json.loads(l) for l in (out / 'metrics.jsonl').read_text().splitlines()]
    assert winner_lr in (1e-3, 0.01) and max(r['lr'] for r in rows if 'lr' in r) <= winner_lr * (1 + 1e-9)
    assert len(list(out.glob('run.json'))) == 1

def test_lock_names_the_holder_and_dies_with_it(tmp_path):
    "A second process is refused while the first holds the folder; once the holder is killed, --resume takes it."
    from splat_and_distill.runs import open_run
    run = tmp_path / 'r'
    holder = subprocess.Popen([sys.executable, '-c', 'import sys, time; from splat_and_distill.runs import open_run; '
                               f'open_run({str(run)!r}, "snd_x", ["run.json", "config.json"]).start(); '
                               f'open({str(run / "config.json")!r}, "w").write("{{}}"); print("held", flush=True); time.sleep(60)'],
                              stdout=subprocess.PIPE, text=True, env=_env())
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(FileExistsError, match=f'process {holder.pid}'):
        open_run(run, 'snd_x', ['run.json', 'config.json'], resume=True).start()
    holder.kill(); holder.wait()
    with open_run(run, 'snd_x', ['run.json', 'config.json'], resume=True) as r: r.start()    # a stale lock never blocks

def _user_files(run: Path, subfolders: list[str]) -> list[Path]:
    made = [run / 'precious.txt', run / 'mine' / 'a.txt'] + [run / s / 'users_note.txt' for s in subfolders]
    for p in made: p.parent.mkdir(parents=True, exist_ok=True); p.write_text('mine')
    return made

def test_train_overwrite_keeps_users_files(tmp_path):
    from splat_and_distill.train import snd_train
    out = tmp_path / 'run'
    args = TRAIN + ['--out', str(out), '--cache_dir', str(tmp_path / 'cache'), '--tensorboard']
    snd_train(args)
    owned = sorted({str(p.parent.relative_to(out)) for p in out.rglob('*') if p.is_file() and p.parent != out})
    assert any(o.startswith('checkpoints') for o in owned), owned
    mine = _user_files(out, owned)
    old_ckpts = {p.name for p in (out / 'checkpoints').glob('step_*')}
    snd_train(args + ['--overwrite'])
    assert all(p.read_text() == 'mine' for p in mine), [str(p) for p in mine if not p.exists()]
    assert {p.name for p in (out / 'checkpoints').glob('step_*')} == old_ckpts          # the new run's, in the same places
    assert json.loads((out / 'results.json').read_text())['steps'] == 4

def test_recon_overwrite_keeps_users_files(tmp_path):
    from splat_and_distill.scenes import make_scene
    from splat_and_distill.reconstruct import tiny, train_reconstructor
    scenes, out = [make_scene(11, n_views=10, size=32), make_scene(14, n_views=10, size=32)], tmp_path / 'run'
    train_reconstructor(tiny(steps=2), scenes, evaluate=False, out=out, progress=False)
    owned = sorted({str(p.parent.relative_to(out)) for p in out.rglob('*') if p.is_file() and p.parent != out})
    mine = _user_files(out, owned)
    train_reconstructor(tiny(steps=2), scenes, evaluate=False, out=out, progress=False, overwrite=True)
    assert all(p.exists() for p in mine), [str(p) for p in mine if not p.exists()]

def test_frames_of_mixed_sizes_refused_before_anything_is_written(tmp_path):
    "A frame whose image size differs from the declared one: one line, exit 2, no run folder (checked on the headers, before any work)."
    from PIL import Image
    from splat_and_distill.scenes import make_scene
    from splat_and_distill.scene_io import write_scene
    for i in range(2): write_scene(make_scene(i, n_views=12, size=32), tmp_path / 'data' / f'scene_{i}', normals=False)
    frame = tmp_path / 'data' / 'scene_0' / 'images' / 'frame_00003.png'
    Image.open(frame).resize((48, 48)).save(frame)
    res = subprocess.run(_cmd('train', 'snd_train', TRAIN + ['--data', str(tmp_path / 'data'), '--geometry', 'depth',
                                                            '--train_scenes', '1', '--out', str(tmp_path / 'run')]),
                         env=_env(), capture_output=True, text=True)
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert res.returncode == 2 and len(lines) == 1 and 'frame_00003.png: image is 48x48' in lines[0], res.stderr[-3000:]
    assert not (tmp_path / 'run').exists()

def _weights_files(tmp_path: Path) -> dict[str, Path]:
    "A truncated weights file, a file that is no weights file at all, and weights of another architecture (wrong keys)."
    import torch
    from safetensors.torch import save_file
    from splat_and_distill.backbones import make_backbone
    good = tmp_path / 'good.safetensors'
    save_file({k: v.contiguous() for k, v in make_backbone('efficientnet_lite0').model.state_dict().items()}, str(good))
    trunc = tmp_path / 'truncated.safetensors'; trunc.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    foreign = tmp_path / 'notes.safetensors'; foreign.write_text('these are my notes, not weights')
    wrong = tmp_path / 'wrong_keys.safetensors'; save_file({'fc.weight': torch.zeros(3, 3)}, str(wrong))
    return dict(truncated=trunc, foreign=foreign, wrong_keys=wrong)

@pytest.mark.parametrize('kind', ['truncated', 'foreign', 'wrong_keys'])
def test_bad_weights_files_are_one_line_and_write_nothing(tmp_path, kind):
    path = _weights_files(tmp_path)[kind]
    out = tmp_path / 'probe'
    res = subprocess.run(_cmd('probe_runs', 'snd_probe', ['--backbone', f'efficientnet_lite0:{path}', '--preset', 'tiny', '--out', str(out),
                                                          '--no-progress', '--threads', '1']), env=_env(), capture_output=True, text=True)
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith('snd_probe: error:') and path.name in lines[0], res.stderr[-3000:]
    assert not out.exists(), 'nothing may be written for bad input'

FIT3D = ['--preset', 'tiny', '--train_scenes', '1', '--n_views', '8', '--height', '32', '--width', '32', '--max_gaussians', '300',
         '--fit_steps', '4', '--eval_every', '2', '--ft_steps', '2', '--ft_batch_size', '2', '--threads', '1', '--no-progress']
DEMO = ['--quick', '--seeds', '0', '--threads', '1', '--no-progress', '--set', 'train_steps=2', '--set', 'train_scenes=1', '--set', 'n_views=10',
        '--set', 'probe_overrides={"n_views": 6, "n_train_scenes": 1, "n_test_scenes": 1, "epochs": 1, "real_image": false, "corr_gaps": [1, 2]}']
COMMANDS = {  # command: (module, function, arguments) of a run of a few seconds
    'snd_fit3d': ('fit3d_runs', 'snd_fit3d', FIT3D),
    'snd_fit3d --seeds': ('fit3d_runs', 'snd_fit3d', FIT3D + ['--seeds', '0']),
    'snd_reconkd': ('reconkd', 'snd_reconkd', ['--preset', 'tiny', '--threads', '1']),
    'snd_demo': ('demo', 'snd_demo', DEMO),
    'snd_study': ('demo', 'snd_study', DEMO + ['--variants', 'default,half_blending']),
}

@pytest.mark.parametrize('name', list(COMMANDS))
def test_overwrite_keeps_users_files_in_every_owned_subfolder(tmp_path, name):
    "Run, put a user's file into every subfolder the run wrote, run again with --overwrite: the user's files are all there."
    mod, func, argv = COMMANDS[name]
    out = tmp_path / 'run'
    argv = argv + ['--out', str(out)] + (['--set', f'cache_dir={tmp_path / "cache"}'] if func in ('snd_demo', 'snd_study') else [])
    subprocess.run(_cmd(mod, func, argv), env=_env(), check=True, capture_output=True)
    owned = sorted({str(p.parent.relative_to(out)) for p in out.rglob('*') if p.is_file() and p.parent != out})
    assert owned, 'the run wrote no subfolder'
    mine = _user_files(out, owned)
    res = subprocess.run(_cmd(mod, func, argv + ['--overwrite']), env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert all(p.read_text() == 'mine' for p in mine), [str(p.relative_to(out)) for p in mine if not p.exists()]
