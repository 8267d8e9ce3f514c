"""Triton rasteriser (chapter 06): values and gradients against the PyTorch splatter (`splat.rasterize`), on CPU in
Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 without a GPU), on CUDA compiled and also against gsplat."""
import math, os, subprocess, sys
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F
from splat_and_distill.cameras import intrinsics_from_fov, invert_pose, look_at
from splat_and_distill.gaussians import Gaussians, gaussians_from_depth
from splat_and_distill.splat import bin_gaussians, project, rasterize
from splat_and_distill.render import render

ts = pytest.importorskip('splat_and_distill.triton_splat', reason='needs Triton')
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
DEV = 'cpu' if ts.is_interpreted() else 'cuda'
ROOT = Path(__file__).resolve().parents[1]


def assert_matches(a, b, what, scale=None):
    """`a` equals `b` to 1e-5 (relative to `scale`, at least 1). On a GPU, fast-math `exp` can flip the 1/255 skip or
    the 1e-4 stop rule at a rare pixel: there the bulk is held to 1e-5 and every element to 1e-3 (as in test_splat)."""
    s = max(1., float(b.detach().abs().max()) if scale is None else scale)
    err = (a.double() - b.double()).abs() / s
    assert torch.isfinite(a).all(), what
    if DEV == 'cpu': assert err.max() <= 1e-5, (what, err.max().item())
    else: assert err.mean() <= 1e-5 and err.max() <= 1e-3, (what, err.mean().item(), err.max().item())


def splats(n=40, w=40, h=30, d=3, cams=1, seed=0, x=(0., 1.), y=(0., 1.), sigma=(0.7, 4.), opacity=(0.05, 1.)):
    "Screen-space Gaussians for `cams` images sharing opacities and features: centres uniform in the box x * w, y * h."
    g = torch.Generator().manual_seed(seed)
    u = lambda lo_hi, *s: lo_hi[0] + (lo_hi[1] - lo_hi[0]) * torch.rand(*s, generator=g)
    means2d = torch.stack([u(x, cams, n) * w, u(y, cams, n) * h], -1)
    std = u(sigma, cams, n, 2)
    rho = u((-0.8, 0.8), cams, n)
    cov = torch.stack([std[..., 0] ** 2, rho * std[..., 0] * std[..., 1], std[..., 1] ** 2], -1) + torch.tensor([0.3, 0., 0.3])
    det = cov[..., 0] * cov[..., 2] - cov[..., 1] ** 2
    conics = torch.stack([cov[..., 2], -cov[..., 1], cov[..., 0]], -1) / det[..., None]
    radii = torch.ceil(3.33 * cov[..., [0, 2]].sqrt()).int()
    depths = u((1., 6.), cams, n)
    return dict(means2d=means2d, conics=conics, opacities=u(opacity, n), features=torch.rand(n, d, generator=g), depths=depths, radii=radii)


def run_both(s, w, h, background=None, seed=1, **kw):
    "Triton and PyTorch rasterisation of the same screen-space inputs, with a random loss on all three outputs: values and input gradients."
    res = []
    for backend in ('triton', 'torch'):
        x = {k: v.to(DEV).clone().requires_grad_(k != 'radii') for k, v in s.items()}
        bg = None if background is None else background.to(DEV)
        args = (x['means2d'], x['conics'], x['opacities'], x['features'], x['depths'], x['radii'], w, h, bg)
        out = ts.rasterize_triton(*args, **kw, return_last=True) if backend == 'triton' else rasterize(*args)
        gen = torch.Generator().manual_seed(seed)
        loss = sum((o * torch.randn(o.shape, generator=gen).to(DEV)).sum() for o in out[:2]) + (out[2] * out[1].detach()).sum()
        loss.backward()
        res.append((out, {k: v.grad for k, v in x.items() if k != 'radii'}))
    return res


def check_against_torch(s, w, h, **kw):
    (vt, gt), (vr, gr) = run_both(s, w, h, **kw)
    for name, a, b in zip(('features', 'alpha', 'depth'), vt, vr): assert_matches(a, b, name)
    for k in gr: assert_matches(gt[k], gr[k], f'grad {k}')
    return vt, gt


# ---------------------------------------------------------------- values and gradients vs the PyTorch splatter
@pytest.mark.parametrize('d,block_d', [(1, None), (3, None), (20, 16), (33, 16)])
def test_channels_and_channel_blocks(d, block_d):
    "Any d in one launch, including d not a multiple of the channel block (20 = 16 + 4, 33 = 2 x 16 + 1)."
    s = splats(n=40, d=d, cams=2, seed=d)
    bg = torch.linspace(0.1, 0.9, d) if d > 1 else None
    check_against_torch(s, 40, 30, background=bg, **({} if block_d is None else dict(block_d=block_d)))


@pytest.mark.parametrize('tile_size,chunk,w,h', [(16, 16, 33, 17), (8, 16, 33, 17), (8, 32, 16, 16)])
def test_tiles_chunks_and_odd_sizes(tile_size, chunk, w, h):
    "The image does not depend on the tile or chunk size, also when the image is not a multiple of the tile."
    check_against_torch(splats(n=30, w=w, h=h, d=5, seed=3), w, h, tile_size=tile_size, chunk=chunk)


def test_empty_tiles():
    "Gaussians only in the left quarter: the tiles to the right have empty lists, show the background and have no last index."
    w, h = 64, 32
    s = splats(n=25, w=w, h=h, d=4, x=(0., 0.2), sigma=(0.5, 1.5), seed=5)
    bg = torch.tensor([0.2, 0.4, 0.6, 0.8])
    vt, _ = check_against_torch(s, w, h, background=bg)
    f, a, z, last = (v.detach().cpu() for v in vt)
    assert (a[:, :, 32:] == 0).all() and (last[:, :, 32:] == -1).all() and (z[:, :, 32:] == 0).all()
    assert torch.equal(f[:, :, 32:], bg.expand_as(f[:, :, 32:]))
    assert (a[:, :, :8] > 0).any()


def test_one_gaussian_covers_many_tiles():
    "A wide Gaussian in every tile list of a 64x48 image (12 tiles), in front of small ones."
    w, h = 64, 48
    s = splats(n=20, w=w, h=h, d=3, sigma=(0.6, 2.), seed=7)
    s['means2d'][0, 0] = torch.tensor([31., 23.])
    s['conics'][0, 0] = torch.tensor([1 / 400, 0., 1 / 300])           # sigma 20 x 17 px
    s['radii'][0, 0] = torch.tensor([67, 58], dtype=torch.int32)
    s['depths'][0, 0], s['opacities'][0] = 0.5, 0.6
    lists, tiles, counts = bin_gaussians(s['means2d'], s['radii'], s['depths'], 16, 4, 3)
    assert len(tiles) == 12 and (lists == 0).any(1).all() and (lists[:, 0] == 0).all()   # first in every list
    check_against_torch(s, w, h)


def test_early_termination():
    "Thirty opaque Gaussians stacked on the image: every pixel stops after a few, before its tile list ends, with T above 1e-4."
    w = h = 32
    n = 30
    s = splats(n=n, w=w, h=h, d=3, seed=9)
    s['means2d'][:] = torch.tensor([16., 16.]) + torch.randn(1, n, 2, generator=torch.Generator().manual_seed(0))
    s['conics'][:] = torch.tensor([1 / 200, 0., 1 / 200])
    s['radii'][:] = 48
    s['opacities'][:] = 0.95
    counts = bin_gaussians(s['means2d'], s['radii'], s['depths'], 16, 2, 2)[2]
    assert counts.tolist() == [n] * 4                       # every tile lists all 30, so the list of tile t starts at 30 t
    vt, _ = check_against_torch(s, w, h)
    T, last = 1 - vt[1].detach().cpu(), vt[3].cpu()
    assert (last % n < n - 1).all() and (last % n >= 1).all()   # every pixel used more than one and stopped before the end
    assert (T > 1e-4).all() and (T <= 1e-4 / (1 - 0.95)).all()   # stopped where one more Gaussian would pass 1e-4


def test_alpha_clamp_passes_no_gradient():
    "Opacity-1 Gaussians centred on pixel centres reach the 0.999 clamp there; the clamped pixels add nothing to their gradients."
    s = splats(n=12, w=32, h=16, d=3, sigma=(0.7, 1.5), seed=13)
    s['means2d'] = torch.floor(s['means2d']) + 0.5
    s['opacities'][:] = 1.
    check_against_torch(s, 32, 16)


@pytest.mark.parametrize('case', ['culled', 'no_gaussians'])
def test_nothing_visible(case):
    "No Gaussian in view (all culled, or none at all): background everywhere, zero gradients, and no kernel launch."
    s = splats(n=10 if case == 'culled' else 0, d=2, seed=11)
    s['radii'][:] = 0
    bg = torch.tensor([0.3, 0.7])
    (vt, gt), _ = run_both(s, 40, 30, background=bg)
    assert (vt[1] == 0).all() and torch.equal(vt[0].cpu(), bg.expand(1, 30, 40, 2)) and (vt[3] == -1).all()
    for k, v in gt.items(): assert v is not None and (v == 0).all(), k


# ---------------------------------------------------------------- through render: projection, batches of scenes
def random_scene(n=80, d=3, seed=0, spread=1.5):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 2 * spread
    return Gaussians(means, F.normalize(torch.randn(n, 4, generator=g), dim=-1), torch.rand(n, 3, generator=g) * 0.12 + 0.02,
                     torch.rand(n, generator=g), torch.rand(n, d, generator=g))


def test_render_batched_scenes_values_and_grads():
    "Two scenes, two cameras each: scene k's opacities and features serve only cameras c2w[k] (rows by image // cams)."
    G = Gaussians.stack([random_scene(seed=0, d=6), random_scene(seed=1, d=6)])
    eyes = [[(0., -3., 0.3), (2., 2., 0.5)], [(-2., 2., -0.5), (0., -3., 1.)]]
    c2w = torch.stack([torch.stack([look_at(torch.tensor(e), torch.zeros(3)) for e in es]) for es in eyes])
    K = intrinsics_from_fov(70, 24, 20).expand(2, 2, 3, 3)
    res = []
    for backend in ('triton', 'torch'):
        g = G.to(DEV).map(lambda t: t.clone().requires_grad_())
        r = render(g, c2w.to(DEV), K.to(DEV), 24, 20, backend=backend, background=torch.full((6,), 0.5, device=DEV))
        gen = torch.Generator().manual_seed(2)
        (sum((r[k] * torch.randn(r[k].shape, generator=gen).to(DEV)).sum() for k in ('features', 'alpha')) + (r['depth'] * r['alpha'].detach()).sum()).backward()
        res.append((r, [t.grad for t in g.tensors()]))
    (rt, gt), (rr, gr) = res
    assert rt['features'].shape == (2, 2, 20, 24, 6)
    for k in rr: assert_matches(rt[k], rr[k], k)
    for name, a, b in zip(('means', 'quats', 'scales', 'opacities', 'features'), gt, gr): assert_matches(a, b, f'grad {name}')
    assert gt[4][1].abs().sum() > 0 and gt[4][0].abs().sum() > 0


def test_bad_launch_arguments():
    s = {k: v.to(DEV) for k, v in splats(n=5).items()}
    args = (s['means2d'], s['conics'], s['opacities'], s['features'], s['depths'], s['radii'], 40, 30)
    for kw, msg in [(dict(tile_size=32), 'tile_size must be 8 or 16'), (dict(chunk=8), 'chunk must be a power of 2 >= 16'),
                    (dict(block_d=24), 'block_d must be a power of 2 >= 16')]:
        with pytest.raises(ValueError, match=msg): ts.rasterize_triton(*args, **kw)


SCRIPT = r'''
import importlib, os, sys, torch
import splat_and_distill.splat, splat_and_distill.render as R
assert 'triton' not in sys.modules, 'splat or render imported Triton'
from splat_and_distill.gaussians import Gaussians
from splat_and_distill.cameras import intrinsics_from_fov, look_at
G = Gaussians(torch.zeros(1, 3), torch.tensor([[1., 0, 0, 0]]), torch.full((1, 3), 0.1), torch.ones(1), torch.ones(1, 3))
c2w, K = look_at(torch.tensor([0., -3., 0.]), torch.zeros(3))[None], intrinsics_from_fov(60, 16, 16)[None]
for case in ('compiled', 'mixed'):
    try: R.render(G, c2w, K, 16, 16, backend='triton'); print(case, 'no error')
    except Exception as e: print(case, type(e).__name__, str(e))
    os.environ['TRITON_INTERPRET'] = '1'                  # too late: Triton's own library is already compiled
    importlib.reload(sys.modules['splat_and_distill.triton_splat'])
'''

def test_cpu_without_interpreter_says_what_to_do():
    "Without TRITON_INTERPRET, CPU tensors get a clear error, as does setting it after Triton was imported; importing `splat` or `render` never imports Triton."
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env['CUDA_VISIBLE_DEVICES'] = ''
    r = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = dict(l.split(' ', 1) for l in r.stdout.strip().splitlines())
    assert lines['compiled'].startswith('ValueError') and 'TRITON_INTERPRET=1' in lines['compiled'] and "backend='torch'" in lines['compiled']
    assert lines['mixed'].startswith('RuntimeError') and 'before anything imports Triton' in lines['mixed']


def test_interpreter_is_used_without_gpu():
    if not torch.cuda.is_available(): assert ts.is_interpreted(), 'tests/conftest.py should have set TRITON_INTERPRET=1'


# ---------------------------------------------------------------- CUDA: compiled kernels vs gsplat and PyTorch
def _pixel_aligned(d, size=64, seed=0):
    from splat_and_distill.scenes import make_scene
    sc = make_scene(seed, n_views=9, size=size)
    feats = torch.rand(2, d, size, size, generator=torch.Generator().manual_seed(seed))
    G = gaussians_from_depth(sc.depth[[0, 8]], sc.K[[0, 8]], sc.c2w[[0, 8]], feats, opacity=0.9)
    return G.to('cuda'), sc.c2w[[4]].cuda(), sc.K[[4]].cuda()


@cuda
@pytest.mark.parametrize('d', [3, 33, 64, 384, 768])
def test_cuda_matches_gsplat_and_torch(d):
    "Compiled kernels against gsplat (one call) and the PyTorch splatter: values and gradients, pixel-aligned Gaussians."
    if ts.is_interpreted(): pytest.skip('kernels are interpreted (TRITON_INTERPRET=1): nothing compiled to test')
    G, c2w, K = _pixel_aligned(d)
    res = {}
    for backend in ('triton', 'gsplat', 'torch'):
        g = G.map(lambda t: t.clone().requires_grad_())
        r = render(g, c2w, K, 64, 64, backend=backend, background=torch.full((d,), 0.25, device='cuda'))
        gen = torch.Generator(device='cuda').manual_seed(0)
        ((r['features'] * torch.randn(r['features'].shape, generator=gen, device='cuda')).sum() + r['alpha'].sum()).backward()
        res[backend] = ({k: v.detach() for k, v in r.items()}, {k: getattr(g, k).grad for k in ('means', 'scales', 'opacities', 'features')})
    vt, gt = res['triton']
    for other in ('gsplat', 'torch'):
        vo, go = res[other]
        for k in ('features', 'alpha'):
            err = (vt[k] - vo[k]).abs()
            assert err.mean() < 1e-5 and err.max() < 1e-3, (other, k, err.mean().item(), err.max().item())
        cov = vo['alpha'] > 0.5
        derr = ((vt['depth'] - vo['depth']).abs() / vo['depth'])[cov]
        assert derr.median() < 1e-5 and derr.max() < 1e-3, (other, derr.median().item(), derr.max().item())
        for k in gt:
            rel = (gt[k] - go[k]).norm() / go[k].norm().clamp(min=1e-12)
            assert rel < 1e-3, (other, k, rel.item())


@cuda
def test_cuda_batch_of_scenes_matches_torch():
    if ts.is_interpreted(): pytest.skip('kernels are interpreted (TRITON_INTERPRET=1)')
    G, c2w, K = _pixel_aligned(40)
    Gb = Gaussians.stack([G, G.map(lambda t: t.flip(0))])
    r = render(Gb, torch.stack([c2w, c2w]), torch.stack([K, K]), 64, 64, backend='triton')
    rt = render(Gb, torch.stack([c2w, c2w]), torch.stack([K, K]), 64, 64, backend='torch')
    assert r['features'].shape == (2, 1, 64, 64, 40)
    assert (r['features'] - rt['features']).abs().mean() < 1e-5
