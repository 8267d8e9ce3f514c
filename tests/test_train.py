"Training loop: config errors before any work, CLI, resume == uninterrupted, timm export, 2-process DDP on CPU."
import json, os, socket
from pathlib import Path
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from splat_and_distill.train import (make_config, validate_config, train, snd_train, latest_checkpoint, TrainConfig, PRESETS)

TINY = dict(backbone='tiny_vit', out_dim=64, head_hidden=32, head_bottleneck=16, height=32, width=32, n_views=12,
            train_scenes=2, val_scenes=1, val_pairs=2, batch_size=2, steps=6, lr=1e-3, ema_every=2, log_every=2,
            val_every=0, ckpt_every=2, progress=False, device='cpu', threads=1)

def tiny(tmp, **kw): return make_config('cpu_demo', {**TINY, 'out': str(tmp), **kw})

def test_bad_configs_fail_before_any_work(tmp_path):
    out = tmp_path / 'run'
    with pytest.raises(ValueError, match="did you mean 'steps'"): make_config('cpu_demo', {'step': 3})
    with pytest.raises(ValueError, match='unknown preset'): make_config('cpu_dem')
    with pytest.raises(FileNotFoundError, match='--weights'): train(make_config('paper_vits14', out=str(out), data=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match='file not found'): train(make_config('cpu_demo', out=str(out), weights=str(tmp_path / 'x.pth')))
    with pytest.raises(FileNotFoundError, match='folder not found'): train(make_config('cpu_demo', out=str(out), data=str(tmp_path / 'nope')))
    with pytest.raises(FileNotFoundError, match='scene folder'): train(make_config('cpu_demo', out=str(out), data=str(tmp_path)))
    with pytest.raises(ValueError, match='recipe'): train(make_config('cpu_demo', out=str(out), recipe='ibot'))
    assert not out.exists(), 'nothing may be written before the config is known to be good'

def test_cli_help_lists_every_option_and_rejects_bad_input(capsys):
    with pytest.raises(SystemExit) as e: snd_train(['--help'])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for f in TrainConfig.__dataclass_fields__:
        if f != 'preset': assert f'--{f}' in text, f
    for p in PRESETS: assert p in text
    cfg = snd_train(['--print_config', '--preset', 'paper_vits14', '--set', 'steps=10', '--lr', '3e-4', '--data', 'procedural', '--train_scenes', '4',
                     '--weights', __file__, '--geometry', 'gt'])['config']
    assert (cfg['steps'], cfg['lr'], cfg['out_dim'], cfg['lora_rank']) == (10, 3e-4, 65536, 8)
    for bad in (['--set', 'stepz=3'], ['--preset', 'nope'], ['--steps', 'ten'], ['--weights', '/no/such.pth']):
        with pytest.raises(SystemExit) as e: snd_train(['--print_config', *bad])
        assert e.value.code == 2
        assert 'snd_train: error' in capsys.readouterr().err

def _weights(run):
    ck = latest_checkpoint(run)
    return {n: load_file(str(ck / f'{n}.safetensors')) for n in ('student', 'teacher')}, torch.load(ck / 'state.pt', weights_only=False)

def test_resume_equals_uninterrupted_and_export(tmp_path):
    a = train(tiny(tmp_path / 'a'))
    b1 = train(tiny(tmp_path / 'b', stop_after=3))          # "killed" after 3 steps (checkpoint written at step 3)
    assert b1['stopped'] and b1['steps_done'] == 3 and not (tmp_path / 'b' / 'results.json').exists()
    b2 = train(tiny(tmp_path / 'b'), resume=True)
    assert b2['start_step'] == 3 and b2['steps_done'] == 6
    (wa, sa), (wb, sb) = _weights(tmp_path / 'a'), _weights(tmp_path / 'b')
    for n in wa:
        assert wa[n].keys() == wb[n].keys()
        for k in wa[n]: assert torch.equal(wa[n][k], wb[n][k]), (n, k)
    assert torch.equal(sa['center'], sb['center']) and sa['step'] == sb['step'] == 6
    # metrics of the resumed run continue the killed one without duplicates
    steps = [json.loads(l)['step'] for l in (tmp_path / 'b' / 'metrics.jsonl').read_text().splitlines() if '"loss"' in l]
    assert steps == [2, 4, 6]
    res = json.loads((tmp_path / 'a' / 'results.json').read_text())
    assert res['recipe']['recipe'] == 'dino' and 'original_consistency' in res and 'val_consistency' in res
    # the exported student is a plain timm state dict with LoRA merged: loads strictly into the plain model
    from splat_and_distill.backbones import make_backbone
    sd = load_file(str(tmp_path / 'a' / 'student_timm.safetensors'))
    assert not any('lora' in k for k in sd)
    plain = make_backbone('tiny_vit')
    plain.model.load_state_dict(sd, strict=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad(): torch.testing.assert_close(plain(x), a['student'].backbone.eval()(x), atol=1e-5, rtol=1e-4)

def _free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _ddp_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch.distributed as dist
    from safetensors.torch import save_file
    res = train(tiny(Path(out) / 'run', steps=4, ckpt_every=0))
    for name in ('student', 'teacher'):
        save_file({k: v.detach().contiguous().clone() for k, v in res[name].state_dict().items()}, str(Path(out) / f'{name}{rank}.safetensors'))
    dist.destroy_process_group()

def test_ddp_two_cpu_processes_stay_identical(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for name in ('student', 'teacher'):
        w0, w1 = load_file(str(tmp_path / f'{name}0.safetensors')), load_file(str(tmp_path / f'{name}1.safetensors'))
        for k in w0: assert torch.equal(w0[k], w1[k]), (name, k)
    assert (tmp_path / 'run' / 'results.json').exists()  # rank 0 wrote the results
    res = json.loads((tmp_path / 'run' / 'results.json').read_text())
    assert res['world_size'] == 2 and res['steps'] == 4

def test_reconstructor_geometry_runs(tmp_path):
    "geometry='reconstructor': Gaussians from a (here untrained, tiny) feed-forward reconstructor instead of GT depth."
    from splat_and_distill.reconstruct import Reconstructor, tiny as recon_tiny, save_reconstructor
    save_reconstructor(tmp_path / 'recon', Reconstructor(recon_tiny(size=32)))
    res = train(tiny(tmp_path / 'run', geometry='reconstructor', reconstructor=str(tmp_path / 'recon'), render_scale=1.0,
                     steps=2, ckpt_every=0))
    assert res['results']['geometry'] == 'reconstructor' and res['results']['time_per_step']['reconstructor'] > 0


def test_recon_cache_changes_no_number(tmp_path, monkeypatch):
    "The reconstructor's output kept per triplet: the same students with and without it, and across a resume (the cache starts empty)."
    import splat_and_distill.train as T
    from splat_and_distill.reconstruct import Reconstructor, tiny as recon_tiny, save_reconstructor
    save_reconstructor(tmp_path / 'recon', Reconstructor(recon_tiny(size=32)))
    cfg = lambda name, **kw: tiny(tmp_path / name, geometry='reconstructor', reconstructor=str(tmp_path / 'recon'), render_scale=1.0,
                                  steps=8, gap=8, **kw)              # 2 scenes x 4 triplets: 16 draws, most of them seen before
    seen = []
    class Counting(T.ReconCache):
        def __call__(self, reconstructor, small):
            seen.append((self.hits, self.misses, len(self.plans))); return super().__call__(reconstructor, small)
    monkeypatch.setattr(T, 'ReconCache', Counting)
    train(cfg('cached'))
    c = train(cfg('resumed', stop_after=4)); train(cfg('resumed'), resume=True)
    assert c['stopped'] and seen[-1][0] > 0 and seen[-1][2] > 0       # the resumed half found triplets it had reconstructed and planned
    monkeypatch.setattr(T, 'ReconCache', lambda: None)                 # no cache: every batch reconstructed, as before
    train(cfg('direct'))
    runs = [_weights(tmp_path / n)[0] for n in ('cached', 'resumed', 'direct')]
    for n in runs[0]:
        for k in runs[0][n]: assert torch.equal(runs[0][n][k], runs[1][n][k]) and torch.equal(runs[0][n][k], runs[2][n][k]), (n, k)


def test_recon_cache_reconstructs_each_triplet_once():
    import splat_and_distill.train as T
    calls = []
    def direct(rgb, K, c2w):                                            # a stand-in: one row per triplet, from its images
        return dict(depth=rgb[:, :, 0].clone(), means=rgb.flatten(1)[:, :6].view(-1, 2, 3).clone())
    def recon(rgb, K, c2w): calls.append(len(rgb)); return direct(rgb, K, c2w)
    rgb = torch.rand(5, 2, 3, 4, 4)
    batch = lambda rows: dict(context_rgb=rgb[rows], context_K=torch.eye(3).expand(len(rows), 2, 3, 3),
                              context_c2w=torch.eye(4).expand(len(rows), 2, 4, 4), scene_index=torch.tensor(rows) // 3,
                              view_indices=torch.tensor([[r, r + 2, r + 1] for r in rows]))
    cache = T.ReconCache()
    for rows in ([0, 1, 1], [1, 2, 0], [3, 4, 2]):                       # a triplet twice in one batch; seen before; new ones
        out = cache(recon, batch(rows))
        for name, v in direct(batch(rows)['context_rgb'], None, None).items(): assert torch.equal(out[name], v)
    assert calls == [2, 1, 2] and (cache.hits, cache.misses) == (4, 5) and len(cache.store) == 5   # rows reconstructed per batch
    small = T.ReconCache(max_bytes=0)                                   # holds nothing: every triplet reconstructed, same values
    for rows in ([0, 1], [0, 1]): assert torch.equal(small(recon, batch(rows))['depth'], rgb[rows][:, :, 0])
    assert small.store == {} and small.misses == 4


def test_reconstructor_is_batch_invariant():
    "What ReconCache relies on: each triplet's output bit for bit the same whatever else is in the batch."
    from splat_and_distill.reconstruct import Reconstructor, tiny as recon_tiny
    torch.manual_seed(0)
    rec = Reconstructor(recon_tiny(size=32)).eval()
    rgb, K = torch.rand(4, 2, 3, 32, 32), torch.tensor([[30., 0, 16], [0, 30., 16], [0, 0, 1]]).expand(4, 2, 3, 3)
    c2w = torch.eye(4).repeat(4, 2, 1, 1); c2w[:, 1, 0, 3] = 0.2
    with torch.no_grad():
        full = rec(rgb, K, c2w)
        for rows in ([2], [1, 3], [3, 0, 2]):
            part = rec(rgb[rows], K[rows], c2w[rows])
            for name, v in part.items(): assert torch.equal(v, full[name][rows]), (name, rows)

def test_no_depth_with_gt_geometry_stops_with_an_error(tmp_path):
    "Issue 11 item 3: scenes without depth used to train with loss 0 and valid fraction 0, exit code 0."
    from splat_and_distill.scenes import make_scene
    from splat_and_distill.scene_io import write_scene
    for i in range(2):
        f = write_scene(make_scene(i, n_views=12, size=32), tmp_path / 'data' / f'scene_{i}', normals=False)
        js = json.loads((f / 'transforms.json').read_text())
        for fr in js['frames']: fr.pop('depth_file_path')
        (f / 'transforms.json').write_text(json.dumps(js))
        import shutil; shutil.rmtree(f / 'depth')
    with pytest.raises(ValueError, match='depth'):
        train(tiny(tmp_path / 'run', data=str(tmp_path / 'data'), train_scenes=1, val_scenes=1, steps=2))
    with pytest.raises(FileNotFoundError, match='geometry=depth needs a depth map'):     # the real-data geometry (issue 13)
        train(tiny(tmp_path / 'run', data=str(tmp_path / 'data'), train_scenes=1, val_scenes=1, steps=2, geometry='depth'))

def test_empty_depth_maps_stop_the_run(tmp_path):
    "Issue 11 item 3: depth files that hold no depth (all zero) train on nothing; the valid fraction stops the run."
    from PIL import Image
    from splat_and_distill.scenes import make_scene
    from splat_and_distill.scene_io import write_scene
    for i in range(2):
        f = write_scene(make_scene(i, n_views=12, size=32), tmp_path / 'data' / f'scene_{i}', normals=False)
        for p in (f / 'depth').glob('*.png'): Image.fromarray(np.zeros((32, 32), np.uint16)).save(p)
    with pytest.raises(ValueError, match='of the target tokens received a splatted teacher feature'):
        train(tiny(tmp_path / 'run', data=str(tmp_path / 'data'), train_scenes=1, val_scenes=1, steps=4, geometry='depth'))

def test_holes_everywhere_stop_the_run(tmp_path, monkeypatch):
    "Issue 11 item 3: a logging window in which (almost) no target token received a splatted feature stops training."
    import splat_and_distill.train as T
    side = T.teacher_side
    monkeypatch.setattr(T, 'teacher_side', lambda *a, **k: (lambda t, v: (t, torch.zeros_like(v)))(*side(*a, **k)))
    with pytest.raises(ValueError, match=r'steps 1-2: only 0.00% of the target tokens'): train(tiny(tmp_path / 'run'))
