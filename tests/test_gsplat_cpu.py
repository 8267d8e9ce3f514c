"""gsplat 1.5.3's real Python path on the CPU: `gsplat.rasterization` runs unchanged (argument handling, channel padding
and chunks, backgrounds, expected depth, its autograd Functions) with its compiled ops, reached through
`gsplat.cuda._wrapper._make_lazy_cuda_func`, replaced by PyTorch transcriptions of its CUDA kernels; `render(backend=
'gsplat')` is held to `render(backend='torch')`. The transcriptions follow gsplat's sources
(`cuda/csrc/ProjectionEWA3DGSFused.cu`, `IntersectTile.cu`, `RasterizeToPixels3DGSFwd.cu` / `Bwd.cu`) and reuse its
PyTorch references (`cuda/_torch_impl.py`) where those agree with the kernels; the backward ops are autograd of the
forward transcriptions, and the backward rasteriser refuses, as the kernel does, a pass whose shared memory exceeds the
block's limit (an H100's here)."""
import math
import sys
import types
import warnings
import pytest
import torch
import torch.nn.functional as F
from splat_and_distill.cameras import intrinsics_from_fov, look_at
from splat_and_distill.gaussians import Gaussians
from splat_and_distill import render as R
from splat_and_distill.render import render, gsplat_channel_chunk

gw = pytest.importorskip('gsplat.cuda._wrapper')
gref = pytest.importorskip('gsplat.cuda._torch_impl')

H100_SMEM = 232_448                     # cudaDevAttrMaxSharedMemoryPerBlockOptin on an H100
KERNEL_CHANNELS = (1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 33, 64, 65, 128, 129, 256, 257, 512, 513)   # gsplat's compiled CDIMs
ALPHA_THRESHOLD, T_STOP, ALPHA_CLAMP = 1 / 255, 1e-4, 0.999


# ---------------------------------------------------------------- stand-ins for the compiled ops
def _project_diff(means, quats, scales, viewmats, Ks, width, height, eps2d, keep=None):
    "Differentiable part of the fused projection kernel: (means2d, depths, conics, blurred cov2d, det)."
    covars = gref._quat_scale_to_covar_preci(quats, scales, compute_preci=False)[0]
    means_c, covars_c = gref._world_to_cam(means, covars, viewmats)
    if keep is not None:                  # culled ones get a harmless depth, so their (unused) gradients stay finite
        means_c = torch.where(keep[..., None], means_c, torch.tensor([0., 0., 1.], dtype=means_c.dtype))
    means2d, cov2d = gref._persp_proj(means_c, covars_c, Ks, width, height)
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype)
    det = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    dets = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([cov2d[..., 1, 1] / dets, -cov2d[..., 0, 1] / dets, cov2d[..., 0, 0] / dets], -1)
    return means2d, means_c[..., 2], conics, cov2d, det


def projection_fwd(means, covars, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
                   radius_clip, calc_compensations, camera_model):
    "`projection_ewa_3dgs_fused_fwd`: the kernel's culling (near <= z <= far, inclusive, in float32), opacity-aware radius."
    assert covars is None and camera_model == 'CameraModelType.PINHOLE' and not calc_compensations
    z = gref._world_to_cam(means, torch.zeros(*means.shape, 3), viewmats)[0][..., 2]
    in_range = ~((z < near_plane) | (z > far_plane))
    means2d, _, conics, cov2d, det = _project_diff(means, quats, scales, viewmats, Ks, width, height, eps2d, in_range)
    extend = torch.full_like(z, 3.33)
    valid = in_range & (det > 0)
    if opacities is not None:
        o = opacities[..., None, :].expand_as(z)
        valid &= o >= ALPHA_THRESHOLD
        extend = torch.minimum(extend, torch.sqrt(2 * torch.log(o.clamp(min=ALPHA_THRESHOLD) / ALPHA_THRESHOLD)))
    rx, ry = torch.ceil(extend * cov2d[..., 0, 0].sqrt()), torch.ceil(extend * cov2d[..., 1, 1].sqrt())
    valid &= ~((rx <= radius_clip) & (ry <= radius_clip))
    valid &= ~((means2d[..., 0] + rx <= 0) | (means2d[..., 0] - rx >= width) | (means2d[..., 1] + ry <= 0) | (means2d[..., 1] - ry >= height))
    radii = torch.where(valid[..., None], torch.stack([rx, ry], -1), 0).int()
    return radii, means2d.detach(), z, conics.detach(), None


def projection_bwd(means, covars, quats, scales, viewmats, Ks, width, height, eps2d, camera_model, radii, conics,
                   compensations, v_means2d, v_depths, v_conics, v_compensations, viewmats_requires_grad):
    "`projection_ewa_3dgs_fused_bwd`: autograd of the transcription; culled Gaussians get no gradient, as in the kernel."
    ins = [t.detach().requires_grad_() for t in (means, quats, scales, viewmats)]
    keep = (radii > 0).all(-1)
    with torch.enable_grad():
        m2, z, con, _, _ = _project_diff(*ins, Ks, width, height, eps2d, keep)
        k = keep.to(m2.dtype)
        g = torch.autograd.grad((m2, z, con), ins, (v_means2d * k[..., None], v_depths * k, v_conics * k[..., None]), allow_unused=True)
    g = [torch.zeros_like(t) if gi is None else gi for gi, t in zip(g, ins)]
    return g[0], None, g[1], g[2], g[3] if viewmats_requires_grad else None


def intersect_tile(means2d, radii, depths, image_ids, gaussian_ids, I, tile_size, tile_width, tile_height, sort, segmented):
    assert image_ids is None and gaussian_ids is None and sort
    return gref._isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height)


def intersect_offset(isect_ids, I, tile_width, tile_height):
    return gref._isect_offset_encode(isect_ids, I, tile_width, tile_height)


def _composite(means2d, conics, colors, opacities, backgrounds, width, height, tile_size, isect_offsets, flatten_ids):
    "`rasterize_to_pixels_3dgs_fwd` per tile: depth-sorted front to back, 1/255 skip, 0.999 clamp, stop when T <= 1e-4."
    dims, N, D = means2d.shape[:-2], means2d.shape[-2], colors.shape[-1]
    I = math.prod(dims)
    m2, con, col, op = means2d.reshape(I * N, 2), conics.reshape(I * N, 3), colors.reshape(I * N, D), opacities.reshape(I * N)
    th, tw = isect_offsets.shape[-2:]
    offs = torch.cat([isect_offsets.reshape(-1).long(), torch.tensor([len(flatten_ids)])])
    rows = []
    for i in range(I):
        img = torch.zeros(height, width, D + 1, dtype=colors.dtype)
        tiles = []
        for ty in range(th):
            for tx in range(tw):
                t = (i * th + ty) * tw + tx
                ids = flatten_ids[offs[t]:offs[t + 1]].long()
                ys = torch.arange(ty * tile_size, min((ty + 1) * tile_size, height))
                xs = torch.arange(tx * tile_size, min((tx + 1) * tile_size, width))
                py, px = torch.meshgrid(ys.to(m2.dtype) + 0.5, xs.to(m2.dtype) + 0.5, indexing='ij')
                dx, dy = m2[ids, 0] - px.reshape(-1, 1), m2[ids, 1] - py.reshape(-1, 1)        # (pixels, m)
                sigma = 0.5 * (con[ids, 0] * dx * dx + con[ids, 2] * dy * dy) + con[ids, 1] * dx * dy
                alpha = (op[ids] * torch.exp(-sigma)).clamp(max=ALPHA_CLAMP)
                alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, torch.zeros_like(alpha))
                with torch.no_grad(): keep = torch.cumprod(1 - alpha, -1) > T_STOP
                a = alpha * keep
                T = torch.cumprod(torch.cat([a.new_ones(len(a), 1), 1 - a], -1), -1)
                out = (a * T[:, :-1]) @ col[ids]
                if backgrounds is not None: out = out + T[:, -1:] * backgrounds.reshape(I, D)[i]
                tiles.append((ys, xs, torch.cat([out, 1 - T[:, -1:]], -1).reshape(len(ys), len(xs), D + 1)))
        for ys, xs, v in tiles: img = img.index_put((ys[:, None], xs[None, :]), v)
        rows.append(img)
    out = torch.stack(rows).reshape(*dims, height, width, D + 1)
    return out[..., :D], out[..., D:]


def rasterize_fwd(means2d, conics, colors, opacities, backgrounds, masks, width, height, tile_size, isect_offsets, flatten_ids):
    assert masks is None and colors.shape[-1] in KERNEL_CHANNELS, colors.shape
    c, a = _composite(means2d, conics, colors, opacities, backgrounds, width, height, tile_size, isect_offsets, flatten_ids)
    return c, a, torch.zeros(a.shape[:-1], dtype=torch.int32)


def rasterize_bwd(means2d, conics, colors, opacities, backgrounds, masks, width, height, tile_size, isect_offsets, flatten_ids,
                  render_alphas, last_ids, v_render_colors, v_render_alphas, absgrad):
    "`rasterize_to_pixels_3dgs_bwd`: the kernel's shared-memory request and limit, then autograd of the forward transcription."
    cdim = colors.shape[-1]
    assert cdim in KERNEL_CHANNELS, cdim
    shmem = tile_size * tile_size * (4 + 12 + 12 + 4 * cdim)   # int32 id, vec3, vec3 and CDIM floats per thread
    if shmem > H100_SMEM: raise RuntimeError(f'Failed to set maximum shared memory size (requested {shmem} bytes)')
    ins = [t.detach().requires_grad_() for t in (means2d, conics, colors, opacities)]
    with torch.enable_grad():
        c, a = _composite(*ins, backgrounds, width, height, tile_size, isect_offsets, flatten_ids)
        g = torch.autograd.grad((c, a), ins, (v_render_colors, v_render_alphas), allow_unused=True)
    g = [torch.zeros_like(t) if gi is None else gi for gi, t in zip(g, ins)]
    return None, *g


OPS = dict(projection_ewa_3dgs_fused_fwd=projection_fwd, projection_ewa_3dgs_fused_bwd=projection_bwd,
           intersect_tile=intersect_tile, intersect_offset=intersect_offset,
           rasterize_to_pixels_3dgs_fwd=rasterize_fwd, rasterize_to_pixels_3dgs_bwd=rasterize_bwd)


@pytest.fixture
def cpu_gsplat(monkeypatch):
    "gsplat's compiled ops replaced by the stand-ins; `render`'s CUDA-device check bypassed; an H100's shared memory."
    calls = []
    def lazy(name):
        if name not in OPS: raise NotImplementedError(f'no CPU stand-in for gsplat op {name}')
        def op(*a, **k):
            calls.append(name)
            return OPS[name](*a, **k)
        return op
    monkeypatch.setattr(gw, '_make_lazy_cuda_func', lazy)
    monkeypatch.setattr(gw, '_make_lazy_cuda_obj', lambda name: name)
    monkeypatch.setattr(R, '_require_cuda', lambda g: None)
    monkeypatch.setattr(R, '_smem_optin', lambda device: H100_SMEM)
    return calls


# ---------------------------------------------------------------- scenes
def scene(d, n=60, seed=0, w=20, h=14):
    "Random Gaussians in front of two cameras (one Gaussian exactly at camera 0's near plane), features in [0, 1)."
    g = torch.Generator().manual_seed(seed)
    c2w = torch.stack([look_at(torch.tensor([0., -2.5, 0.3]), torch.zeros(3)), look_at(torch.tensor([1.8, 1.8, 0.5]), torch.zeros(3))])
    means = (torch.rand(n, 3, generator=g) - 0.5) * 2
    quats = F.normalize(torch.randn(n, 4, generator=g), dim=-1)
    scales = torch.rand(n, 3, generator=g) * 0.2 + 0.05
    G = Gaussians(means, quats, scales, torch.rand(n, generator=g) * 0.9 + 0.05, torch.rand(n, d, generator=g))
    return G, c2w, intrinsics_from_fov(70, w, h).expand(2, 3, 3)


def near_plane_scene(d=3):
    "One big opaque Gaussian exactly at the near plane (z = 0.5 in float32) of an identity camera, one behind it at z = 2."
    means = torch.tensor([[0., 0., 0.5], [0., 0., 2.]])
    G = Gaussians(means, torch.tensor([[1., 0., 0., 0.]] * 2), torch.tensor([[0.02] * 3, [0.5] * 3]), torch.tensor([0.9, 0.9]),
                  torch.stack([torch.ones(d), torch.zeros(d)]))
    return G, torch.eye(4)[None], torch.tensor([[[16., 0., 8.], [0., 16., 8.], [0., 0., 1.]]])


def both(G, c2w, K, w, h, **kw):
    return render(G, c2w, K, w, h, backend='gsplat', **kw), render(G, c2w, K, w, h, backend='torch', **kw)


def assert_match(rg, rt, tol=1e-5):
    for k in ('features', 'alpha', 'depth'):
        assert rg[k].dtype == rt[k].dtype and rg[k].shape == rt[k].shape, (k, rg[k].dtype, rt[k].dtype, rg[k].shape, rt[k].shape)
        torch.testing.assert_close(rg[k], rt[k], rtol=tol, atol=tol * (10 if k == 'depth' else 1), msg=k)


# ---------------------------------------------------------------- forward
@pytest.mark.parametrize('d', [1, 3, 33, 128, 384, 600])
@pytest.mark.parametrize('bg', [None, 'd', 'bcd'])
def test_gsplat_forward_matches_torch(cpu_gsplat, d, bg):
    G, c2w, K = scene(d)
    background = {None: None, 'd': torch.rand(d), 'bcd': torch.rand(2, d)}[bg]   # [c, d] is [*b, c, d] unbatched
    with torch.no_grad(): rg, rt = both(G, c2w, K, 20, 14, background=background)
    assert 'rasterize_to_pixels_3dgs_fwd' in cpu_gsplat
    assert rt['alpha'].max() > 0.5
    assert_match(rg, rt)


@pytest.mark.parametrize('d', [3, 384])
def test_gsplat_batched_and_list_match_torch(cpu_gsplat, d):
    (G0, c2w, K), G1 = scene(d), scene(d, seed=1)[0]
    G2 = scene(d, n=45, seed=2)[0]
    C2W, KK = torch.stack([c2w, c2w.flip(0)]), torch.stack([K, K])
    bg = torch.rand(2, 2, d)                                                # [b, c, d]
    with torch.no_grad():
        assert_match(*both(Gaussians.stack([G0, G1]), C2W, KK, 20, 14, background=bg))
        rg, rt = both([G0, G2], C2W, KK, 20, 14, background=bg)              # different n: scene by scene
    assert rg['features'].shape == (2, 2, 14, 20, d)
    assert_match(rg, rt)


def test_gsplat_empty_view(cpu_gsplat):
    G, c2w, K = scene(5)
    away = c2w.clone(); away[:, :3, 2] *= -1; away[:, :3, 0] *= -1          # both cameras turned around
    bg = torch.rand(5)
    with torch.no_grad(): rg, rt = both(G, away, K, 20, 14, background=bg)
    assert rt['alpha'].max() == 0
    assert_match(rg, rt)
    torch.testing.assert_close(rg['features'], bg.expand(2, 14, 20, 5))


def test_gsplat_float64_keeps_dtype(cpu_gsplat):
    G, c2w, K = scene(33)
    with torch.no_grad(): rg, rt = both(G.to(torch.float64), c2w.double(), K.double(), 20, 14)
    assert rg['features'].dtype == torch.float64
    assert_match(rg, rt)


def test_gsplat_near_plane_rule(cpu_gsplat):
    "A Gaussian exactly at the near plane is culled by every backend (the kernel alone would keep it)."
    G, c2w, K = near_plane_scene()
    with torch.no_grad():
        rg, rt = both(G, c2w, K, 16, 16, near_plane=0.5)
        dev = 'cuda' if torch.cuda.is_available() else 'cpu'                  # Triton: compiled on a GPU, else its interpreter
        rtri = render(G.to(dev), c2w.to(dev), K.to(dev), 16, 16, backend='triton', near_plane=0.5)
    assert rt['depth'][0, 8, 8] > 1.9                                       # the near one is culled: depth of the far one
    assert_match(rg, rt)
    torch.testing.assert_close(rtri['features'].cpu(), rt['features'], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- gradients and the shared-memory budget
@pytest.mark.parametrize('d', [3, 384])
def test_gsplat_gradients_match_torch(cpu_gsplat, d):
    "Gradients through gsplat's autograd Functions and the stand-ins' backward; d = 384 needs passes of at most 129."
    G, c2w, K = scene(d, n=40)
    bg = torch.rand(d)
    grads = {}
    for backend in ('gsplat', 'torch'):
        g = G.map(lambda t: t.clone().requires_grad_())
        r = render(g, c2w, K, 20, 14, backend=backend, background=bg)
        wf = torch.randn(r['features'].shape, generator=torch.Generator().manual_seed(0))
        ((r['features'] * wf).sum() + r['alpha'].sum() + 0.1 * r['depth'].sum()).backward()
        grads[backend] = {k: getattr(g, k).grad for k in ('means', 'quats', 'scales', 'opacities', 'features')}
    assert cpu_gsplat.count('rasterize_to_pixels_3dgs_bwd') == (1 if d == 3 else 3)
    for k, gt in grads['torch'].items():
        gg = grads['gsplat'][k]   # float32 sums in another order: relative to the gradient's scale
        assert (gg - gt).norm() < 1e-5 * gt.norm() and (gg - gt).abs().max() < 1e-5 * gt.abs().max(), k


def _gsplat_pads(c):
    return c if c in KERNEL_CHANNELS else 1 << (c - 1).bit_length()


@pytest.mark.parametrize('smem', [H100_SMEM, 166_912, 101_376])           # H100/H200, A100, sm_86/sm_89
@pytest.mark.parametrize('tile', [8, 16])
def test_gradient_chunk_fits_shared_memory(smem, tile):
    "Every pass gsplat runs with the chunk `render` picks for gradients fits the backward kernel's shared memory, d <= 1024."
    for d in range(1, 1025):
        n = d + 1
        chunk = gsplat_channel_chunk(n, tile, grad=True, smem=smem)
        passes = [min(chunk, n - s) for s in range(0, n, chunk)] if n > chunk else [n]
        assert all(_gsplat_pads(c) <= 513 for c in passes), d
        need = max(tile * tile * (28 + 4 * _gsplat_pads(c)) for c in passes)
        assert need <= smem, (d, tile, smem, chunk, need)
    assert gsplat_channel_chunk(385, 16, True, H100_SMEM) == 129
    assert gsplat_channel_chunk(601, 16, False) == 513


# ---------------------------------------------------------------- backend='auto' without gsplat's extension
def test_auto_falls_back_when_extension_fails(monkeypatch):
    "gsplat installed, its extension's loader failing: 'auto' on CUDA warns once and uses Triton (or torch)."
    monkeypatch.setitem(sys.modules, 'gsplat.cuda._backend', None)       # `from gsplat.cuda._backend import _C` fails
    monkeypatch.setattr(R, '_GSPLAT_WHY_NOT', {})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        picked = [R._auto_backend(torch.device('cuda')) for _ in range(3)]
    try:
        import triton  # noqa: F401
        want = 'triton'
    except ImportError: want = 'torch'
    assert picked == [want] * 3
    msgs = [str(x.message) for x in w if 'gsplat cannot run' in str(x.message)]
    assert len(msgs) == 1 and 'gsplat.cuda._backend' in msgs[0] and want in msgs[0], msgs
    assert R._auto_backend(torch.device('cpu')) == 'torch'


def test_auto_uses_gsplat_when_it_works(cpu_gsplat, monkeypatch):
    "The one-Gaussian probe through the real gsplat path (stand-ins here) passes: 'auto' picks gsplat, without a warning."
    monkeypatch.setattr(R, '_GSPLAT_WHY_NOT', {})
    monkeypatch.setitem(sys.modules, 'gsplat.cuda._backend', types.SimpleNamespace(_C=object()))   # a loaded extension
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert R._auto_backend(torch.device('cpu')) == 'torch' and R._gsplat_why_not(torch.device('cpu')) is None
