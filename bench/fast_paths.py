"""The demo's hot spots beside the code they replaced, timed side by side in one run (issue 23's profile pointed at them).

  * mask-aware upsampling (chapter 07), teacher tokens of one distillation step's context views (8 x 112 x 8 x 8, the
    demo's efficientnet_lite0 at 128 px) to the 64 x 64 pixels the demo lifts at (its recon_size), and to 128 x 128: the loop over the four neighbours that built four full-size
    weighted maps (kept in tests/test_lift.py as the reference) against `mask_aware_upsample` (weights per pixel
    first, then one matrix product);
  * the probe heads' bilinear resizing (chapter 10), forward + backward, at the depth head's (16 x 256 bins, 8 x 8 to
    32 x 32) and the normals head's (16 x 4) shapes: `F.interpolate` against `probes.bilinear_resize`;
  * the depth probe head's bin weighting, forward + backward (16 images, 256 bins, 32 x 32): `relu(z) + 0.1`
    materialised, then an einsum with the bin centres and a sum over the bins, against one product of `relu(z)` with the
    two rows [bin centres; ones] (`probes.DepthProbe` now), the constant 0.1 added to the two sums after;
  * the normals probe's angular loss, forward + backward: with `F.cosine_similarity` and a norm over dim 1 (slow on
    CPU for NCHW tensors) against the written-out form `probes.angular_loss` uses now;
  * the ratio test of correspondence (4096 x 4096 grid pixels, d = 112): distances `1 - cos` over chunks of 2048
    rows, then the two smallest, against the two highest cosines over chunks of 512 rows (`probes.ratio_test_matches`);
  * correspondence of one view pair on the demo's 64 x 64 grid from 8 x 8 token maps (d = 112, the student, and 224,
    student+teacher): features sampled at every pixel and `ratio_test_matches` against `probes.ratio_test_grid`
    (the cosines through the token grid); the difference column counts kept matches that are not the same.
Every row also prints the largest difference between the two results. Medians of `--repeats` after one warm-up.

Usage: python bench/fast_paths.py [--threads 2] [--repeats 7]
"""
import argparse, importlib.util, os, platform, statistics, sys, time
from pathlib import Path
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def _loop_reference():
    "The loop form of mask-aware upsampling, from the test that holds it as the reference."
    spec = importlib.util.spec_from_file_location('test_lift', ROOT/'tests'/'test_lift.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod._mask_aware_upsample_loop


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def old_angular_loss(out, gt, eps=1e-4):
    valid = torch.isfinite(gt).all(1) & (gt.norm(dim=1) > 0.5)
    theta = F.cosine_similarity(out[:, :3], gt, dim=1).clamp(-1 + eps, 1 - eps).acos()
    k = F.elu(out[:, 3]) + 1.01
    return (F.softplus(-torch.pi * k) - torch.log1p(k ** 2) + k * theta)[valid].mean()


def old_depth_head(head, x):
    "The depth probe head's forward before: the bin weights materialised, then an einsum and a sum over the bins."
    w = F.relu(head.scores(x)) + 0.1
    return torch.einsum('bnhw,n->bhw', w, head.bins) / w.sum(1)


def old_ratio_test(f0, f1, num_corr, chunk=2048):
    "The ratio test before: distances over the whole chunk, then the two smallest, in chunks of 2048 rows."
    nn_idx, weight = [], []
    for s in range(0, len(f0), chunk):
        d, i = (1 - f0[s:s + chunk] @ f1.T).topk(2, dim=1, largest=False)
        d = d.clamp(min=1e-9)
        weight.append(1 - d[:, 0] / d[:, -1]); nn_idx.append(i[:, 0])
    weight, nn_idx = torch.cat(weight), torch.cat(nn_idx)
    w, idx0 = weight.topk(num_corr)
    return idx0, nn_idx[idx0], w


def rows(repeats: int):
    from splat_and_distill.lift import mask_aware_upsample
    from splat_and_distill.probes import bilinear_resize, angular_loss, ratio_test_matches, ratio_test_grid, sample_features
    from splat_and_distill.cameras import pixel_centers
    from splat_and_distill.scenes import make_scene
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(8, 112, 8, 8, generator=g)
    loop = _loop_reference()
    use = lambda up: up.permute(0, 2, 3, 1).reshape(8, -1, 112).sum()     # channels last, as lifting reads it: a row per Gaussian
    for size in (64, 128):
        labels = make_scene(0, n_views=8, size=size).instance[:8].long()
        diff = float((mask_aware_upsample(tokens, labels) - loop(tokens, labels)).abs().max())
        yield (f'mask-aware upsample 8x112x8x8 -> {size}x{size}', median_ms(lambda: use(loop(tokens, labels)), repeats),
               median_ms(lambda: use(mask_aware_upsample(tokens, labels)), repeats), diff)
    for name, c in (('depth head resize 16x256: 8x8 -> 32x32, fwd+bwd', 256), ('normals head resize 16x4: 8x8 -> 32x32, fwd+bwd', 4)):
        z = torch.randn(16, c, 8, 8, generator=g, requires_grad=True)
        old = lambda: F.interpolate(z, size=(32, 32), mode='bilinear', align_corners=False).square().sum().backward()
        new = lambda: bilinear_resize(z, (32, 32)).square().sum().backward()
        with torch.no_grad(): d = float((F.interpolate(z, size=(32, 32), mode='bilinear', align_corners=False) - bilinear_resize(z, (32, 32))).abs().max())
        yield name, median_ms(old, repeats), median_ms(new, repeats), d
    from splat_and_distill.probes import DepthProbe
    head, x = DepthProbe(112), torch.randn(16, 112, 8, 8, generator=torch.Generator().manual_seed(1))   # its own draws: the rows after see what they saw
    with torch.no_grad(): d = float((old_depth_head(head, x) - head(x)).abs().max() / head(x).abs().max())   # relative
    yield ('depth head 16x256 bins at 32x32, fwd+bwd', median_ms(lambda: old_depth_head(head, x).sum().backward(), repeats),
           median_ms(lambda: head(x).sum().backward(), repeats), d)
    out = torch.randn(16, 4, 32, 32, generator=g, requires_grad=True)
    gt = F.normalize(torch.randn(16, 3, 32, 32, generator=g), dim=1); gt[:, :, :4] = 0
    with torch.no_grad(): d = float((old_angular_loss(out, gt) - angular_loss(out, gt)).abs())
    yield ('normals angular loss 16x32x32, fwd+bwd', median_ms(lambda: old_angular_loss(out, gt).backward(), repeats),
           median_ms(lambda: angular_loss(out, gt).backward(), repeats), d)
    f0, f1 = (F.normalize(torch.randn(4096, 112, generator=g), dim=-1) for _ in range(2))
    a, b = old_ratio_test(f0, f1, 213), ratio_test_matches(f0, f1, 213)        # 213 matches: the demo's 64 x 64 grid
    d = float((a[2] - b[2]).abs().max()) + float((a[1] != b[1]).sum())     # weights, and any other match
    yield ('ratio test 4096 x 4096, d=112', median_ms(lambda: old_ratio_test(f0, f1, 213), repeats),
           median_ms(lambda: ratio_test_matches(f0, f1, 213), repeats), d)
    hw = (64, 64)
    uv = pixel_centers(*hw).reshape(-1, 2)
    valid1 = torch.rand(hw, generator=g) > 0.1
    for d in (112, 224):
        t0, t1 = torch.randn(2, d, 8, 8, generator=g).unbind(0)
        f0 = sample_features(t0, uv, hw)
        direct = lambda: ratio_test_matches(f0, sample_features(t1, uv[valid1.flatten()], hw), 213)
        grid = lambda: ratio_test_grid(f0, t1, valid1, 213)
        a, b = direct(), grid()
        pix = valid1.flatten().nonzero()[:, 0]
        diff = 213 - len(set(zip(a[0].tolist(), pix[a[1]].tolist())) & set(zip(b[0].tolist(), b[1].tolist())))
        yield f'correspondence of a pair, 64x64 grid, 8x8 tokens, d={d}', median_ms(direct, repeats), median_ms(grid, repeats), float(diff)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--repeats', type=int, default=7)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f'machine {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; torch {torch.__version__}, '
          f'{a.threads} threads; load average {" ".join(f"{x:.2f}" for x in os.getloadavg())}')
    print(f'{"hot spot":52s} {"before ms":>10s} {"after ms":>10s} {"ratio":>7s} {"max diff":>9s}')
    res = []
    for name, old, new, diff in rows(a.repeats):
        res.append(dict(name=name, before_ms=old, after_ms=new, max_diff=diff))
        print(f'{name:52s} {old:10.2f} {new:10.2f} {old / new:6.1f}x {diff:9.1e}', flush=True)
    print(f'load average after {" ".join(f"{x:.2f}" for x in os.getloadavg())}')
    return res


if __name__ == '__main__':
    main()
