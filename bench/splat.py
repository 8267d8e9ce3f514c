"""Benchmark the splatter: pixel-aligned Gaussians of 2 context views (64x64 -> 8192 Gaussians) rendered into a 64x64
target, d=64 and d=384, forward and forward+backward.

Compares the tiled PyTorch splatter (`render(backend='torch')`), the dense reference (`rasterize_dense`) and, on CUDA,
gsplat with all channels in one call vs gsplat 3 channels at a time (as the paper's rasteriser does).

Timing: median wall-clock of `--repeats` runs after one warm-up (CUDA: synchronised).
Peak memory:
  * CPU: every configuration runs in a fresh subprocess. After setup (imports, scene, Gaussians) the kernel's peak-RSS
    counter is reset (`echo 5 > /proc/self/clear_refs`, Linux >= 4.0), and we report peak RSS (`VmHWM`) during the
    runs minus the RSS at the reset: the extra physical memory the renders needed, everything included (autograd
    buffers, allocator slack), not just live tensors. Where /proc is unavailable, the growth of `ru_maxrss` (which
    can read 0 when setup peaked higher).
  * CUDA: `torch.cuda.max_memory_allocated()` growth over the same span (the caching allocator's live-tensor peak).

Usage: python bench/splat.py [--device cpu|cuda] [--repeats 3] [--threads 1] [--out results.json]
"""
import json, os, resource, subprocess, sys, time
from pathlib import Path
import torch
from fastcore.script import call_parse

ROOT = Path(__file__).resolve().parents[1]
SIZE, CTX, TGT = 64, [0, 8], [4]


def setup(d: int, device: str):
    "Pixel-aligned Gaussians (oracle depth) of two context views with random d-channel features, and the target camera."
    from splat_and_distill.scenes import make_scene
    from splat_and_distill.gaussians import gaussians_from_depth
    sc = make_scene(0, n_views=9, size=SIZE)
    feats = torch.rand(2, d, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    G = gaussians_from_depth(sc.depth[CTX], sc.K[CTX], sc.c2w[CTX], feats)
    return G.to(device), sc.c2w[TGT].to(device), sc.K[TGT].to(device)


def run_once(method: str, G, c2w, K, backward: bool):
    "One render (and backward); returns (outputs, grads)."
    from splat_and_distill.splat import render, project, rasterize_dense
    from splat_and_distill.cameras import invert_pose
    g = G.map(lambda t: t.clone().requires_grad_(backward))
    if method == 'tiled':
        r = render(g, c2w, K, SIZE, SIZE, backend='torch'); out = (r['features'], r['alpha'], r['depth'])
    elif method == 'dense':
        radii, m2, dep, con = project(g.means, g.covariances(), invert_pose(c2w), K, SIZE, SIZE, opacities=g.opacities)
        out = rasterize_dense(m2, con, g.opacities, g.features, dep, radii, SIZE, SIZE)
    elif method == 'gsplat_1call':
        r = render(g, c2w, K, SIZE, SIZE, backend='gsplat'); out = (r['features'], r['alpha'], r['depth'])
    elif method == 'gsplat_3ch':
        from splat_and_distill.gaussians import Gaussians
        parts = [render(Gaussians(g.means, g.quats, g.scales, g.opacities, g.features[:, i:i + 3]), c2w, K, SIZE, SIZE, backend='gsplat')
                 for i in range(0, g.d, 3)]
        out = (torch.cat([p['features'] for p in parts], -1), parts[0]['alpha'], parts[0]['depth'])
    else: raise ValueError(method)
    grads = None
    if backward:
        w = torch.linspace(-1, 1, out[0].shape[-1], device=out[0].device)
        (out[0] * w).sum().add(out[1].sum()).backward()
        grads = [t.grad for t in g.tensors()]
    return out, grads


def _rss_reset():
    "Reset the peak-RSS counter; return the current RSS in MB (None where unsupported)."
    try:
        Path('/proc/self/clear_refs').write_text('5')
        return _status_mb('VmRSS')
    except OSError: return None

def _status_mb(key):
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(key + ':'): return int(line.split()[1]) / 1024


def measure(method: str, d: int, backward: bool, device: str, repeats: int) -> dict:
    "Time and peak memory of one configuration (meant to run in its own process)."
    G, c2w, K = setup(d, device)
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    if device == 'cuda': torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.max_memory_allocated()
    else:
        import gc; gc.collect()
        base_rss, base = _rss_reset(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(repeats + 1):
        sync(); t = time.perf_counter()
        run_once(method, G, c2w, K, backward)
        sync(); times.append(time.perf_counter() - t)
    if device == 'cuda': peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    elif base_rss is not None: peak = _status_mb('VmHWM') - base_rss
    else: peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    times = sorted(times[1:])
    return dict(method=method, d=d, mode='fwd+bwd' if backward else 'fwd', ms=1000 * times[len(times) // 2], peak_mb=peak)


def agreement(d: int, device: str) -> dict:
    "Max abs difference of outputs and (relative) gradients: tiled vs dense, and gsplat vs tiled on CUDA."
    G, c2w, K = setup(d, device)
    (ot, gt), (od, gd) = run_once('tiled', G, c2w, K, True), run_once('dense', G, c2w, K, True)
    res = dict(d=d, out_tiled_vs_dense=max((a - b).abs().max().item() for a, b in zip(ot[:2], od[:2])),
               depth_rel_tiled_vs_dense=((ot[2] - od[2]).abs() / od[2].clamp(min=1e-6))[od[1] > 1e-3].max().item(),
               grad_rel_tiled_vs_dense=max(((a - b).norm() / b.norm().clamp(min=1e-12)).item() for a, b in zip(gt, gd)))
    if device == 'cuda':
        (og, gg) = run_once('gsplat_1call', G, c2w, K, True)
        res['out_gsplat_vs_tiled'] = max((a - b).abs().max().item() for a, b in zip(og[:2], ot[:2]))
        res['grad_rel_gsplat_vs_tiled'] = max(((a - b).norm() / b.norm().clamp(min=1e-12)).item() for a, b in zip(gg, gt) if b is not None)
    return res


@call_parse
def main(device: str = 'cpu',   # cpu or cuda
         repeats: int = 3,       # timed runs per configuration (median reported); the dense reference uses 1 on CPU
         threads: int = 1,       # torch CPU threads
         out: str = None,        # optional JSON file for the results
         _worker: str = None):   # internal: run one configuration and print JSON
    torch.set_num_threads(threads)
    if _worker:
        method, d, bwd = _worker.split(':')
        reps = 1 if (method == 'dense' and device == 'cpu') else repeats
        print(json.dumps(measure(method, int(d), bwd == '1', device, reps))); return
    methods = ['tiled', 'dense'] + (['gsplat_1call', 'gsplat_3ch'] if device == 'cuda' else [])
    rows = []
    for d in (64, 384):
        for bwd in (False, True):
            for m in methods:
                env = {**os.environ, 'OMP_NUM_THREADS': str(threads)}
                res = subprocess.run([sys.executable, __file__, '--device', device, '--repeats', str(repeats), '--threads', str(threads),
                                      '--_worker', f'{m}:{d}:{int(bwd)}'], capture_output=True, text=True, env=env, cwd=ROOT)
                if res.returncode: raise RuntimeError(res.stderr[-3000:])
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
                print(f"  {m:>13} d={d:<4} {rows[-1]['mode']:<8} {rows[-1]['ms']:9.1f} ms  {rows[-1]['peak_mb']:8.1f} MB", flush=True)
    agree = [agreement(d, device) for d in (64, 384)]
    dev = torch.cuda.get_device_name() if device == 'cuda' else f'CPU ({threads} thread{"s" * (threads > 1)}, {os.cpu_count()} cores on the machine)'
    print(f'\nSplatting 8192 pixel-aligned Gaussians (2 views, 64x64) into a 64x64 target on {dev}; median of {repeats} runs '
          '(dense on CPU: 1 run). Peak memory: ' + ('growth of max_memory_allocated' if device == 'cuda' else 'peak RSS above the post-setup RSS, fresh process per row'))
    key = {(r['method'], r['d'], r['mode']): r for r in rows}
    hdr = f"{'d':>4} {'mode':<8} {'tiled ms':>9} {'dense ms':>9} {'dense/tiled':>11} {'tiled MB':>9} {'dense MB':>9}"
    if device == 'cuda': hdr += f" {'gsplat 1-call ms':>16} {'gsplat 3-ch ms':>14} {'3-ch/1-call':>11} {'1-call MB':>9} {'3-ch MB':>8}"
    print(hdr)
    for d in (64, 384):
        for mode in ('fwd', 'fwd+bwd'):
            t, dn = key['tiled', d, mode], key['dense', d, mode]
            line = f"{d:>4} {mode:<8} {t['ms']:9.1f} {dn['ms']:9.1f} {dn['ms'] / t['ms']:10.1f}x {t['peak_mb']:9.1f} {dn['peak_mb']:9.1f}"
            if device == 'cuda':
                g1, g3 = key['gsplat_1call', d, mode], key['gsplat_3ch', d, mode]
                line += f" {g1['ms']:16.2f} {g3['ms']:14.2f} {g3['ms'] / g1['ms']:10.1f}x {g1['peak_mb']:9.1f} {g3['peak_mb']:8.1f}"
            print(line)
    for a in agree: print('agreement', json.dumps({k: (f'{v:.2e}' if isinstance(v, float) else v) for k, v in a.items()}))
    if out:
        from splat_and_distill.core import atomic_write_json
        atomic_write_json(out, dict(device=dev, rows=rows, agreement=agree))
