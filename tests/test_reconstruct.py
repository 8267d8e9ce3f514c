"Reconstructor: shapes and gradient flow, checkpoint round trip and resume, plane-sweep warping with ground-truth depth."
import json
import pytest
import torch
from splat_and_distill.scenes import make_scene
from splat_and_distill.cameras import pixel_centers, project_points, transform_points
from splat_and_distill.reconstruct import (Reconstructor, tiny, cpu_default, recon_loss, to_gaussians, warp_to_depths, cost_volume,
                                           depth_candidates, train_reconstructor, load_reconstructor, save_reconstructor,
                                           make_config, snd_recon)


@pytest.fixture(scope='module')
def scene():
    return make_scene(11, n_views=10, size=32)


def triplet_batch(sc, pairs):
    "Batch of (context i, context j, target t) triplets of one scene."
    ctx = [[i, j] for i, j, _ in pairs]; tgt = [t for *_, t in pairs]
    return dict(context_rgb=torch.stack([sc.rgb[c] for c in ctx]), context_depth=torch.stack([sc.depth[c] for c in ctx]),
                context_K=torch.stack([sc.K[c] for c in ctx]), context_c2w=torch.stack([sc.c2w[c] for c in ctx]),
                target_rgb=sc.rgb[tgt], target_K=sc.K[tgt], target_c2w=sc.c2w[tgt])


def test_shapes_and_gradient_flow(scene):
    torch.manual_seed(0)
    cfg = tiny(depth_weight=0.1)
    model = Reconstructor(cfg)
    batch = triplet_batch(scene, [(0, 4, 2), (3, 7, 5)])
    out = model(batch['context_rgb'], batch['context_K'], batch['context_c2w'])
    assert out['depth'].shape == (2, 2, 32, 32) and out['depth_coarse'].shape == (2, 2, 8, 8)
    g = to_gaussians(out)
    assert g.means.shape == (2, 2 * 32 * 32, 3) and g.features.shape == (2, 2 * 32 * 32, 3)
    g.check()
    assert ((out['depth'] >= cfg.near - 1e-4) & (out['depth'] <= cfg.far + 1e-4)).all()
    loss, logs = recon_loss(model, batch, cfg)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # every stage receives gradient (the refinement's last conv starts at zero, so the layers before it wait one step)
    for stage in ['encoder', 'attention', 'cost_unet', 'refine.3']:
        gn = sum(p.grad.norm() for n, p in model.named_parameters() if n.startswith(stage))
        assert gn > 0, stage


def test_warp_with_gt_depth_maps_views(scene):
    "At the ground-truth depth, the source view warped into the reference equals the reference on co-visible pixels."
    sc = make_scene(12, n_views=10, size=64)
    i, j = 2, 6
    rgb, depth, K, c2w = sc.rgb, sc.depth, sc.K, sc.c2w
    warped, valid = warp_to_depths(rgb[j:j + 1], K[i:i + 1], c2w[i:i + 1], K[j:j + 1], c2w[j:j + 1], depth[i:i + 1, None])
    h, w = depth.shape[-2:]
    X = torch.cat([pixel_centers(h, w), torch.ones(h, w, 1)], -1) @ torch.linalg.inv(K[i]).T * depth[i, ..., None]
    uv, z = project_points(transform_points(c2w[i], X.reshape(-1, 3)), K[j], c2w[j])
    px = uv.floor().long(); px[:, 0].clamp_(0, w - 1); px[:, 1].clamp_(0, h - 1)
    covis = (valid[0, 0].flatten() & (depth[i].flatten() > 0) & ((z - depth[j][px[:, 1], px[:, 0]]).abs() < 0.03 * z)).reshape(h, w)
    err = (warped[0, :, 0] - rgb[i]).abs().mean(0)
    assert covis.float().mean() > 0.3
    assert err[covis].mean() < 0.05 and err[covis].median() < 0.03
    # and the wrong depth does not: a plane sweep can tell them apart
    warped2, _ = warp_to_depths(rgb[j:j + 1], K[i:i + 1], c2w[i:i + 1], K[j:j + 1], c2w[j:j + 1], 1.5 * depth[i:i + 1, None])
    assert (warped2[0, :, 0] - rgb[i]).abs().mean(0)[covis].mean() > 2 * err[covis].mean()


def test_cost_volume_identity_pair():
    "Two identical cameras: every candidate warps a pixel onto itself, so the correlation is |f|^2 / sqrt(C) for all candidates."
    sc = make_scene(13, n_views=4, size=32)
    f = torch.randn(1, 2, 4, 8, 8); f[:, 1] = f[:, 0]
    K = sc.K[:1].expand(2, 3, 3)[None] / torch.tensor([4., 4., 1.])[:, None]
    c2w = sc.c2w[:1].expand(2, 4, 4)[None]
    cv = cost_volume(f, K, c2w, depth_candidates(0.5, 8., 5))
    expect = (f[0, 0] ** 2).sum(0) / 2
    for k in range(5): torch.testing.assert_close(cv[0, 0, k], expect, atol=1e-4, rtol=1e-4)


def test_checkpoint_roundtrip_and_errors(tmp_path, scene):
    torch.manual_seed(0)
    model = Reconstructor(tiny())
    save_reconstructor(tmp_path / 'ck', model, step=7)
    loaded = load_reconstructor(tmp_path / 'ck')
    assert loaded.step == 7
    b = triplet_batch(scene, [(0, 4, 2)])
    with torch.no_grad():
        a, c = model.eval()(b['context_rgb'], b['context_K'], b['context_c2w']), loaded(b['context_rgb'], b['context_K'], b['context_c2w'])
    for k in ['means', 'scales', 'quats', 'opacities', 'colours', 'depth']: assert torch.equal(a[k], c[k]), k
    assert load_reconstructor(tmp_path / 'ck' / 'model.safetensors').step == 7
    with pytest.raises(FileNotFoundError, match='no reconstructor checkpoint'): load_reconstructor(tmp_path / 'missing')
    cfg = json.loads((tmp_path / 'ck' / 'config.json').read_text()); cfg['unet_ch'] = 16
    (tmp_path / 'ck' / 'config.json').write_text(json.dumps(cfg))
    # issue 11 item 7: the config embedded in the weights is checked against config.json
    with pytest.raises(ValueError, match='disagree: unet_ch: 8 -> 16'): load_reconstructor(tmp_path / 'ck')
    from safetensors.torch import save_file, load_file
    w = tmp_path / 'ck' / 'model.safetensors'; save_file(load_file(str(w)), str(w))            # weights without embedded config
    with pytest.raises(ValueError, match='does not match'): load_reconstructor(tmp_path / 'ck')
    w.write_bytes(w.read_bytes()[:500])                                                          # truncated
    with pytest.raises(ValueError, match='model.safetensors: not a readable safetensors file'): load_reconstructor(tmp_path / 'ck')


def test_train_resume_is_exact(tmp_path, scene):
    scenes = [scene, make_scene(14, n_views=10, size=32)]
    cfg = tiny(steps=4)
    m1, _ = train_reconstructor(cfg, scenes, evaluate=False, out=tmp_path / 'run', progress=False, stop_after=2)
    with pytest.raises(FileExistsError): train_reconstructor(cfg, scenes, evaluate=False, out=tmp_path / 'run', progress=False)
    m2, hist = train_reconstructor(cfg, scenes, evaluate=False, out=tmp_path / 'run', resume=True, progress=False)
    m3, _ = train_reconstructor(cfg, scenes, evaluate=False, progress=False)
    assert [r['step'] for r in hist] == [1, 2, 3, 4]
    for (k, p), q in zip(m2.state_dict().items(), m3.state_dict().values()): torch.testing.assert_close(p, q, msg=k)
    assert load_reconstructor(tmp_path / 'run').step == 4


def test_config_overrides():
    c = make_config('cpu_default', dict(depth_weight='0.1', steps='20', cross_attention='false', n_depths=16))
    assert (c.depth_weight, c.steps, c.cross_attention, c.n_depths) == (0.1, 20, False, 16)
    with pytest.raises(ValueError, match='unknown config key'): make_config('cpu_default', dict(nope=1))
    with pytest.raises(ValueError, match='expected true or false'): make_config('cpu_default', dict(cross_attention='ture'))
    with pytest.raises(ValueError, match='unknown preset'): make_config('huge')


@pytest.mark.parametrize('argv,msg', [
    (['--set', 'cross_attention=ture'], 'expected true or false'), (['--set', 'depth_weight=0.1,steps=20'], 'expected a number'),
    (['--steps', '0'], 'steps=0: must be >= 1'), (['--set', 'size=30'], 'divisible by 4'), (['--stepz', '3'], 'unrecognized arguments'),
    (['--device', 'tpu'], "device='tpu'"), (['--threads', '-1'], 'threads=-1'), (['--resume', '--overwrite'], 'contradict'),
    (['--preset', 'huge'], 'unknown preset'), (['--set', 'nope=1'], 'unknown config key')])
def test_cli_bad_input_exits_2_with_one_line(argv, msg, tmp_path, capsys):
    "Issue 11 item 9: no traceback, status 2, one line naming the problem, before any scene is rendered."
    with pytest.raises(SystemExit) as e: snd_recon(['--out', str(tmp_path / 'run'), *argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and msg in err and err.startswith('snd_recon: error:'), err
    assert not (tmp_path / 'run').exists()


def test_presets_build_and_run(scene):
    "Every preset builds; the GPU preset's model runs (on a small CPU input) with the expected shapes."
    b = triplet_batch(scene, [(0, 4, 2)])
    for name in ['cpu_default', 'cpu_rgb', 'gpu_256']:
        model = Reconstructor(make_config(name))
        with torch.no_grad(): out = model(b['context_rgb'], b['context_K'], b['context_c2w'])
        assert out['depth'].shape == (1, 2, 32, 32), name
    assert make_config('cpu_default').depth_weight > 0 and make_config('cpu_rgb').depth_weight == 0


def test_grad_chunks_train_deterministically(tmp_path, scene):
    "The demo's geometry stage: the batch's gradient in two halves side by side (chunked_grads). Two runs, and a run killed and resumed, give the same model bit for bit; the gradient is the whole batch's to float rounding."
    scenes = [scene, make_scene(14, n_views=10, size=32)]
    cfg = tiny(steps=4, batch_size=4, grad_chunks=2)
    a, hist = train_reconstructor(cfg, scenes, evaluate=False, progress=False)
    b, _ = train_reconstructor(cfg, scenes, evaluate=False, progress=False)
    train_reconstructor(cfg, scenes, evaluate=False, out=tmp_path / 'run', progress=False, stop_after=2)
    c, _ = train_reconstructor(cfg, scenes, evaluate=False, out=tmp_path / 'run', resume=True, progress=False)
    for k, p in a.state_dict().items(): assert torch.equal(p, b.state_dict()[k]) and torch.equal(p, c.state_dict()[k]), k
    assert json.loads((tmp_path / 'run' / 'config.json').read_text())['grad_chunks'] == 2 and 'psnr' in hist[-1]
    from splat_and_distill.core import chunked_grads
    model = Reconstructor(tiny())
    batch = triplet_batch(scene, [(0, 4, 2), (1, 5, 3), (2, 6, 4), (3, 7, 5)])
    params = list(model.parameters())
    whole = torch.autograd.grad(recon_loss(model, batch, tiny())[0], params, allow_unused=True)
    halves, parts = chunked_grads(lambda x: recon_loss(model, x, tiny()), batch, params, 2)
    assert [s for s, _ in parts] == [0.5, 0.5]
    for w, h in zip(whole, halves):
        assert (w is None) == (h is None)
        if w is not None: torch.testing.assert_close(h, w, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match='grad_chunks=5 exceeds batch_size=4'): train_reconstructor(tiny(grad_chunks=5, batch_size=4), scenes, progress=False)
