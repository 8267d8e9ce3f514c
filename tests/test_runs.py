"Run folders: nothing a user made is lost (refusals, resume with missing pieces), issue 11 items 1-2 and 5-7."
import json
from pathlib import Path
import pytest
import torch
from safetensors.torch import load_file
from splat_and_distill.scenes import make_scene
from splat_and_distill.train import make_config, train, latest_checkpoint
from splat_and_distill.reconstruct import tiny as recon_tiny, train_reconstructor, load_reconstructor

TINY = dict(backbone='tiny_vit', out_dim=64, head_hidden=32, head_bottleneck=16, height=32, width=32, n_views=12,
            train_scenes=2, val_scenes=1, val_pairs=2, batch_size=2, steps=6, lr=1e-3, ema_every=2, log_every=2,
            val_every=0, ckpt_every=2, progress=False, device='cpu', threads=1)

def tiny(out, **kw): return make_config('cpu_demo', {**TINY, 'out': str(out), **kw})

def _snapshot(run: Path) -> dict:
    "Bytes of every file in a run folder (to show that nothing changed)."
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob('*')) if p.is_file()}

@pytest.fixture(scope='module')
def recon_scenes():
    return [make_scene(11, n_views=10, size=32), make_scene(14, n_views=10, size=32)]

# item 1: --resume with missing pieces must not restart from step 0 over the trained model
def test_recon_resume_without_train_state_refuses(tmp_path, recon_scenes):
    run = tmp_path / 'run'
    train_reconstructor(recon_tiny(steps=4), recon_scenes, evaluate=False, out=run, progress=False, stop_after=2)
    for p in run.rglob('train_state.pt'): p.unlink()
    before = _snapshot(run)
    with pytest.raises((FileNotFoundError, ValueError), match='train_state.pt'):
        train_reconstructor(recon_tiny(steps=4), recon_scenes, evaluate=False, out=run, resume=True, progress=False)
    assert _snapshot(run) == before, 'a refused resume must leave the run folder untouched'

def test_train_resume_without_latest_json_continues(tmp_path):
    ref = train(tiny(tmp_path / 'ref'))
    train(tiny(tmp_path / 'b', stop_after=3))
    (tmp_path / 'b' / 'checkpoints' / 'latest.json').unlink()
    out = train(tiny(tmp_path / 'b'), resume=True)
    assert out['start_step'] == 3, 'resume must find the newest complete checkpoint, not start again'
    for k, v in ref['student'].state_dict().items(): assert torch.equal(v, out['student'].state_dict()[k]), k

def test_train_resume_without_checkpoints_refuses(tmp_path):
    run = tmp_path / 'b'
    train(tiny(run, stop_after=3))
    import shutil; shutil.rmtree(run / 'checkpoints')
    before = _snapshot(run)
    with pytest.raises((FileNotFoundError, ValueError), match='checkpoint'): train(tiny(run), resume=True)
    assert _snapshot(run) == before

# item 2: a new run into a folder holding a run is refused; rotation touches only its own run's files
def test_train_into_existing_run_refuses(tmp_path):
    run = tmp_path / 'a'
    train(tiny(run, steps=4))
    before = _snapshot(run)
    with pytest.raises(FileExistsError, match='--resume'): train(tiny(run, steps=4, seed=1))
    assert _snapshot(run) == before

def test_rotation_keeps_foreign_checkpoints(tmp_path):
    other = tmp_path / 'other'
    train(tiny(other, steps=2, ckpt_every=1))
    run = tmp_path / 'a'
    train(tiny(run, stop_after=2))
    import shutil
    shutil.copytree(other / 'checkpoints' / 'step_0000001', run / 'checkpoints' / 'step_0000001')   # someone else's files
    (run / 'checkpoints' / 'notes.txt').write_text('mine')
    train(tiny(run), resume=True)
    assert (run / 'checkpoints' / 'step_0000001').is_dir() and (run / 'checkpoints' / 'notes.txt').is_file()

# items 5-7: the resume contract
def test_resume_refuses_incompatible_changes_and_lists_them(tmp_path):
    run = tmp_path / 'a'
    train(tiny(run, stop_after=2))
    with pytest.raises(ValueError) as e: train(tiny(run, lr=3e-3, seed=1, batch_size=1, out_dim=32, steps=8), resume=True)
    for k in ('lr: 0.001 -> 0.003', 'seed: 0 -> 1', 'batch_size: 2 -> 1', 'out_dim: 64 -> 32', 'steps: 6 -> 8'): assert k in str(e.value), k
    out = train(tiny(run, log_every=3, keep_ckpts=3, threads=1), resume=True)      # how it logs and saves may change
    assert out['start_step'] == 2 and out['steps_done'] == 6

def test_cli_resume_starts_from_the_saved_config(tmp_path, capsys):
    from splat_and_distill.train import snd_train
    run = tmp_path / 'a'
    args = [x for k, v in TINY.items() for x in ((f'--{k}' if v else f'--no-{k}',) if isinstance(v, bool) else (f'--{k}', str(v)))] + ['--out', str(run)]
    snd_train(args + ['--stop_after', '2'])
    out = snd_train(['--resume', '--out', str(run)])                                 # no other option needed
    assert out['start_step'] == 2 and out['steps_done'] == 6
    with pytest.raises(SystemExit) as e: snd_train(['--resume', '--out', str(run), '--lr', '0.01'])
    assert e.value.code == 2 and 'lr: 0.001 -> 0.01' in capsys.readouterr().err

def test_finished_run_resume_is_a_no_op(tmp_path):
    run = tmp_path / 'a'
    train(tiny(run, steps=4))
    before = _snapshot(run)
    out = train(tiny(run, steps=4), resume=True)
    assert out['steps_done'] == 4 and _snapshot(run) == before

def test_torn_metrics_line_dropped_with_a_warning(tmp_path):
    run = tmp_path / 'a'
    train(tiny(run, stop_after=4))
    with open(run / 'metrics.jsonl', 'a') as f: f.write('{"step": 5, "loss": 0.')                # the disk filled up mid-line
    with pytest.warns(UserWarning, match='incomplete'): train(tiny(run), resume=True)
    steps = [json.loads(l)['step'] for l in (run / 'metrics.jsonl').read_text().splitlines() if '"loss"' in l]
    assert steps == [2, 4, 6]
    (run / 'metrics.jsonl').write_text('{"step": 0}\n{"step": 2, "lo\n{"step": 4}\n')              # damage in the middle: an error
    from splat_and_distill.runs import read_jsonl
    with pytest.raises(ValueError, match='metrics.jsonl: line 2'): read_jsonl(run / 'metrics.jsonl')

def test_mixed_step_checkpoint_falls_back(tmp_path):
    "Parts of a newer checkpoint without its manifest (a kill mid-save) are skipped with a warning naming the folder."
    ref = train(tiny(tmp_path / 'ref'))
    run = tmp_path / 'a'
    train(tiny(run, stop_after=2))
    newer = run / 'checkpoints' / 'step_0000004'; newer.mkdir()
    import shutil; shutil.copy(run / 'checkpoints' / 'step_0000002' / 'student.safetensors', newer / 'student.safetensors')
    with pytest.warns(UserWarning, match='step_0000004: incomplete'): out = train(tiny(run), resume=True)
    assert out['start_step'] == 2
    for k, v in ref['student'].state_dict().items(): assert torch.equal(v, out['student'].state_dict()[k]), k

def test_corrupt_checkpoint_is_an_error_naming_the_file(tmp_path):
    run = tmp_path / 'a'
    train(tiny(run, stop_after=2))
    f = run / 'checkpoints' / 'step_0000002' / 'teacher.safetensors'
    data = bytearray(f.read_bytes()); data[-1] ^= 0xFF; f.write_bytes(bytes(data))              # one bit of rot
    with pytest.raises(ValueError, match='teacher.safetensors: contents differ'): train(tiny(run), resume=True)
    f.write_bytes(bytes(data[:100]))                                                             # truncated
    with pytest.raises(ValueError, match='teacher.safetensors: 100 bytes'): train(tiny(run), resume=True)

def test_overwrite_replaces_only_the_runs_own_files(tmp_path):
    run = tmp_path / 'a'
    train(tiny(run, steps=2))
    (run / 'notes.md').write_text('my notes')
    out = train(tiny(run, steps=2, seed=3), overwrite=True)
    assert (run / 'notes.md').read_text() == 'my notes' and out['start_step'] == 0
    assert json.loads((run / 'config.json').read_text())['seed'] == 3

def test_recon_resume_contract(tmp_path, recon_scenes):
    run = tmp_path / 'r'
    m, _ = train_reconstructor(recon_tiny(steps=4), recon_scenes, evaluate=False, out=run, progress=False)
    with pytest.raises(ValueError, match='steps: 4 -> 6'):
        train_reconstructor(recon_tiny(steps=6), recon_scenes, evaluate=False, out=run, resume=True, progress=False)
    import shutil
    shutil.copy(run / 'checkpoints' / 'step_0000002' / 'model.safetensors', run / 'model.safetensors')   # killed before publishing
    m2, hist = train_reconstructor(recon_tiny(steps=4), recon_scenes, evaluate=False, out=run, resume=True, progress=False)
    assert load_reconstructor(run).step == 4 and [r['step'] for r in hist] == [1, 2, 3, 4]
    for k, v in m.state_dict().items(): assert torch.equal(v.cpu(), m2.state_dict()[k].cpu()), k
