"Lifting: mask-aware upsampling by hand, blending, token-grid downsampling, own-camera round trip, multi-view consistency."
import pytest
import torch
import torch.nn.functional as F
from splat_and_distill.backbones import make_backbone, tiny_vit
from splat_and_distill.gaussians import gaussians_from_depth
from splat_and_distill.cameras import unproject_depth
from splat_and_distill.lift import (mask_aware_upsample, semantic_blend, downsample_to_tokens, hole_mask, token_centre_pixels,
                                    lift_and_splat, lift_and_splat_details, lift_and_splat_batch, multiview_consistency,
                                    covisible_pixels, feature_cosine)


@pytest.fixture(scope='module')
def scene():
    from splat_and_distill.scenes import make_scene
    return make_scene(1, n_views=16, size=64)


def test_mask_aware_upsample_hand_example():
    tok = torch.tensor([[0., 10.], [20., 30.]])[None, None]
    lab = torch.tensor([[0, 0, 1, 1]] * 4)[None]
    up = mask_aware_upsample(tok, lab)[0, 0]
    assert torch.allclose(up, torch.tensor([[0., 0, 10, 10], [5, 5, 15, 15], [15, 15, 25, 25], [20, 20, 30, 30]]))
    plain = F.interpolate(tok, size=(4, 4), mode='bilinear', align_corners=False)[0, 0]
    assert plain[1, 1] == 7.5 and plain[1, 2] == 12.5
    lab[0, 2, 1] = 7  # no neighbour token has label 7: plain bilinear, not zero
    assert torch.isclose(mask_aware_upsample(tok, lab)[0, 0, 2, 1], torch.tensor(17.5))


def test_mask_aware_upsample_reduces_to_bilinear():
    t = torch.randn(2, 3, 5, 4)
    for lab in (torch.zeros(2, 40, 32, dtype=torch.long), -torch.ones(2, 40, 32, dtype=torch.long)):
        assert torch.allclose(mask_aware_upsample(t, lab), F.interpolate(t, size=(40, 32), mode='bilinear', align_corners=False), atol=1e-5)
    with pytest.raises(ValueError, match='labels must be'): mask_aware_upsample(t, torch.zeros(40, 32, dtype=torch.long))


def _mask_aware_upsample_loop(tokens, labels):
    "The first implementation (kept as the reference): four full-size gathered maps, each weighted and summed, then normalised."
    from splat_and_distill.lift import _bilinear_taps, sample_at_token_centres
    b, d, hp, wp = tokens.shape
    h, w = labels.shape[-2:]
    r0, r1, wr = _bilinear_taps(h, hp); c0, c1, wc = _bilinear_taps(w, wp)
    tl, flat = sample_at_token_centres(labels, hp, wp).flatten(1), tokens.flatten(2)
    out, bil, uniform = (torch.zeros(b, d, h, w, dtype=tokens.dtype) for _ in range(3))
    wsum, nmatch = torch.zeros(b, h, w, dtype=tokens.dtype), torch.zeros(b, h, w, dtype=tokens.dtype)
    for rows, cols, wgt in [(r0, c0, (1 - wr)[:, None] * (1 - wc)[None]), (r0, c1, (1 - wr)[:, None] * wc[None]),
                            (r1, c0, wr[:, None] * (1 - wc)[None]), (r1, c1, wr[:, None] * wc[None])]:
        idx = (rows[:, None] * wp + cols[None]).flatten()
        tok = flat[:, :, idx].view(b, d, h, w)
        match = (tl[:, idx].view(b, h, w) == labels).to(tokens.dtype)
        bil += wgt * tok; out += (wgt * match)[:, None] * tok; uniform += match[:, None] * tok
        wsum += wgt * match; nmatch += match
    res = torch.where((wsum > 1e-6)[:, None], out / wsum.clamp(min=1e-6)[:, None],
                      torch.where((nmatch > 0)[:, None], uniform / nmatch.clamp(min=1)[:, None], bil))
    return torch.where((labels >= 0)[:, None], res, bil)


@pytest.mark.parametrize('grid', [(8, 8), (5, 7), (16, 12)])     # the matrix path (<= 128 tokens) and the gather path
def test_mask_aware_upsample_equals_the_loop(grid):
    g = torch.Generator().manual_seed(0)
    hp, wp = grid
    tokens = torch.randn(3, 6, hp, wp, generator=g, requires_grad=True)
    labels = torch.randint(-1, 4, (3, 8 * hp, 4 * wp), generator=g)         # unknown labels, thin segments, no-match pixels
    labels[1] = 2                                                            # one segment everywhere: plain bilinear
    labels[2, ::3] = -1
    fast, ref = mask_aware_upsample(tokens, labels), _mask_aware_upsample_loop(tokens, labels)
    assert fast.shape == ref.shape and torch.allclose(fast, ref, atol=1e-6, rtol=1e-5)
    assert torch.allclose(fast[1], F.interpolate(tokens[1:2], size=labels.shape[-2:], mode='bilinear', align_corners=False)[0], atol=1e-5)
    gf, = torch.autograd.grad((fast * ref.detach()).sum(), tokens)
    gr, = torch.autograd.grad((ref * ref.detach()).sum(), tokens)
    assert torch.allclose(gf, gr, atol=1e-4, rtol=1e-5)


def test_mask_aware_weights_sum_to_one():
    from splat_and_distill.lift import mask_aware_weights
    labels = torch.randint(-1, 3, (2, 24, 20), generator=torch.Generator().manual_seed(1))
    idx, coef = mask_aware_weights(labels, 6, 5)
    assert idx.shape == (4, 24 * 20) and coef.shape == (2, 4, 24 * 20) and int(idx.max()) < 30
    assert torch.allclose(coef.sum(1), torch.ones(2, 24 * 20), atol=1e-6) and (coef >= 0).all()


def test_token_centres_and_holes():
    rows, cols = token_centre_pixels(4, 2, 64, 32)
    assert rows.tolist() == [8, 24, 40, 56] and cols.tolist() == [8, 24]
    alpha = torch.zeros(1, 64, 32); alpha[:, :32] = 1
    assert hole_mask(alpha, 4, 2).tolist() == [[[True, True], [True, True], [False, False], [False, False]]]
    x = torch.randn(1, 5, 64, 32)
    cov = alpha.bool()
    down = downsample_to_tokens(x * cov[:, None], cov, 4, 2)
    ref = downsample_to_tokens(x, torch.ones_like(cov), 4, 2)
    assert torch.allclose(down[..., 0, :], ref[..., 0, :], atol=1e-5)  # first token row: its footprint is fully covered


def test_semantic_blend():
    f = torch.tensor([1., 3., 10., 20.]).view(1, 1, 1, 4)
    l = torch.tensor([0, 0, 1, -1]).view(1, 1, 4)
    assert torch.allclose(semantic_blend(f, l, 0.5)[0, 0, 0], torch.tensor([1.5, 2.5, 10., 20.]))
    assert torch.allclose(semantic_blend(f, l, blend_alpha=0.)[0, 0, 0, :2], torch.tensor([2., 2.]))
    assert semantic_blend(f, l, 1.) is f and semantic_blend(f, l) is f          # the default: no blending


def test_own_camera_round_trip(scene):
    "One context view lifted with ground-truth depth and rendered into its own camera reproduces its upsampled features."
    teacher = make_backbone('efficientnet_lite0')
    cos = []
    for i in (0, 8):
        ctx = scene.select([i])
        res = lift_and_splat_details(teacher, ctx.rgb[None], ctx.instance[None], ctx.K[None], ctx.c2w[None], ctx.K, ctx.c2w,
                                     ctx.instance, context_depth=ctx.depth[None], blend_alpha=1.)
        assert res['covered'].float().mean() > 0.99
        cos.append(feature_cosine(res['rendered'][0], res['context_up'][0, 0], res['covered'][0]))
    assert min(cos) > 0.99, cos


def test_lift_and_splat_shapes_and_gaussians_interface(scene):
    teacher = tiny_vit()
    ctx, tgt = scene.select([2, 10]), scene.select([6])
    kw = dict(context_rgb=ctx.rgb[None], context_labels=ctx.instance[None], context_K=ctx.K[None], context_c2w=ctx.c2w[None],
              target_K=tgt.K, target_c2w=tgt.c2w, target_labels=tgt.instance)
    tok, valid = lift_and_splat(teacher, **kw, context_depth=ctx.depth[None], token_grid=(8, 8))
    assert tok.shape == (1, 64, 8, 8) and valid.shape == (1, 8, 8) and valid.dtype == torch.bool and valid.float().mean() > 0.8
    assert not tok.requires_grad
    g = gaussians_from_depth(ctx.depth[None], ctx.K[None], ctx.c2w[None], ctx.rgb[None])
    tok_g, valid_g = lift_and_splat(teacher, **kw, gaussians=g, token_grid=(8, 8))
    assert torch.allclose(tok, tok_g, atol=1e-5) and torch.equal(valid, valid_g)
    too_few = type(g)(*[t[:, :100] for t in g.tensors()])
    with pytest.raises(ValueError, match='pixel-aligned'): lift_and_splat(teacher, **kw, gaussians=too_few)
    with pytest.raises(ValueError, match='exactly one of'): lift_and_splat(teacher, **kw)


def test_multiview_consistency(scene):
    a, b = 0, 4
    geo = lambda i: (scene.depth[i], scene.K[i], scene.c2w[i])
    uv_a, uv_b = covisible_pixels(*geo(a), *geo(b))
    assert len(uv_a) > 0.3 * 64 * 64
    xyz = lambda i: unproject_depth(scene.depth[i], scene.K[i], scene.c2w[i]).permute(2, 0, 1) + 10
    assert multiview_consistency(xyz(a), xyz(b), *geo(a), *geo(b)) > 0.999
    rnd = multiview_consistency(torch.randn(8, 64, 64), torch.randn(8, 64, 64), *geo(a), *geo(b))
    assert abs(rnd) < 0.1
    # batched: mean over pairs; token-resolution maps are sampled bilinearly
    fa, fb = torch.stack([xyz(a), xyz(a)]), torch.stack([xyz(b), xyz(b)])
    st = lambda i: [torch.stack([t, t]) for t in geo(i)]
    assert multiview_consistency(fa, fb, *st(a), *st(b)) > 0.999
    low = F.interpolate(xyz(a)[None], size=(16, 16), mode='bilinear', antialias=True)[0]
    assert multiview_consistency(low, F.interpolate(xyz(b)[None], size=(16, 16), mode='bilinear', antialias=True)[0], *geo(a), *geo(b)) > 0.99


def test_lift_and_splat_batch():
    from torch.utils.data import DataLoader
    from splat_and_distill.scenes import make_scene, TripletDataset
    batch = next(iter(DataLoader(TripletDataset([make_scene(0, n_views=16, size=64)]), batch_size=2)))
    teacher = tiny_vit()
    tok, valid = lift_and_splat_batch(teacher, batch, blend_alpha=1.)
    assert tok.shape == (2, 64, 8, 8) and valid.shape == (2, 8, 8) and valid.any()
    assert torch.equal(lift_and_splat_batch(teacher, batch)[0], tok)                   # the default is no blending
    assert not torch.allclose(lift_and_splat_batch(teacher, batch, blend_alpha=0.5)[0], tok)   # and blend_alpha reaches the blend


def test_downscale_batch_for_lifting():
    "Lifting geometry (chapter 07): a batch resized to multiples of 4 with scaled intrinsics, labels kept as labels."
    from types import SimpleNamespace
    from splat_and_distill.lift import downscale_batch, lift_scale
    b = dict(target_rgb=torch.rand(1, 3, 64, 96), context_instance=torch.randint(0, 5, (1, 2, 64, 96)),
             context_K=torch.eye(3).expand(1, 2, 3, 3) * 50, target_K=torch.eye(3)[None] * 50)
    s = downscale_batch(b, 0.3)
    assert s['target_rgb'].shape[-2:] == (20, 28) and s['context_instance'].dtype == torch.int64
    assert set(s['context_instance'].unique().tolist()) <= set(b['context_instance'].unique().tolist())
    assert torch.allclose(s['context_K'][0, 0, 0, 0], torch.tensor(50 * 28 / 96)) and downscale_batch(b, 1) is b
    assert lift_scale(SimpleNamespace(render_scale=None), (64, 96), (4, 6)) == 0.25

def test_covisible_cosines_match_consistency_and_beat_chance():
    "The co-visible cosines average to `multiview_consistency`; shuffled pairs (chance) are less similar for a real teacher."
    from splat_and_distill.lift import covisible_cosines, multiview_consistency
    from splat_and_distill.backbones import make_backbone
    from splat_and_distill.scenes import make_scene
    s = make_scene(2, n_views=10, size=64)
    f = make_backbone('efficientnet_lite0').eval()(s.rgb[[0, 6]])
    args = (s.depth[0], s.K[0], s.c2w[0], s.depth[6], s.K[6], s.c2w[6])
    cos, chance = covisible_cosines(f[0], f[1], *args, generator=torch.Generator().manual_seed(0))
    assert len(cos) == len(chance) > 100
    assert torch.allclose(cos.mean(), multiview_consistency(f[0], f[1], *args), atol=1e-6)
    assert cos.mean() > chance.mean() + 0.1
