"FiT3D baseline: gradient separation, stage 1 and 2 learn, resume scene by scene, checkpoints, CLI errors, timm export."
import json
from pathlib import Path
import pytest
import torch
from safetensors.torch import load_file
from splat_and_distill.fit3d import (FeatureGaussians, render_feature_gaussians, rgb_loss, feature_loss, init_points, split_views,
                                     fit_scene, fit3d_config, validate_fit3d_config, render_targets, finetune, masked_l1, run_fit3d,
                                     save_scene_fit, load_scene_fit, snd_fit3d, seed_summary, like_train, FiT3DConfig, FIT3D_PRESETS)
from splat_and_distill.backbones import make_backbone, make_student
from splat_and_distill.scenes import make_scene, write_scene

FAST = dict(train_scenes=2, n_views=8, height=32, width=32, gap=4, holdout_every=4, max_gaussians=600, fit_steps=6, eval_every=3,
            ft_steps=3, ft_batch_size=2, progress=False, threads=1)

@pytest.fixture(scope='module')
def scene(): return make_scene(5, n_views=8, size=32)

@pytest.fixture(scope='module')
def teacher():
    torch.manual_seed(0)
    return make_backbone('efficientnet_lite0', pretrained=False).eval()

def _gaussians(scene, out_dim, seed=0):
    tr, _ = split_views(scene.n_views, 4, 4)
    pts, cols = init_points(scene.depth[tr], scene.K[tr], scene.c2w[tr], scene.rgb[tr], 2, 500)
    fg = FeatureGaussians(pts, cols, out_dim=out_dim)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():       # a state after some steps: features non-zero, Gaussians anisotropic
        fg.features.normal_(0, 0.1, generator=g); fg.log_scales.add_(0.3 * torch.randn(fg.log_scales.shape, generator=g))
    return fg

def _grads(fg, loss):
    fg.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {n: (torch.zeros_like(p) if p.grad is None else p.grad.clone()) for n, p in fg.named_parameters()}

GEOMETRY = ('means', 'log_scales', 'quats', 'opacity_logits')

def test_gradient_separation_is_exact(scene):
    fg = _gaussians(scene, out_dim=16)
    target = torch.randn(1, 16, 32, 32, generator=torch.Generator().manual_seed(1))
    out = render_feature_gaussians(fg, scene.c2w[[1]], scene.K[[1]], 32, 32)
    l_feat, l_rgb = feature_loss(out['features'], target), rgb_loss(out['rgb'], scene.rgb[[1]])
    g_feat, g_rgb, g_both = _grads(fg, l_feat), _grads(fg, l_rgb), _grads(fg, l_feat + l_rgb)
    for n in GEOMETRY + ('colour_logits',):
        assert torch.count_nonzero(g_feat[n]) == 0, f'the feature loss reached {n}'
        assert torch.count_nonzero(g_rgb[n]) > 0, f'the RGB loss does not reach {n}'
        assert torch.equal(g_both[n], g_rgb[n]), n              # the sum's gradient is the RGB loss's, bit for bit
    for n in ('features', 'decoder.weight'):
        assert torch.count_nonzero(g_rgb[n]) == 0, f'the RGB loss reached {n}'
        assert torch.count_nonzero(g_feat[n]) > 0
        assert torch.equal(g_both[n], g_feat[n]), n
    # without the cut the feature loss moves the geometry: the test above can fail
    naive = render_feature_gaussians(fg, scene.c2w[[1]], scene.K[[1]], 32, 32, separate=False)
    g_naive = _grads(fg, feature_loss(naive['features'], target))
    assert torch.count_nonzero(g_naive['means']) > 0 and torch.count_nonzero(g_naive['opacity_logits']) > 0
    # and the two renders use identical compositing weights: same alpha either way
    assert torch.equal(naive['alpha'], out['alpha']) and torch.allclose(naive['features'], out['features'])

def test_tiny_stage1_reduces_both_losses(scene, teacher):
    cfg = fit3d_config('tiny', height=32, width=32, max_gaussians=600, fit_steps=30, eval_every=5, progress=False)
    fit = fit_scene(scene, teacher, cfg, progress=False)
    c = fit['curve']
    assert [r['step'] for r in c] == [0, 5, 10, 15, 20, 25, 30]
    assert c[-1]['rgb_loss'] < 0.8 * c[1]['rgb_loss'] and c[-1]['feat_loss'] < 0.9 * c[1]['feat_loss']
    assert c[0]['token_cos'] == 0 and c[-1]['token_cos'] > 0.2 and c[-1]['psnr'] > c[0]['psnr'] + 2
    assert fit['converged_step'] in [r['step'] for r in c] and 0 < fit['fit_seconds']
    assert all(r['seconds'] <= s['seconds'] for r, s in zip(c, c[1:]))

def test_stage2_moves_student_toward_rendered_features(scene, teacher):
    fg = _gaussians(scene, out_dim=teacher.dim)
    views = [0, 1, 3, 5, 7]
    grid = teacher.token_grid(32, 32)
    targets, valid = render_targets(fg, scene, views, grid)
    assert targets.shape == (5, teacher.dim, *grid) and valid.shape == (5, *grid) and valid.any()
    torch.manual_seed(0)
    student = make_student(teacher, 'last_stages')
    frozen = {n: p.detach().clone() for n, p in student.named_parameters() if not p.requires_grad}
    images = scene.rgb[views]
    with torch.no_grad(): before = masked_l1(student.eval()(images), targets, valid).item()
    log = finetune(student, images, targets, valid, steps=10, batch_size=2, lr=1e-3, seed=0, progress=False)
    with torch.no_grad(): after = masked_l1(student.eval()(images), targets, valid).item()
    assert len(log) == 10 and after < 0.9 * before, (before, after)
    for n, p in student.named_parameters():
        if n in frozen: assert torch.equal(p, frozen[n]), f'frozen parameter {n} moved'

def test_masked_l1_ignores_invalid_tokens():
    pred, target = torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)
    target[0, :, 0, 0] = 10.
    valid = torch.ones(1, 2, 2, dtype=torch.bool)
    assert masked_l1(pred, target, valid).item() == pytest.approx(10 * 2 / (4 * 2))
    valid[0, 0, 0] = False
    assert masked_l1(pred, target, valid).item() == 0

def _tensors(path): return load_file(str(path))

def test_interrupted_run_resumes_scene_by_scene(tmp_path):
    full = run_fit3d(fit3d_config('tiny', **FAST, backbone='efficientnet_lite0:random', out=str(tmp_path / 'a')))
    part = run_fit3d(fit3d_config('tiny', **FAST, backbone='efficientnet_lite0:random', out=str(tmp_path / 'b'), stop_after_scenes=1))
    assert part['stopped'] and part['scenes_done'] == ['scene_0000000']
    b = tmp_path / 'b'
    first = b / 'scenes' / 'scene_0000000.safetensors'
    assert first.exists() and not (b / 'scenes' / 'scene_0000001.safetensors').exists() and not (b / 'results.json').exists()
    stamp = first.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match='--resume'):               # a new run never clobbers one
        run_fit3d(fit3d_config('tiny', **FAST, backbone='efficientnet_lite0:random', out=str(b)))
    done = run_fit3d(fit3d_config('tiny', **FAST, backbone='efficientnet_lite0:random', out=str(b)), resume=True)
    assert not done['stopped'] and first.stat().st_mtime_ns == stamp, 'a fitted scene was fitted again'
    for name in ('scene_0000000', 'scene_0000001'):
        ta, tb = _tensors(tmp_path / 'a' / 'scenes' / f'{name}.safetensors'), _tensors(b / 'scenes' / f'{name}.safetensors')
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
    sa, sb = _tensors(tmp_path / 'a' / 'student_timm.safetensors'), _tensors(b / 'student_timm.safetensors')
    assert all(torch.equal(sa[k], sb[k]) for k in sa), 'resumed run must equal the uninterrupted one'
    ra = json.loads((tmp_path / 'a' / 'results.json').read_text())
    assert set(ra['scenes']) == {'scene_0000000', 'scene_0000001'} and ra['stage2']['steps'] == 3
    # resuming a finished run is a no-op; resuming with other settings is refused, naming them
    again = run_fit3d(fit3d_config('tiny', **FAST, backbone='efficientnet_lite0:random', out=str(b)), resume=True)
    assert again['results'] == json.loads((b / 'results.json').read_text())
    with pytest.raises(ValueError, match='fit_steps'):
        run_fit3d(fit3d_config('tiny', **{**FAST, 'fit_steps': 5}, backbone='efficientnet_lite0:random', out=str(b)), resume=True)
    # --overwrite replaces the run's own files only
    (b / 'notes.txt').write_text('mine')
    run_fit3d(fit3d_config('tiny', **{**FAST, 'train_scenes': 1}, backbone='efficientnet_lite0:random', out=str(b)), overwrite=True)
    assert (b / 'notes.txt').read_text() == 'mine' and not (b / 'scenes' / 'scene_0000001.safetensors').exists()

def test_exported_student_loads_for_the_probes(tmp_path, scene):
    from splat_and_distill.probes import load_probe_backbone
    res = run_fit3d(fit3d_config('tiny', **{**FAST, 'train_scenes': 1}, out=str(tmp_path)))
    path = res['paths']['student_timm']
    student = load_probe_backbone(f'efficientnet_lite0:{path}')
    concat = load_probe_backbone(f'efficientnet_lite0+efficientnet_lite0:{path}')
    teacher = make_backbone('efficientnet_lite0').eval()
    with torch.no_grad():
        s, c, t = student(scene.rgb[:2]), concat(scene.rgb[:2]), teacher(scene.rgb[:2])
    assert torch.equal(c, torch.cat([t, s], 1))
    assert not torch.equal(s, t), 'stage 2 did not change the student'

def test_scene_fit_checkpoints_refuse_mismatch_and_corruption(tmp_path, scene):
    cfg = fit3d_config('tiny')
    fg = _gaussians(scene, out_dim=8)
    p = save_scene_fit(tmp_path / 's.safetensors', fg, dict(note=1), cfg)
    fg2, summ = load_scene_fit(p, cfg)
    assert summ == dict(note=1) and all(torch.equal(a, b) for a, b in zip(fg.state_dict().values(), fg2.state_dict().values()))
    with pytest.raises(ValueError, match='max_gaussians'): load_scene_fit(p, fit3d_config('tiny', max_gaussians=7))
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ValueError, match='s.safetensors'): load_scene_fit(p, cfg)
    assert not list(tmp_path.glob('.*.tmp')), 'atomic writes leave no temporary files'

def test_transforms_folder_with_depth_maps(tmp_path, scene):
    for i in range(2): write_scene(make_scene(10 + i, n_views=8, size=32), tmp_path / 'data' / f'room{i}')
    res = run_fit3d(fit3d_config('tiny', **{**FAST, 'train_scenes': 0}, data=str(tmp_path / 'data'), geometry='depth',
                                 backbone='efficientnet_lite0:random', out=str(tmp_path / 'run')))
    assert sorted(res['results']['scenes']) == ['room0', 'room1']
    assert all(s['token_cos'] > 0 for s in res['results']['scenes'].values())

def test_cli_bad_input_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e: snd_fit3d(['--help'])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for f in FiT3DConfig.__dataclass_fields__:
        if f != 'preset': assert f'--{f}' in text, f
    for p in FIT3D_PRESETS: assert p in text
    out = tmp_path / 'never'
    bad = [['--set', 'fit_step=3'], ['--preset', 'nope'], ['--fit_steps', 'ten'], ['--set', 'geometry=nerf'], ['--data', str(tmp_path / 'no')],
           ['--weights', '/no/such.pth'], ['--set', 'ft_hflip=ture'], ['--probe_preset', 'tiny'], ['--seeds', '0', '--probe_preset', 'huge'],
           ['--set', 'holdout_every=-1'], ['--preset', 'paper_fit3d'], ['--set', 'ft_lr=0'], ['--reprobe'], ['--resume'], ['--fit-step', '3'],
           ['--resume', '--overwrite']]
    for b in bad:
        with pytest.raises(SystemExit) as e: snd_fit3d(['--out', str(out), *b])
        assert e.value.code == 2, b
        assert 'snd_fit3d: error' in capsys.readouterr().err, b
    assert not out.exists(), 'nothing may be written before the config is known to be good'

def test_configs_and_train_alignment():
    from splat_and_distill.train import cpu_demo
    demo = cpu_demo()
    cfg = like_train(demo)
    assert (cfg.height, cfg.width, cfg.n_views, cfg.train_scenes, cfg.gap, cfg.policy) == (demo.height, demo.width, demo.n_views,
                                                                                             demo.train_scenes, demo.gap, demo.policy)
    assert (cfg.ft_steps, cfg.ft_batch_size) == (demo.steps, demo.batch_size)
    base = fit3d_config('cpu_fit3d')
    assert (base.height, base.n_views, base.train_scenes, base.ft_steps, base.ft_batch_size) == (64, 24, 8, demo.steps, demo.batch_size)
    for name in FIT3D_PRESETS:
        if name != 'paper_fit3d': validate_fit3d_config(fit3d_config(name))

def test_seed_summary_is_paired():
    per = {k: {'teacher': {'m': 1.0 + k}, 'x': {'m': 1.5 + k + 0.1 * (k == 2)}} for k in range(3)}
    s = seed_summary(per)
    assert s['x']['m']['diff_mean'] == pytest.approx(0.5 + 0.1 / 3)
    assert s['x']['m']['std'] > s['x']['m']['diff_std'] > 0 and s['teacher']['m']['diff_mean'] == 0

def test_reconstructor_geometry_runs(tmp_path):
    "geometry='reconstructor': initial points from a (here untrained, tiny) reconstructor's depth, lifting from its Gaussians."
    from splat_and_distill.reconstruct import Reconstructor, tiny as recon_tiny, save_reconstructor
    save_reconstructor(tmp_path / 'recon', Reconstructor(recon_tiny(size=32)))
    res = run_fit3d(fit3d_config('tiny', **{**FAST, 'train_scenes': 1}, backbone='efficientnet_lite0:random', geometry='reconstructor',
                                 reconstructor=str(tmp_path / 'recon'), out=str(tmp_path / 'run')))
    s = res['results']['scenes']['scene_0000000']
    assert s['lift_token_cos'] is not None and s['n_gaussians'] > 0 and res['results']['config']['geometry'] == 'reconstructor'

def test_study_protocol_seeds_and_resume(tmp_path, monkeypatch):
    "For seed k: runs with seed k, every model (teacher included) probed with probe seed k; paired summary; a rerun reuses everything."
    import splat_and_distill.fit3d as f3
    calls = []
    def fake_probe(specs, seed, preset, overrides=None, cache_dir=None, progress=True):
        calls.append((dict(specs), seed, preset))
        return {row: {'depth.d1': 0.5 + 0.1 * seed + 0.01 * i} for i, row in enumerate(specs)}
    monkeypatch.setattr(f3, 'probe_seed', fake_probe)
    cfg = fit3d_config('tiny', **{**FAST, 'train_scenes': 1, 'fit_steps': 3}, backbone='efficientnet_lite0:random', out=str(tmp_path))
    study = f3.fit3d_study(cfg, [0, 1], probe_preset='tiny')
    assert [c[1] for c in calls] == [0, 1] and all(c[2] == 'tiny' for c in calls)
    assert all(c[0]['teacher'] == 'efficientnet_lite0' and c[0]['FiT3D student'].endswith(f'seed_{s}/student_timm.safetensors')
               and c[0]['FiT3D student + teacher'].startswith('efficientnet_lite0+efficientnet_lite0:') for c, s in zip(calls, (0, 1)))
    assert json.loads((tmp_path / 'seed_1' / 'results.json').read_text())['config']['seed'] == 1
    d = study['summary']['FiT3D student']['depth.d1']
    assert d['diff_mean'] == pytest.approx(0.01) and d['diff_std'] == pytest.approx(0, abs=1e-12) and d['n'] == 2
    with pytest.raises(FileExistsError): f3.fit3d_study(cfg, [0, 1], probe_preset='tiny')
    again = f3.fit3d_study(cfg, [0, 1], probe_preset='tiny', resume=True)
    assert len(calls) == 2 and again['summary'] == study['summary']
    f3.fit3d_study(cfg, [0, 1], probe_preset='tiny', resume=True, reprobe=True)
    assert len(calls) == 4

def test_probe_seed_uses_the_probe_seed():
    from splat_and_distill.fit3d import probe_seed
    from splat_and_distill.probes import ProbeConfig
    kw = dict(epochs=2, real_image=False, n_train_scenes=1)
    if 'normals_epochs' in ProbeConfig.__dataclass_fields__: kw['normals_epochs'] = 2
    specs = {'teacher': 'efficientnet_lite0:random'}
    a, b = probe_seed(specs, 0, 'tiny', kw, progress=False), probe_seed(specs, 1, 'tiny', kw, progress=False)
    assert set(a) == {'teacher'} and 'depth.d1' in a['teacher'] and 'corr.recall_10px' in a['teacher']
    keys = ('corr.recall_10px', 'consistency.gap', 'consistency.cos_random')
    assert any(a['teacher'][k] != b['teacher'][k] for k in keys), 'the probe seed must change the probes (pairs, random pairs)'

def test_gradient_separation_option_is_wired(scene, teacher):
    "`gradient_separation=False` (the ablation) lets the feature loss move the geometry: the fits differ in geometry only through it."
    cfg = fit3d_config('tiny', height=32, width=32, max_gaussians=300, fit_steps=3, eval_every=3, progress=False)
    on = fit_scene(scene, teacher, cfg, progress=False)['model']
    off = fit_scene(scene, teacher, fit3d_config('tiny', **{**{k: getattr(cfg, k) for k in ('height', 'width', 'max_gaussians', 'fit_steps', 'eval_every', 'progress')}},
                                                 gradient_separation=False), progress=False)['model']
    assert not torch.equal(on.means, off.means) and not torch.equal(on.opacity_logits, off.opacity_logits)
