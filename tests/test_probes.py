"Sanity tests of the 3D-awareness probes (chapter 10): perfect predictions score perfectly, losses match hand computations, chance stays chance."
import math
import pytest
import torch
import torch.nn.functional as F
from fastcore import test as ft
import splat_and_distill.probes as P
from splat_and_distill.cameras import make_intrinsics, look_at, relative_rotation_deg
from splat_and_distill.probes import (probe_input, depth_bin_centers, depth_bin_weights, DepthProbe, sig_loss,
    normals_to_camera, NormalsProbe, angular_loss, normal_metrics, pooled_angular_stats, SegProbe, seg_loss,
    confusion_matrix, miou_from_confusion, IGNORE_INDEX, ratio_test_matches, correspondence_errors,
    correspondence_recall, grid_depth, match_scale_shift, probe_config, ProbeConfig, view_pairs, ProbeSplit)
from splat_and_distill.reconstruct import depth_metrics, average_metrics
from splat_and_distill.backbones import ConcatBackbone, spec_label
from splat_and_distill.probe_runs import results_table, compare_models


@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)


def test_ground_truth_scores_perfectly():
    gt = 0.5 + 5 * torch.rand(4, 20, 24); gt[0, :3] = 0; gt[1, 0, 0] = float('inf')
    m = average_metrics(depth_metrics(gt.clone(), gt))
    assert m['abs_rel'] == pytest.approx(0, abs=1e-7) and m['rmse'] == pytest.approx(0, abs=1e-6)
    assert (m['d1'], m['d2'], m['d3']) == (1., 1., 1.)
    n = F.normalize(torch.randn(3, 3, 10, 12), dim=1); n[0, :, :2] = 0
    per, errs = normal_metrics(n.clone(), n)
    a = {**average_metrics(per), **pooled_angular_stats(errs)}
    assert a['rmse'] < 1e-3 and a['mean_pooled'] < 1e-3 and a['median_pooled'] < 1e-3
    assert (a['pct_11'], a['pct_22'], a['pct_30']) == (100., 100., 100.)
    lab = torch.randint(0, 6, (3, 10, 12)); lab[0, 0] = IGNORE_INDEX
    assert miou_from_confusion(confusion_matrix(lab, lab, 9))['miou'] == 1.


def test_depth_metric_values():
    gt = torch.full((1, 4, 4), 2.)
    m = average_metrics(depth_metrics(gt * 1.5, gt))
    assert m['abs_rel'] == pytest.approx(0.5) and m['rmse'] == pytest.approx(1.0)
    assert (m['d1'], m['d2'], m['d3']) == (0., 1., 1.)
    gt = torch.zeros(2, 3, 3); gt[1] = 1.
    assert average_metrics(depth_metrics(gt + 1, gt))['valid_images'] == 1  # an image without valid pixels is skipped


def test_depth_head_bins_and_weighting():
    b = depth_bin_centers(256, 1e-3, 10.)
    assert len(b) == 256 and b[0].item() == pytest.approx(1e-3) and b[-1].item() == pytest.approx(10.)
    z = torch.randn(2, 256, 3, 3) * 3
    w = depth_bin_weights(z)
    want = (z.clamp(min=0) + 0.1) / (z.clamp(min=0) + 0.1).sum(1, keepdim=True)
    torch.testing.assert_close(w, want)
    head = DepthProbe(7, n_bins=256, min_depth=1e-3, max_depth=10.)
    x = torch.randn(2, 7, 3, 4)
    ref_scores = head.conv(F.interpolate(x, scale_factor=4, mode='bilinear', align_corners=False))  # paper order
    ref = (depth_bin_weights(ref_scores) * head.bins[None, :, None, None]).sum(1)
    torch.testing.assert_close(head(x), ref, atol=1e-5, rtol=1e-5)
    assert head(x).shape == (2, 12, 16) and head(x, (30, 40)).shape == (2, 30, 40)


def test_depth_head_one_product_equals_the_weighted_mean():
    "The head's depth (the bins' sums in one product with [bins; ones], the 0.1 added after) equals the written-out weighted mean, values and gradients."
    torch.manual_seed(0)
    head = DepthProbe(9, n_bins=64)
    x = torch.randn(3, 9, 5, 6, requires_grad=True)
    def reference(x):
        w = F.relu(head.scores(x)) + 0.1
        return (w * head.bins[None, :, None, None]).sum(1) / w.sum(1)
    out, ref = head(x), reference(x)
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=1e-6)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, head.conv.weight], g)
    want = torch.autograd.grad(ref, [x, head.conv.weight], g)
    for a, b in zip(got, want): torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert bool((out > head.bins[0]).all() and (out < head.bins[-1]).all())     # a weighted mean of the bin centres


@pytest.mark.parametrize('shape,size', [((2, 5, 8, 8), (32, 32)), ((3, 7, 9), (30, 40)), ((1, 2, 16, 12), (8, 6)), ((2, 1, 4, 6), (4, 6))])
def test_bilinear_resize_equals_interpolate(shape, size):
    "The probes' matrix form of bilinear resizing: F.interpolate's values and gradients (up, down, identity, any leading dims)."
    from splat_and_distill.probes import bilinear_resize
    x = torch.randn(*shape, requires_grad=True)
    x4 = x if x.ndim == 4 else x[:, None]
    ref = F.interpolate(x4, size=size, mode='bilinear', align_corners=False)
    ref = ref if x.ndim == 4 else ref[:, 0]
    out = bilinear_resize(x, size)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    g = torch.randn_like(ref)
    ga, = torch.autograd.grad((out * g).sum(), x); gb, = torch.autograd.grad((ref * g).sum(), x)
    torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-5)


def test_probe_head_shapes():
    tok, cls = torch.randn(2, 6, 3, 5), torch.randn(2, 6)
    assert probe_input(tok, cls).shape == (2, 12, 3, 5) and probe_input(tok).shape == tok.shape
    assert NormalsProbe(6)(tok, (12, 20)).shape == (2, 4, 12, 20)
    assert SegProbe(6, 9)(tok, (12, 20)).shape == (2, 9, 12, 20)
    assert DepthProbe(12)(probe_input(tok, cls)).shape == (2, 12, 20)


def test_losses_match_hand_computation():
    pred, gt = torch.tensor([[1., 2.], [4., 3.]]), torch.tensor([[2., 2.], [2., 0.]])
    g = [math.log(.5), 0., math.log(2.)]
    mean, mean2 = sum(g) / 3, sum(x * x for x in g) / 3
    assert sig_loss(pred, gt).item() == pytest.approx(math.sqrt(mean2 - 0.85 * mean ** 2), rel=1e-5)
    out = torch.zeros(1, 4, 1, 1); out[0, 0] = 1.; out[0, 3] = 0.5          # kappa = elu(0.5) + 1.01 = 1.51
    n = torch.tensor([0., 1., 0.]).view(1, 3, 1, 1)                           # 90 degrees away
    k, th = 1.51, math.acos(1e-4 * 0) if False else math.pi / 2
    want = math.log(1 + math.exp(-math.pi * k)) - math.log(1 + k * k) + k * th
    assert angular_loss(out, n).item() == pytest.approx(want, rel=1e-5)
    logits = torch.tensor([[1., 2., 0.5]]).view(1, 3, 1, 1)
    want = -(2. - math.log(math.exp(1) + math.exp(2) + math.exp(.5)))
    assert seg_loss(logits, torch.tensor([[[1]]])).item() == pytest.approx(want, rel=1e-6)
    assert miou_from_confusion(confusion_matrix(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]), 3))['miou'] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_normals_to_camera_frame():
    c2w = look_at(torch.tensor([0., 0., 1.]), torch.tensor([3., 0., 1.]))[None]   # looks along +x
    n = torch.tensor([-1., 0., 0.]).view(1, 3, 1, 1)                               # wall facing the camera
    torch.testing.assert_close(normals_to_camera(n, c2w)[0, :, 0, 0], torch.tensor([0., 0., -1.]), atol=1e-6, rtol=0)
    up = torch.tensor([0., 0., 1.]).view(1, 3, 1, 1)                               # world up = image up = camera -y
    torch.testing.assert_close(normals_to_camera(up, c2w)[0, :, 0, 0], torch.tensor([0., -1., 0.]), atol=1e-6, rtol=0)


def _cam(h=24, w=32): return make_intrinsics(30., 30., w / 2, h / 2), torch.eye(4)


def test_identical_features_identity_camera_recall_100():
    K, eye = _cam()
    depth, feat = 2 + torch.rand(24, 32), torch.randn(16, 24, 32)
    err = correspondence_errors(feat, feat, depth, depth, K, K, eye, eye, num_corr=300)
    assert len(err) == 300 and err.max() < 1e-3
    r = correspondence_recall([err], relative_rotation_deg(eye, eye)[None], grid_width=32)
    assert r['recall_5px'] == r['recall_10px'] == r['recall_20px'] == 100. and r['recall_10px_rot0-15'] == 100.


def test_random_features_near_chance():
    K, eye = _cam()
    depth = 2 + torch.rand(24, 32)
    errs = [correspondence_errors(torch.randn(16, 24, 32), torch.randn(16, 24, 32), depth, depth, K, K, eye, eye, 200) for _ in range(8)]
    r = correspondence_recall(errs, grid_width=32)
    chance20 = 100 * math.pi * (20 * 32 / 160) ** 2 / (24 * 32)
    assert r['recall_20px'] < 1.5 * chance20 and r['recall_5px'] < 5


def test_ratio_test_and_thresholds():
    f0 = F.normalize(torch.tensor([[1., 0.], [0., 1.]]), dim=-1)
    f1 = F.normalize(torch.tensor([[1., 0.1], [0., 1.], [1., 0.]]), dim=-1)
    i0, i1, w = ratio_test_matches(f0, f1, 2)
    assert set(zip(i0.tolist(), i1.tolist())) == {(0, 2), (1, 1)} and (w > 0.99).all()
    e = [torch.tensor([3., 7., 15., 30.])]
    r = correspondence_recall(e, grid_width=160)
    assert (r['recall_5px'], r['recall_10px'], r['recall_20px']) == (25., 50., 75.)
    assert correspondence_recall(e, grid_width=320)['recall_5px'] == 50.  # 10 px on a 320-px grid


def test_shifted_camera_recall():
    h, w = 24, 32
    K = make_intrinsics(30., 30., w / 2, h / 2)
    c0 = torch.eye(4); c1 = torch.eye(4); c1[0, 3] = 0.2                  # right camera, fronto-parallel plane at z=3
    depth = torch.full((h, w), 3.)
    shift = 30 * 0.2 / 3                                                   # 2 px disparity
    feat0 = torch.randn(8, h, w)
    feat1 = torch.roll(feat0, shifts=-2, dims=-1)                          # view 1 sees everything 2 px to the left
    err = correspondence_errors(feat0, feat1, depth, depth, K, K, c0, c1, num_corr=100)
    assert (err < 1e-3).float().mean() > 0.85   # the 2 columns that leave view 1 wrap around in `roll`: wrong by 32 px
    assert shift == 2.


def test_grid_depth_and_scale_shift():
    d = torch.arange(64.).reshape(8, 8) + 1
    K = make_intrinsics(8., 8., 4., 4.)
    g, Kg = grid_depth(d, K, 4)
    assert g.shape == (4, 4) and g[0, 0] == d[1, 1] and Kg[0, 0] == 4. and Kg[0, 2] == 2.
    gt = 1 + torch.rand(2, 5, 5)
    torch.testing.assert_close(match_scale_shift(3 * gt - 1, gt), gt, atol=1e-4, rtol=1e-4)


def test_concat_backbone():
    class Toy(torch.nn.Module):
        def __init__(self, d, s, cls): super().__init__(); self.dim, self.stride, self.cls, self.p = d, s, cls, torch.nn.Parameter(torch.zeros(1))
        def forward_features(self, x, pre_norm=False):
            b, _, h, w = x.shape
            return dict(tokens=torch.ones(b, self.dim, h // self.stride, w // self.stride), cls=torch.ones(b, self.dim) if self.cls else None)
    cb = ConcatBackbone([Toy(3, 4, True), Toy(5, 8, True)])
    out = cb.forward_features(torch.zeros(2, 3, 32, 32))
    assert cb.dim == 8 and out['tokens'].shape == (2, 8, 8, 8) and out['cls'].shape == (2, 8)
    assert ConcatBackbone([Toy(3, 4, True), Toy(5, 4, False)]).forward_features(torch.zeros(1, 3, 16, 16))['cls'] is None


def test_config_cli_helpers_and_table():
    assert probe_config('cpu_default').corr_matches(160, 120) == 1000
    with pytest.raises(ValueError, match='unknown probe preset'): probe_config('nope')
    from splat_and_distill.runs import parse_sets
    assert parse_sets(ProbeConfig, ['epochs=3', 'real_image=false', 'corr_gaps=[1,2]', 'name=x', 'corr_num=none']) == \
        dict(epochs=3, real_image=False, corr_gaps=(1, 2), name='x', corr_num=None)
    with pytest.raises(ValueError, match='expected true or false'): parse_sets(ProbeConfig, ['real_image=ture'])
    assert spec_label('efficientnet_lite0:runs/a/student.safetensors') == 'efficientnet_lite0:student'
    assert spec_label('a+b:random') == 'a+b:random'
    res = dict(config=dict(name='t'), date='d', models=dict(a=dict(depth=dict(abs_rel=0.1), seg=dict(miou=0.5)),
                                                               b=dict(depth=dict(abs_rel=0.2), seg=dict(miou=0.4))))
    table = results_table(res)
    assert '| a | 0.100 | 0.500 |' in table and 'depth AbsRel' in table and 'mIoU' in table
    assert compare_models(res, 'a', 'b') == {'depth.abs_rel': True, 'seg.miou': True}


def test_view_pairs_same_scene():
    n = 10
    split = ProbeSplit(*(torch.zeros(2 * n) for _ in range(6)), scene=torch.arange(2 * n) // n, view=torch.arange(2 * n) % n)
    p = view_pairs(split, gaps=(1, 3), per_gap=2, seed=0)
    assert p.shape == (8, 2)
    assert (split.scene[p[:, 0]] == split.scene[p[:, 1]]).all()
    assert set((p[:, 1] - p[:, 0]).tolist()) == {1, 3}


def test_load_probe_backbone_specs(tmp_path):
    from safetensors.torch import save_file
    from splat_and_distill.backbones import load_probe_backbone
    teacher, rand = load_probe_backbone('efficientnet_lite0'), load_probe_backbone('efficientnet_lite0:random')
    x = torch.rand(1, 3, 64, 64)
    assert not torch.allclose(teacher(x), rand(x))
    path = tmp_path/'student.safetensors'
    save_file({k: v.contiguous() for k, v in teacher.model.state_dict().items()}, str(path))   # a timm-loadable state dict
    student = load_probe_backbone(f'efficientnet_lite0:{path}')
    torch.testing.assert_close(student(x), teacher(x))
    torch.testing.assert_close(load_probe_backbone('efficientnet_lite0', weights=str(path))(x), teacher(x))
    both = load_probe_backbone(f'efficientnet_lite0+efficientnet_lite0:{path}')
    assert both.dim == 2 * teacher.dim and both(x).shape[1] == 2 * teacher.dim
    with pytest.raises(FileNotFoundError, match='not found'): load_probe_backbone('efficientnet_lite0:nope.safetensors')

def _gradient_loss_loop(pred, gt, eps=1e-3):
    "Pixel-by-pixel reference of the per-image multi-scale gradient loss."
    total = 0.
    for p, g in zip(pred, gt):
        loss = 0.
        for k in (1, 2, 4, 6):
            ps, gs = p[::k, ::k], g[::k, ::k]
            valid = gs > 0
            r = torch.where(valid, torch.log(ps + eps) - torch.log(gs + eps), torch.zeros_like(ps))
            acc = 0.
            h, w = r.shape
            for i in range(h):
                for j in range(w):
                    if i + 2 < h and valid[i, j] and valid[i + 2, j]: acc += abs(r[i, j] - r[i + 2, j])
                    if j + 2 < w and valid[i, j] and valid[i, j + 2]: acc += abs(r[i, j] - r[i, j + 2])
            loss += acc / max(int(valid.sum()), 1)
        total += loss
    return total / len(pred)

def test_gradient_loss_matches_pixel_loop():
    torch.manual_seed(0)
    gt = 0.5 + 4 * torch.rand(2, 13, 11); gt[0, 3:6, 2:9] = 0; gt[1, :, -2:] = 0
    pred = 0.5 + 4 * torch.rand(2, 13, 11)
    ft.test_close(P.gradient_loss(pred, gt), _gradient_loss_loop(pred, gt), eps=1e-5)
    ft.test_close(P.depth_loss(pred, gt, 0.), P.sig_loss(pred, gt))
    ft.test_close(P.depth_loss(pred, gt, 0.5), P.sig_loss(pred, gt) + 0.5 * P.gradient_loss(pred, gt))

def test_constant_normal_is_the_floor():
    cfg = P.probe_config('tiny')
    n = torch.zeros(4, 3, 8, 8); n[:, 2] = -1; n[:2, :, :2] = 0                 # all facing the camera, some unlabelled
    split = P.ProbeSplit(rgb=torch.rand(4, 3, 8, 8), depth=torch.ones(4, 8, 8), normals=n, semantic=torch.zeros(4, 8, 8, dtype=torch.long),
                         K=torch.eye(3).repeat(4, 1, 1), c2w=torch.eye(4).repeat(4, 1, 1), scene=torch.zeros(4), view=torch.arange(4))
    ft.test_close(P.constant_normal(split), torch.tensor([0., 0., -1.]))
    ft.test_close(P.evaluate_constant_normal(P.constant_normal(split), split)['rmse'], 0., eps=1e-3)
    ft.test_close(P.evaluate_constant_normal(torch.tensor([1., 0., 0.]), split)['rmse'], 90., eps=1e-3)

def test_probe_heads_are_seeded():
    "Two trainings of a probe from the same features give the same head (initial weights and batch order are seeded)."
    cfg = P.probe_config('tiny', epochs=2, normals_epochs=2)
    torch.manual_seed(1)
    feats = dict(tokens=torch.randn(6, 5, 4, 4), cls=None)
    split = P.ProbeSplit(rgb=torch.rand(6, 3, 16, 16), depth=1 + torch.rand(6, 16, 16), normals=F.normalize(torch.randn(6, 3, 16, 16), dim=1),
                         semantic=torch.randint(0, 3, (6, 16, 16)), K=torch.eye(3).repeat(6, 1, 1), c2w=torch.eye(4).repeat(6, 1, 1),
                         scene=torch.zeros(6), view=torch.arange(6))
    for train in (lambda: P.train_depth_probe(feats, split, cfg), lambda: P.train_normals_probe(feats, split, cfg),
                  lambda: P.train_seg_probe(feats, split, 3, cfg)):
        torch.manual_seed(123); a = train().state_dict()
        torch.manual_seed(456); b = train().state_dict()
        for k in a: ft.test_eq(torch.equal(a[k], b[k]), True)

def test_training_labels_keep_label_values():
    lab = torch.randint(-1, 5, (3, 16, 12))
    small = P.training_labels(lab, 0.25)
    ft.test_eq(small.shape, (3, 4, 3)); ft.test_eq(small.dtype, lab.dtype)
    assert set(small.unique().tolist()) <= set(lab.unique().tolist())
    ft.test_eq(small, lab[:, 2::4, 2::4])                                    # nearest-exact: the pixel at each block centre
    n = F.normalize(torch.randn(2, 3, 8, 8), dim=1)
    ft.test_close(P.training_labels(n, 0.5).norm(dim=1), torch.ones(2, 4, 4))  # still unit normals
    assert P.training_labels(lab, 1) is lab

def _same(a: dict, b: dict) -> bool:
    "Equal metric dicts, NaN equal to NaN."
    nan = lambda x, y: isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)
    same = lambda x, y: (isinstance(x, list) and isinstance(y, list) and len(x) == len(y) and all(nan(u, v) or u == v for u, v in zip(x, y))) \
        or nan(x, y) or x == y
    return a.keys() == b.keys() and all(_same(a[k], b[k]) if isinstance(a[k], dict) else same(a[k], b[k]) for k in a)


def _tiny_probe_cfg(**kw):
    return probe_config('tiny', **{**dict(n_views=6, n_train_scenes=1, n_test_scenes=1, epochs=2, real_image=False, corr_gaps=(1, 2)), **kw})


def test_feature_cache_keyed_by_weights_content(tmp_path):
    "Issue 11 item 4: replacing the weights file at the same path must not reuse the old model's cached features."
    from safetensors.torch import save_file
    from splat_and_distill.backbones import load_probe_backbone
    from splat_and_distill.probe_runs import probe_models
    path, cfg = tmp_path / 'student.safetensors', _tiny_probe_cfg()
    sd = lambda m: {k: v.contiguous() for k, v in m.model.state_dict().items()}
    save_file(sd(load_probe_backbone('efficientnet_lite0')), str(path))
    a = probe_models([f'efficientnet_lite0:{path}'], cfg, cache_dir=tmp_path / 'cache', progress=False)
    save_file(sd(load_probe_backbone('efficientnet_lite0:random')), str(path))     # same path, other model
    b = probe_models([f'efficientnet_lite0:{path}'], cfg, cache_dir=tmp_path / 'cache', progress=False)
    fresh = probe_models([f'efficientnet_lite0:{path}'], cfg, progress=False)       # no cache at all
    (la,), (lb,) = a['models'], b['models']
    assert _same(b['models'][lb]['corr'], fresh['models'][lb]['corr']), 'numbers of the old model were reused'
    assert not _same(a['models'][la]['corr'], b['models'][lb]['corr'])


def test_feature_cache_keyed_by_data_content(tmp_path):
    "Two data sets of the same size and count through one cache folder: each gets the features of its own images."
    from splat_and_distill.probe_runs import probe_models
    from splat_and_distill.probes import probe_splits, split_from_scenes
    from splat_and_distill.scenes import make_scene
    cfg = _tiny_probe_cfg()
    procedural = probe_splits(cfg, progress=False)
    mine = dict(procedural, **{s: split_from_scenes([make_scene(seed, n_views=cfg.n_views, size=cfg.image_size)])
                               for s, seed in (('train', 1001), ('test', 1002))})  # other scenes, same sizes and counts
    assert mine['test'].rgb.shape == procedural['test'].rgb.shape and not torch.equal(mine['test'].rgb, procedural['test'].rgb)
    run = lambda data, cache: probe_models(['efficientnet_lite0'], cfg, data=data, progress=False,
                                           **({'cache_dir': tmp_path / 'cache'} if cache else {}))['models']['efficientnet_lite0']
    a, b, fresh = run(procedural, True), run(mine, True), run(mine, False)
    for k in ('depth', 'normals', 'seg', 'corr', 'consistency'):
        assert _same(b[k], fresh[k]), f'{k}: the cached features of the other data set were reused'
    assert not _same(a['corr'], b['corr'])


def test_probe_runs_are_deterministic():
    "Issue 11 item 10: the same probe run twice gives identical numbers, whatever the global random state before it."
    from splat_and_distill.backbones import load_probe_backbone
    from splat_and_distill.probe_runs import probe_backbone
    from splat_and_distill.probes import probe_splits
    cfg = _tiny_probe_cfg()
    data, bb = probe_splits(cfg, progress=False), load_probe_backbone('efficientnet_lite0')
    torch.manual_seed(1); a = probe_backbone(bb, data, cfg, progress=False)
    torch.manual_seed(2); b = probe_backbone(bb, data, cfg, progress=False)
    for k in ('depth', 'normals', 'seg', 'corr', 'consistency', 'pose', 'smoothness'): assert _same(a[k], b[k]), (k, a[k], b[k])


def test_pair_memo_reuses_only_what_trains_nothing():
    "The demo probes its frozen teacher once per probe seed: the pair measures come from the memo, the trained probes do not."
    import dataclasses
    from splat_and_distill.backbones import load_probe_backbone
    from splat_and_distill.probe_runs import probe_backbone
    from splat_and_distill.probes import probe_splits
    cfg = _tiny_probe_cfg()
    data, bb = probe_splits(cfg, progress=False), load_probe_backbone('efficientnet_lite0')
    memo = {}
    a = probe_backbone(bb, data, cfg, progress=False, pair_memo=memo)
    other = dataclasses.replace(cfg, seed=cfg.seed + 1)
    b = probe_backbone(bb, data, other, progress=False, pair_memo=memo)
    fresh = probe_backbone(bb, data, other, progress=False)
    assert 'pair_measures_reused' in b['timing_s'] and 'pair_measures_reused' not in fresh['timing_s']
    for k in ('corr', 'consistency', 'pose', 'smoothness'): assert _same(b[k], fresh[k]) and _same(a[k], b[k]), k
    for k in ('depth', 'normals', 'seg'): assert _same(b[k], fresh[k]), k
    assert not _same(a['depth'], b['depth'])                                  # the probe seed still changes the trained probes
    moved = probe_backbone(bb, data, dataclasses.replace(other, pairs_seed=cfg.pairs_seed + 1), progress=False, pair_memo=memo)
    assert 'pair_measures_reused' not in moved['timing_s'] and not _same(moved['corr'], a['corr'])   # other pairs: measured again


# --- evaluation split (chapter 10) and the harder measures (chapter 10_probes_hard)

def test_eval_split_config_and_seeds():
    from splat_and_distill.scenes import scene_seeds
    from splat_and_distill.probes import validate_probe_config, probe_splits
    assert probe_config('cpu_default').eval_split == 'test' and scene_seeds('fresh', 2) == [3_000_000, 3_000_001]
    ranges = [set(scene_seeds(s, 100)) for s in ('train', 'val', 'test', 'fresh')]
    assert all(not a & b for i, a in enumerate(ranges) for b in ranges[i + 1:])
    for bad in ('train', 'Test', ''):
        with pytest.raises(ValueError, match=r"eval_split=.*expected one of \['val', 'test', 'fresh'\]"):
            validate_probe_config(probe_config('tiny', eval_split=bad))
    with pytest.raises(ValueError, match='eval_split'): probe_splits(probe_config('tiny', eval_split='train'), progress=False)
    d = probe_splits(probe_config('tiny', n_views=2, image_size=16, n_train_scenes=1, n_test_scenes=2, eval_split='val'), progress=False)
    assert d['train'].seeds == [0] and d['test'].seeds == [1_000_000, 1_000_001] and d['eval_split'] == 'val'


def test_split_key_includes_scene_seeds():
    import dataclasses
    from splat_and_distill.probe_runs import split_key
    from splat_and_distill.probes import split_from_scenes
    from splat_and_distill.scenes import make_scene
    sp, cfg = split_from_scenes([make_scene(3, n_views=2, size=16)]), probe_config('tiny')
    assert split_key(sp, cfg)['scene_seeds'] == [3]
    assert split_key(dataclasses.replace(sp, seeds=[3_000_003]), cfg) != split_key(sp, cfg)   # same images, other split


def test_correspondence_matches_positions():
    K, eye = _cam()
    depth, feat = 2 + torch.rand(24, 32), torch.randn(16, 24, 32)
    uv0, uv1, err = P.correspondence_matches(feat, feat, depth, depth, K, K, eye, eye, num_corr=50)
    assert uv0.shape == uv1.shape == (50, 2) and torch.allclose(uv0, uv1) and err.max() < 1e-3
    torch.testing.assert_close(err, correspondence_errors(feat, feat, depth, depth, K, K, eye, eye, num_corr=50))


def test_per_scene_means():
    v, s = torch.tensor([1., 3., 10., float('nan'), 4.]), torch.tensor([2, 2, 5, 5, 7])
    assert P.per_scene_means(v, s, torch.tensor([1., 3., 1., 1., 0.]))[:2] == [2.5, 10.]
    assert math.isnan(P.per_scene_means(v, s, torch.tensor([1., 3., 1., 1., 0.]))[2])       # zero weight: no value
    assert P.per_scene_means(v, s) == [2., 10., 4.]


def test_token_recall_by_hand():
    from splat_and_distill.hard_measures import token_recall, token_key
    assert (token_key(1.4), token_key(2.8), token_key(5.6)) == ('recall_1p4tok', 'recall_2p8tok', 'recall_5p6tok')
    r = token_recall([torch.tensor([0., 5., 15., 30., 100.]), torch.tensor([1., 200.])], torch.tensor([70., 20.]),
                     torch.tensor([0, 0]), token_px=8.)                      # 11.2, 22.4, 44.8 px
    assert r['recall_1p4tok'] == pytest.approx(300 / 7) and r['recall_5p6tok'] == pytest.approx(500 / 7)
    assert r['recall_2p8tok_rot60-90'] == pytest.approx(60.) and r['recall_2p8tok_rot15-30'] == pytest.approx(50.)
    assert (r['pairs_rot60-90'], r['pairs_rot0-15'], r['token_px']) == (1, 0, 8.) and math.isnan(r['recall_2p8tok_rot0-15'])
    assert r['per_scene']['recall_2p8tok'] == [pytest.approx(400 / 7)]       # one scene: pooled over its matches


def test_mrr_identical_shuffled_and_constant():
    from splat_and_distill.hard_measures import true_match_index, reciprocal_ranks
    K, eye = _cam()
    ia, ib = true_match_index(torch.full((24, 32), 2.), K, eye, torch.full((24, 32), 2.), K, eye)
    assert torch.equal(ia, ib) and len(ia) == 24 * 32
    f = F.normalize(torch.randn(24 * 32, 32), dim=1)
    assert reciprocal_ranks(f @ f.T, ib).mean() == 1.
    chance = sum(1 / r for r in range(1, 24 * 32 + 1)) / (24 * 32)
    shuffled = torch.stack([reciprocal_ranks(f @ f[torch.randperm(24 * 32)].T, ib).mean() for _ in range(5)]).mean()
    assert 0.3 * chance < shuffled < 2 * chance
    torch.testing.assert_close(reciprocal_ranks(torch.zeros(3, 9), torch.tensor([0, 4, 8])), torch.full((3,), 0.2))   # ties: average rank 5


def test_true_match_follows_the_camera():
    from splat_and_distill.hard_measures import true_match_index
    K = make_intrinsics(30., 30., 16., 12.)
    c1 = torch.eye(4); c1[0, 3] = 0.2                                         # 2 px disparity on a plane at z = 3
    ia, ib = true_match_index(torch.full((24, 32), 3.), K, torch.eye(4), torch.full((24, 32), 3.), K, c1)
    assert ((ia - ib) == 2).all() and len(ia) == 24 * 30                        # view 1 sees each point 2 px to the left


def test_hard_negative_margin_falls_with_blur():
    from splat_and_distill.hard_measures import true_match_index, hard_negative_margin, ring_offsets
    off = ring_offsets(4., 8.).float().norm(dim=1)
    assert off.min() >= 4 and off.max() <= 8
    K, eye = _cam()
    _, ib = true_match_index(torch.full((24, 32), 2.), K, eye, torch.full((24, 32), 2.), K, eye)
    sharp, m = torch.randn(64, 24, 32), {}
    for k in (1, 9, 15):
        f = F.normalize(F.avg_pool2d(sharp[None], k, 1, k // 2, count_include_pad=False)[0].flatten(1).T, dim=1)
        m[k] = float(hard_negative_margin(f @ f.T, ib, (24, 32), token_px=4.).nanmean())
    assert m[1] > 0.5 and m[15] < m[9] < m[1]
    # a ring wholly outside the image gives NaN, not a number
    assert torch.isnan(hard_negative_margin(torch.rand(1, 4), torch.tensor([0]), (2, 2), token_px=10.)).all()


def test_smoothness_and_centring():
    from splat_and_distill.hard_measures import neighbour_smoothness, centre_features
    t = torch.randn(3, 16, 8, 8)
    blurred = F.avg_pool2d(t, 3, stride=1, padding=1, count_include_pad=False)
    assert (neighbour_smoothness(blurred) > neighbour_smoothness(t) + 0.2).all()
    torch.testing.assert_close(neighbour_smoothness(torch.ones(2, 4, 3, 3)), torch.ones(2))
    c = centre_features(dict(tokens=t + torch.randn(1, 16, 1, 1) * 5, cls=torch.ones(3, 16)))
    torch.testing.assert_close(c['tokens'], centre_features(dict(tokens=t, cls=None))['tokens'], atol=1e-5, rtol=1e-5)
    assert c['cls'] is None and c['tokens'].mean((2, 3)).abs().max() < 1e-5


def test_relative_pose_exact_and_auc():
    import numpy as np
    from splat_and_distill.hard_measures import estimate_relative_pose, pose_error_deg, relative_pose_gt, pose_auc
    from splat_and_distill.cameras import project_points
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(150, 3, generator=g) * 2 + torch.tensor([-1., -1., 3.])
    c1 = look_at(torch.tensor([0.5, 0.1, 0.]), torch.tensor([0., 0., 4.]), up=(0., -1., 0.))   # rotated and translated
    K = make_intrinsics(60., 60., 32., 32.)
    uv0, uv1 = project_points(pts, K, torch.eye(4))[0].numpy(), project_points(pts, K, c1)[0].numpy()
    R_gt, t_gt = relative_pose_gt(torch.eye(4), c1)
    assert pose_error_deg(R_gt, 3 * t_gt, R_gt, t_gt) < 1e-5 and pose_error_deg(R_gt, -t_gt, R_gt, t_gt) < 1e-5   # scale and sign free
    pose = estimate_relative_pose(uv0, uv1, K.numpy(), K.numpy())
    assert pose_error_deg(*pose, R_gt, t_gt) < 0.1
    assert estimate_relative_pose(uv0[:4], uv1[:4], K.numpy(), K.numpy()) is None
    a = pose_auc([1., 3., math.inf], (5, 10))
    assert a['auc_5'] == pytest.approx(50.) and a['auc_10'] == pytest.approx(100 * (1 / 6 + 1 + (2 / 3) * 7) / 10)
    assert math.isnan(pose_auc([])['auc_5']) and pose_auc([0.] * 3)['auc_20'] == pytest.approx(100.)
    assert np.isfinite(pose_error_deg(*pose, R_gt, t_gt))


def test_probe_backbone_reports_the_harder_measures():
    from splat_and_distill.backbones import load_probe_backbone
    from splat_and_distill.probe_runs import probe_backbone, flatten_metrics
    from splat_and_distill.probes import probe_splits
    cfg = _tiny_probe_cfg(n_test_scenes=2, eval_split='fresh')
    data = probe_splits(cfg, progress=False)
    r = probe_backbone(load_probe_backbone('efficientnet_lite0'), data, cfg, progress=False)
    flat = flatten_metrics(r)
    for k in ('corr.recall_10px', 'corr.recall_2p8tok', 'corr.recall_2p8tok_rot0-15', 'corr.pairs_rot60-90', 'corr.mrr',
              'corr.hard_margin', 'consistency.gap', 'consistency.gap_centred', 'smoothness.cos_neighbour', 'pose.auc_10'):
        assert k in flat, k
    assert r['eval_scenes'] == dict(split='fresh', seeds=[3_000_000, 3_000_001])
    for group, names in (('corr', ('recall_5px', 'recall_2p8tok', 'mrr', 'hard_margin')), ('consistency', ('gap', 'cos_match', 'gap_centred')),
                         ('smoothness', ('cos_neighbour',)), ('pose', ('auc_10',))):
        for n in names: assert len(r[group]['per_scene'][n]) == 2, (group, n)
    assert 0 < flat['corr.mrr'] <= 1 and 0 <= flat['pose.auc_20'] <= 100 and 'per_scene' not in ''.join(flat)


@pytest.mark.parametrize('tokens,hw', [((7, 5), (37, 50)), ((8, 8), (64, 64)), ((1, 4), (6, 9))])
def test_grid_cosines_are_the_sampled_features_cosines(tokens, hw):
    g = torch.Generator().manual_seed(1)
    t0, t1 = torch.randn(2, 24, *tokens, generator=g).unbind(0)
    uv = P.pixel_centers(*hw).reshape(-1, 2)
    q = uv[torch.randperm(len(uv), generator=g)[:40]]                          # queries anywhere on the grid
    f0 = P.sample_features(t0, q, hw)
    direct = f0 @ P.sample_features(t1, uv, hw).T                               # (40, h*w), pixels row-major
    torch.testing.assert_close(P.grid_cosines(f0, t1, hw), direct, atol=2e-6, rtol=0)
    torch.testing.assert_close(P.grid_cosines(f0, t1.half(), hw), f0 @ P.sample_features(t1.half(), uv, hw).T, atol=2e-6, rtol=0)


def test_ratio_test_grid_is_the_direct_ratio_test():
    g = torch.Generator().manual_seed(2)
    hw, (t0, t1) = (30, 44), torch.randn(2, 16, 6, 9, generator=g).unbind(0)
    uv = P.pixel_centers(*hw).reshape(-1, 2)
    valid1 = torch.rand(hw, generator=g) > 0.4
    f0 = P.sample_features(t0, uv, hw)
    a = ratio_test_matches(f0, P.sample_features(t1, uv[valid1.flatten()], hw), 200)
    b = P.ratio_test_grid(f0, t1, valid1, 200, chunk=37)                         # chunks that do not divide the queries
    pix = valid1.flatten().nonzero()[:, 0]                                      # the direct test indexes valid pixels only
    same = set(zip(a[0].tolist(), pix[a[1]].tolist())) & set(zip(b[0].tolist(), b[1].tolist()))
    assert len(same) >= 198                                                     # only rounding near-ties may differ
    torch.testing.assert_close(b[2], a[2], atol=1e-4, rtol=0)
    assert bool(valid1.flatten()[b[1]].all())                                   # never a pixel without depth
    two = torch.zeros(hw, dtype=torch.bool); two[3, 4] = two[20, 40] = True      # the fewest valid pixels it accepts
    i0, i1, w = P.ratio_test_grid(f0, t1, two, 10)
    assert set(i1.tolist()) <= {3 * 44 + 4, 20 * 44 + 40} and len(i0) == 10 and bool((w >= 0).all())


def test_correspondence_matches_grid_pixels_on_a_non_square_grid():
    K, eye = _cam()
    depth, feat = 2 + torch.rand(24, 32), torch.randn(16, 6, 8)
    depth[:, :5] = 0                                                            # no depth there: never matched into
    uv0, uv1, err = P.correspondence_matches(feat, feat, depth, depth, K, K, eye, eye, num_corr=60)
    assert bool((uv1[:, 0] > 5).all()) and bool((uv0[:, 0] > 5).all())
    assert (err < 1.5).float().mean() > 0.5                                     # same view: most matches land home
