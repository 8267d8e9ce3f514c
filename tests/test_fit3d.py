"FiT3D baseline: gradient separation, stage 1 and 2 learn, resume scene by scene, checkpoints, CLI errors, timm export."
import json
from pathlib import Path
import pytest
import torch
from safetensors.torch import load_file
from splat_and_distill.fit3d import (FeatureGaussians, render_feature_gaussians, rgb_loss, feature_loss, init_points,
    split_views, fit_scene, fit3d_config, validate_fit3d_config, render_targets, finetune, dino_finetune, stage2_batches, masked_l1, run_fit3d,
    save_scene_fit, load_scene_fit, like_train, FiT3DConfig, FIT3D_PRESETS, lift_metrics)
from splat_and_distill.fit3d_runs import (snd_fit3d, fit3d_vs_snd_table, side_by_side, teacher_agreement, load_results,
    fit3d_summary, stage1_table, FIT3D_ROWS)
from splat_and_distill.backbones import make_backbone, make_student
from splat_and_distill.scenes import make_scene
from splat_and_distill.scene_io import write_scene

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

def test_stage2_batches_are_epochs_with_flips(scene):
    "Every view once per epoch, in an order the seed fixes; a flipped image comes with its flipped targets and mask."
    n, images = 5, torch.arange(5.).view(5, 1, 1, 1).expand(5, 3, 2, 4).clone()
    images[..., 0] += 10                                                      # a left edge, so a flip shows
    targets, valid = images[:, :2].clone(), images[:, 0] > 10
    batches = list(stage2_batches(images, targets, valid, steps=5, batch_size=2, seed=3))
    ids = [int(x[0, 0, 0].min()) for b in batches for x in b[0].split(1)]
    assert len(batches) == 5 and sorted(ids[:n]) == list(range(n)) and sorted(ids[n:2 * n]) == list(range(n))
    flips = [bool(x[0, 0, 0, -1] > x[0, 0, 0, 0]) for b in batches for x in b[0].split(1)]
    assert 0 < sum(flips) < len(flips), 'about half the views are flipped'
    for x, t, m in batches:
        assert torch.equal(t, x[:, :2]) and torch.equal(m, x[:, 0] > 10), 'targets and mask follow their image'
    again = list(stage2_batches(images, targets, valid, steps=5, batch_size=2, seed=3))
    other = list(stage2_batches(images, targets, valid, steps=5, batch_size=2, seed=4))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(batches, other))
    assert all(not (x[:, :, :, -1] > x[:, :, :, 0]).any() for x, _, _ in stage2_batches(images, targets, valid, 5, 2, hflip=False))

def test_dino_stage2_trains_the_student_part_with_our_objective(scene, teacher):
    "ft_objective='dino': our loss and recipe on FiT3D's targets; the same trainable part moves, the frozen part and the exported backbone have no head."
    fg = _gaussians(scene, out_dim=teacher.dim)
    views = [0, 1, 3, 5, 7]
    targets, valid = render_targets(fg, scene, views, teacher.token_grid(32, 32))
    torch.manual_seed(0)
    student = make_student(teacher, 'last_stages')
    before, keys = {n: p.detach().clone() for n, p in student.named_parameters()}, set(student.state_dict())
    log = dino_finetune(student, scene.rgb[views], targets, valid, steps=16, batch_size=5, seed=0, progress=False, lr=3e-3, out_dim=256,
                        ema_every=0)
    assert len(log) == 16 and {'loss', 'agreement', 'teacher_mean_entropy', 'cosine'} <= set(log[0])
    agree = [r['agreement'] for r in log]                                 # the student's head learns to read the targets as the teacher's does
    assert sum(agree[-4:]) / 4 > sum(agree[:4]) / 4 + 0.1, agree
    moved = {n for n, p in student.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert moved and moved <= trainable, moved - trainable
    assert set(student.state_dict()) == keys and not hasattr(student, 'head')
    with pytest.raises(ValueError, match='no trainable parameters'):
        dino_finetune(make_backbone('efficientnet_lite0', pretrained=False).requires_grad_(False), scene.rgb[views], targets, valid, steps=1, progress=False)
    with pytest.raises(ValueError, match='ft_objective'): validate_fit3d_config(fit3d_config('tiny', ft_objective='cosine'))

def test_run_records_the_stage2_objective(tmp_path):
    "The two objectives share stage 1 bit for bit (same seed) and differ in stage 2; results say which ran."
    runs = {obj: run_fit3d(fit3d_config('tiny', **{**FAST, 'train_scenes': 1}, ft_objective=obj, out=str(tmp_path / obj)))['results']
            for obj in ('l1', 'dino')}
    assert [runs[o]['stage2']['objective'] for o in ('l1', 'dino')] == ['l1', 'dino']
    assert 'agreement' in runs['dino']['stage2']['last'] and 'agreement' not in runs['l1']['stage2']['last']
    fits = sorted((tmp_path / 'l1' / 'scenes').glob('*.safetensors'))
    assert len(fits) == 1
    a, b = (_tensors(tmp_path / o / 'scenes' / fits[0].name) for o in ('l1', 'dino'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (_tensors(tmp_path / o / 'student_timm.safetensors') for o in ('l1', 'dino'))
    assert sa.keys() == sb.keys() and not all(torch.equal(sa[k], sb[k]) for k in sa)

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

TIMING = {'fit_seconds', 'converged_seconds', 'fit_cpu_seconds', 'converged_cpu_seconds', 'lift_seconds_per_triplet',
          'lift_cpu_seconds_per_triplet', 'seconds', 'cpu_seconds', 'wall_s'}

def _untimed(x):
    "A results.json without its timing fields (and the run folder)."
    if isinstance(x, dict): return {k: _untimed(v) for k, v in x.items() if k not in TIMING | {'out'}}
    if isinstance(x, list): return [_untimed(v) for v in x]
    return x

def test_identical_runs_are_bit_identical(tmp_path):
    "Two identical runs give the same scene fits, student and results, bit for bit (timings aside), whatever the global RNG holds."
    for k, name in enumerate('ab'):           # a pretrained teacher: nothing in the run reseeds the global RNG
        torch.manual_seed(1000 + k)            # another global RNG state, as another process has
        run_fit3d(fit3d_config('tiny', **FAST, out=str(tmp_path / name)))
    a, b = tmp_path / 'a', tmp_path / 'b'
    files = sorted(p.relative_to(a) for p in a.rglob('*.safetensors'))
    assert len(files) == 3 and files == sorted(p.relative_to(b) for p in b.rglob('*.safetensors'))
    for f in files:
        ta, tb = _tensors(a / f), _tensors(b / f)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), f'{f}: {[k for k in ta if not torch.equal(ta[k], tb[k])]}'
    ra, rb = (_untimed(json.loads((p / 'results.json').read_text())) for p in (a, b))
    assert ra == rb and ra['scenes']['scene_0000001']['token_cos'] > 0

def test_exported_student_loads_for_the_probes(tmp_path, scene):
    from splat_and_distill.backbones import load_probe_backbone
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
           ['--resume', '--overwrite'], ['--set', 'ft_objective=cosine'], ['--seeds', '0', '--probe_set', 'eval_split=fresh'],
           ['--seeds', '0', '--probe_preset', 'tiny', '--probe_set', 'nope=1'], ['--seeds', '0', '--probe_preset', 'tiny', '--probe_set', 'epochs'],
           ['--seeds', '0', '--probe_preset', 'tiny', '--probe_set', 'eval_split=elsewhere']]
    for b in bad:
        with pytest.raises(SystemExit) as e: snd_fit3d(['--out', str(out), *b])
        assert e.value.code == 2, b
        assert 'snd_fit3d: error' in capsys.readouterr().err, b
    assert not out.exists(), 'nothing may be written before the config is known to be good'

def test_configs_and_train_alignment():
    "cpu_fit3d is the study's setting: like_train of the study's distillation run (ground-truth geometry) gives it exactly."
    from splat_and_distill.demo import demo_default, demo_train_config
    from splat_and_distill.lift import lift_scale
    run = demo_train_config(demo_default(), None, geometry='gt')
    cfg = like_train(run)
    assert cfg == fit3d_config('cpu_fit3d')
    assert (cfg.height, cfg.width, cfg.n_views, cfg.train_scenes, cfg.gap, cfg.policy) == (run.height, run.width, run.n_views,
                                                                                             run.train_scenes, run.gap, run.policy) == (128, 128, 24, 8, 8, 'auto')
    assert (cfg.ft_steps, cfg.ft_batch_size, cfg.lift_scale) == (run.steps, run.batch_size, run.render_scale) == (300, 4, 0.5)
    # a run that leaves render_scale to chapter 11's auto rule: the same rule decides FiT3D's lifting scale
    auto = demo_train_config(demo_default(), None, geometry='gt', render_scale=None, height=64, width=64)
    assert like_train(auto).lift_scale == lift_scale(auto, (64, 64), (4, 4)) == 0.25          # 4 x 4 pixels per token
    for name in FIT3D_PRESETS:
        if name != 'paper_fit3d': validate_fit3d_config(fit3d_config(name))

def test_lifting_at_a_smaller_scale_keeps_the_token_grid():
    "lift_metrics(scale=0.5): the teacher sees the full-size views, lifting and splatting run at half size, the targets land on the same grid."
    teacher = make_backbone('efficientnet_lite0').eval()
    scene = make_scene(2, n_views=12, size=64)
    trip = [(2, 6, 10)]
    full, half = lift_metrics(teacher, scene, trip, blend_alpha=1.0), lift_metrics(teacher, scene, trip, blend_alpha=1.0, scale=0.5)
    assert 0.6 < half['token_cos'] and abs(full['token_cos'] - half['token_cos']) < 0.1, (full, half)
    assert full['token_cos'] != half['token_cos'], 'scale must change where lifting runs'

def _probes(v):
    "Made-up probe results with one headline metric."
    return {'depth': {'d1': v}, 'consistency': {'gap': 0.3}}

def test_side_by_side_table_pairs_each_row_with_its_teacher():
    noise = {'0': 0.0, '1': 0.05, '2': -0.03}
    teacher = {s: _probes(0.5 + n) for s, n in noise.items()}
    fit3d = dict(teacher=teacher, runs={s: {'models': {'student': _probes(0.51 + n), 'student+teacher': _probes(0.52 + n)}} for s, n in noise.items()})
    study = dict(teacher={s: _probes(0.5 + n + (0.001 if s == '2' else 0)) for s, n in noise.items()},
                 runs={'default': {s: {'models': {'student': _probes(0.53 + n), 'student+teacher': _probes(0.54 + n)}} for s, n in noise.items()},
                       'gt_geometry': {s: {'models': {'student': _probes(0.55 + n)}} for s, n in noise.items() if s != '2'},
                       'no_blending': {s: {'models': {'student': _probes(0.9)}} for s in noise}})
    rows, h2h = side_by_side(fit3d, study)
    assert list(rows) == ['FiT3D student', 'FiT3D student + teacher', 'SnD student (default)', 'SnD student + teacher (default)',
                          'SnD student (gt_geometry)'], 'other variants stay out; gt_geometry has no concatenation'
    assert rows['SnD student (gt_geometry)']['depth.d1']['seeds'] == [0, 1] and rows['FiT3D student']['depth.d1']['seeds'] == [0, 1, 2]
    assert rows['SnD student (default)']['depth.d1']['delta'][0] == pytest.approx(0.03 - 0.001 / 3)   # paired with the study's own teacher
    assert h2h['SnD student (default) − FiT3D student']['depth.d1']['delta'] == pytest.approx((0.02, 0), abs=1e-9)
    assert h2h['SnD student + teacher (default) − FiT3D student + teacher']['depth.d1']['delta'][0] == pytest.approx(0.02)
    assert 'SnD student + teacher (gt_geometry) − FiT3D student + teacher' not in h2h
    assert teacher_agreement(fit3d['teacher'], study['teacher']) == pytest.approx(0.001 / 0.471)    # relative: seed 2's d1, 0.47 vs 0.471
    table = fit3d_vs_snd_table(fit3d, study)
    assert '| SnD student (gt_geometry) − FiT3D student | **+0.040 [0.040, 0.040]**' in table and 'largest relative headline difference 0.002' in table
    alone = fit3d_vs_snd_table(fit3d, None)
    assert 'SnD' not in alone.split('\n\n')[0] and 'await' in alone
    demo = dict(teacher=study['teacher'], runs=study['runs']['default'])           # a demo's results.json: one variant
    assert set(side_by_side(fit3d, demo)[0]) == {'FiT3D student', 'FiT3D student + teacher', 'SnD student (default)', 'SnD student + teacher (default)'}

def test_committed_study_is_complete_and_renders():
    "The committed study (nbs/results/fit3d/study.json, small form) has every seed's scenes and probes; its summary matches its own numbers; the chapter's tables render from it."
    study = load_results(Path(__file__).resolve().parents[1] / 'nbs' / 'results' / 'fit3d')
    assert study, 'nbs/results/fit3d/study.json is missing: copy the study.json of a finished `snd_fit3d --seeds 0 1 2 --probe_preset cpu_default` run there'
    seeds = sorted(study['runs'], key=int)
    assert len(seeds) >= 3 and seeds == sorted(study['teacher'], key=int), 'every seed is probed, the teacher included'
    for r in study['runs'].values():
        assert len(r['stage1']['scenes']) == study['config']['train_scenes'] and set(r['models']) == set(FIT3D_ROWS)
        assert set(r['stage1']['scenes'][0]['curve']) == {'step', 'cpu_seconds', 'token_cos'}
    again = fit3d_summary(study)
    for row in FIT3D_ROWS.values():
        for k, s in study['summary'][row].items():
            tol = 2e-4 * max(1., abs(s['teacher'][0]))              # the JSON keeps 5 significant digits of each metric
            assert again[row][k]['delta'] == pytest.approx(s['delta'], abs=tol) and again[row][k]['seeds'] == [int(x) for x in seeds]
    assert stage1_table(study).strip().count('\n') == 1 + len(seeds)
    table = fit3d_vs_snd_table(study, {})
    assert 'FiT3D student + teacher − teacher' in table and 'await' in table

def test_reconstructor_geometry_runs(tmp_path):
    "geometry='reconstructor': initial points from a (here untrained, tiny) reconstructor's depth, lifting from its Gaussians."
    from splat_and_distill.reconstruct import Reconstructor, tiny as recon_tiny, save_reconstructor
    save_reconstructor(tmp_path / 'recon', Reconstructor(recon_tiny(size=32)))
    res = run_fit3d(fit3d_config('tiny', **{**FAST, 'train_scenes': 1}, backbone='efficientnet_lite0:random', geometry='reconstructor',
                                 reconstructor=str(tmp_path / 'recon'), lift_scale=0.5, out=str(tmp_path / 'run')))   # the reconstructor at 16 px
    s = res['results']['scenes']['scene_0000000']
    assert s['lift_token_cos'] is not None and s['n_gaussians'] > 0 and res['results']['config']['geometry'] == 'reconstructor'

def test_study_protocol_seeds_and_resume(tmp_path, monkeypatch):
    "For seed k: runs with seed k, every model (teacher included) probed with probe seed k; paired summary; a rerun reuses everything."
    import splat_and_distill.fit3d_runs as f3
    calls = []
    def fake_probe(student_path, seed, protocol, data, backbone='efficientnet_lite0', weights=None):
        calls.append((str(student_path), seed, f3.probe_seeded(protocol, seed), backbone))
        return dict(teacher=_probes(0.5 + 0.1 * seed), models={'student': _probes(0.51 + 0.1 * seed), 'student+teacher': _probes(0.52 + 0.1 * seed)})
    monkeypatch.setattr(f3, 'probe_fit3d', fake_probe)
    monkeypatch.setattr(f3.P, 'probe_splits', lambda *a, **k: {'test set': True})
    cfg = fit3d_config('tiny', **{**FAST, 'train_scenes': 1, 'fit_steps': 3}, backbone='efficientnet_lite0:random', out=str(tmp_path))
    study = f3.fit3d_study(cfg, [0, 1], probe_preset='tiny', probe_overrides=dict(epochs=3))
    assert [c[1] for c in calls] == [0, 1] and [c[2].seed for c in calls] == [0, 1], 'seed k is probed with probe seed k'
    assert all(c[2].name == 'tiny' and c[2].epochs == 3 and c[3] == 'efficientnet_lite0:random' for c in calls)
    assert all(c[0].endswith(f'seed_{s}/student_timm.safetensors') for c, s in zip(calls, (0, 1)))
    assert json.loads((tmp_path / 'seed_1' / 'results.json').read_text())['config']['seed'] == 1
    assert set(study['teacher']) == set(study['runs']) == {'0', '1'} and 'stage1' in study['runs']['1']
    d = study['summary']['FiT3D student']['depth.d1']
    assert d['delta'] == pytest.approx((0.01, 0), abs=1e-9) and d['seeds'] == [0, 1]
    written = json.loads((tmp_path / 'study.json').read_text())
    assert written['summary']['FiT3D student']['depth.d1']['delta'] == pytest.approx([0.01, 0], abs=1e-6) and set(written['runs']) == {'0', '1'}
    with pytest.raises(FileExistsError): f3.fit3d_study(cfg, [0, 1], probe_preset='tiny', probe_overrides=dict(epochs=3))
    again = f3.fit3d_study(cfg, [0, 1], probe_preset='tiny', probe_overrides=dict(epochs=3), resume=True)
    assert len(calls) == 2 and f3._rounded(again['summary']) == f3._rounded(json.loads(json.dumps(study['summary'])))
    f3.fit3d_study(cfg, [0, 1], probe_preset='tiny', probe_overrides=dict(epochs=3), resume=True, reprobe=True)
    assert len(calls) == 4
    f3.fit3d_study(cfg, [0, 1], probe_preset='tiny', resume=True)                 # other probe options: probed again
    assert len(calls) == 6

def test_cli_probe_set_reaches_the_study(tmp_path, monkeypatch):
    "--probe_set KEY=VALUE (repeatable) becomes the study's typed probe overrides, with --set ft_objective=dino in the config."
    import splat_and_distill.fit3d_runs as f3
    seen = {}
    def fake_study(cfg, seeds, probe_preset, probe_overrides=None, **kw):
        seen.update(cfg=cfg, seeds=seeds, preset=probe_preset, overrides=probe_overrides)
        return {'runs': {}}
    monkeypatch.setattr(f3, 'fit3d_study', fake_study)
    monkeypatch.setattr(f3, 'stage1_table', lambda study: '')
    f3.snd_fit3d(['--out', str(tmp_path / 'o'), '--seeds', '0,1', '--probe_preset', 'tiny', '--probe_set', 'eval_split=fresh',
                  '--probe_set', 'epochs=3', '--set', 'ft_objective=dino'])
    assert seen['overrides'] == {'eval_split': 'fresh', 'epochs': 3} and seen['preset'] == 'tiny' and seen['seeds'] == (0, 1)
    assert seen['cfg'].ft_objective == 'dino'

def test_probe_fit3d_uses_the_probe_seed(tmp_path):
    "The teacher, the student and FiT3D's concatenation, probed with chapter 10b's seeded probe config: the seed moves the trained heads only."
    from splat_and_distill.fit3d_runs import probe_fit3d
    from splat_and_distill.evaluate import ProbeProtocol
    from splat_and_distill.probes import probe_splits, ProbeConfig
    from splat_and_distill.train import export_student
    import types
    torch.manual_seed(1)
    export_student(types.SimpleNamespace(backbone=make_backbone('efficientnet_lite0', pretrained=False)), tmp_path / 's.safetensors',
                   fit3d_config('tiny'))
    kw = dict(epochs=2, normals_epochs=2, real_image=False, n_train_scenes=1)
    protocol = ProbeProtocol('tiny', kw, progress=False)
    data = probe_splits(ProbeConfig(**{**dict(name='tiny', image_size=64, n_views=8, n_test_scenes=1), **kw}), progress=False)
    a, b = (probe_fit3d(tmp_path / 's.safetensors', s, protocol, data, 'efficientnet_lite0:random') for s in (0, 1))
    assert set(a['models']) == {'student', 'student+teacher'} and 'd1' in a['teacher']['depth']
    assert a['models']['student+teacher']['model']['dim'] == 2 * a['teacher']['model']['dim']
    assert json.dumps(a['teacher']['corr']) == json.dumps(b['teacher']['corr']), 'test pairs are fixed by pairs_seed, not by the probe seed'
    assert a['teacher']['depth'] != b['teacher']['depth'], 'the probe seed must change the trained probes'

def test_gradient_separation_option_is_wired(scene, teacher):
    "`gradient_separation=False` (the ablation) lets the feature loss move the geometry: the fits differ in geometry only through it."
    cfg = fit3d_config('tiny', height=32, width=32, max_gaussians=300, fit_steps=3, eval_every=3, progress=False)
    on = fit_scene(scene, teacher, cfg, progress=False)['model']
    off = fit_scene(scene, teacher, fit3d_config('tiny', **{**{k: getattr(cfg, k) for k in ('height', 'width', 'max_gaussians', 'fit_steps', 'eval_every', 'progress')}},
                                                 gradient_separation=False), progress=False)['model']
    assert not torch.equal(on.means, off.means) and not torch.equal(on.opacity_logits, off.opacity_logits)

def test_loss_matched_rows_pair_each_objective_by_seed():
    "Per objective: each method against its own teacher, and SnD − FiT3D over the seeds both have; the CPU ratio per shared seed."
    from splat_and_distill.fit3d_runs import loss_matched_rows, loss_matched_table, stage1_cpu_ratio
    seeds = ['0', '1', '2']
    teacher = {s: _probes(0.5 + 0.01 * int(s)) for s in seeds}
    fit = lambda off: dict(teacher=teacher, runs={s: {'models': {'student': _probes(0.5 + 0.01 * int(s) + off)},
                                                      'stage1': {'scenes': [{'fit_cpu_seconds': 10. * (1 + int(s))}] * 2}} for s in seeds})
    snd = lambda off, v, ss=seeds: dict(teacher=teacher, runs={v: {s: {'models': {'student': _probes(0.5 + 0.01 * int(s) + off)},
                                                                     'train': {'process_cpu_s': 4.}} for s in ss}})
    rows = loss_matched_rows({'dino': fit(0.03), 'l1': fit(-0.02)}, {'dino': (snd(0.05, 'default'), 'default'),
                                                                   'l1': (snd(0.01, 'l1_objective', ['0', '2']), 'l1_objective')})
    d = lambda name: rows[name]['depth.d1']
    assert d('FiT3D (dino) − teacher')['delta'][0] == pytest.approx(0.03) and d('SnD (dino) − teacher')['delta'][0] == pytest.approx(0.05)
    assert d('SnD − FiT3D (dino)')['delta'][0] == pytest.approx(0.02) and d('SnD − FiT3D (dino)')['seeds'] == [0, 1, 2]
    assert d('SnD − FiT3D (l1)')['delta'][0] == pytest.approx(0.03) and d('SnD − FiT3D (l1)')['seeds'] == [0, 2]
    table = loss_matched_table(rows)
    assert '| SnD − FiT3D (l1) | 2 |' in table and '| FiT3D (dino) − teacher | 3 |' in table
    assert stage1_cpu_ratio(fit(0), snd(0, 'default', ['1', '2'])) == pytest.approx({'1': 10., '2': 15.})
