"""Benchmark the splatter.

CPU (default): pixel-aligned Gaussians of 2 context views (64x64 -> 8192 Gaussians) rendered into a 64x64 target,
d=64 and d=384, forward and forward+backward, three splatters side by side: the fused pair splatter
(`render(backend='torch')`, i.e. `splat.render_torch`), the tiled PyTorch splatter it replaced
(`render_torch(..., fused=False)` -> `splat.rasterize`), and the dense reference (`rasterize_dense`), with the ratios
dense/fused, dense/tiled and tiled/fused. Then one correctness row for the Triton kernels (`render(backend='triton')`)
run in Triton's interpreter on a 32x32 scene: their agreement with the PyTorch splatter, not a timing.

CUDA (`--device cuda`): in one run, for d = 3, 64, 384, 768, forward and forward+backward, at 256x256 and 576x880
(targets and both context views at that size: 2*h*w pixel-aligned Gaussians, 1.01 M at 576x880):
  * gsplat_1call: `render(backend='gsplat')`, one `gsplat.rasterization` call for all d channels, in passes of
                  `render.gsplat_channel_chunk` (up to 513 channels forward; 129 with gradients on an H100);
  * gsplat_3ch:   gsplat 3 channels at a time, one full render per 3 channels (the paper's rasteriser);
  * triton:       `render(backend='triton')`, this project's Triton kernels (chapter 06_triton);
  * torch:        `render(backend='torch')`, the fused PyTorch splatter (`--methods` may add `tiled`, the tiled one);
then, at d = 384, the ratios gsplat 3-channel loop / gsplat one call (target >= 5) and Triton / gsplat one call
(target <= 2), and the agreement of the three fast paths with the PyTorch splatter. gsplat JIT-compiles its CUDA
kernels on its first call on a machine (minutes; the warm-up run absorbs it), Triton compiles on first use (seconds).
A configuration that runs out of GPU memory is reported as OOM and the run goes on.

Timing: median wall-clock of `--repeats` runs after one warm-up (CUDA: synchronised). CPU rows run with
`OMP_WAIT_POLICY=PASSIVE` unless the environment sets it: OpenMP threads that wait for work sleep instead of spinning.
On a machine shared with other jobs, spinning threads take the cores the working ones need, and a splatter made of
many small parallel operations (the fused one) then measures the scheduler: at 2 threads and a load average of 6 on 2
cores, fused forward+backward times spread from 70 to 400 ms with spinning, 37 to 50 ms without. It changes nothing
with one thread.
Peak memory:
  * CPU: every configuration runs in a fresh subprocess. After setup (imports, scene, Gaussians) the kernel's peak-RSS
    counter is reset (`echo 5 > /proc/self/clear_refs`, Linux >= 4.0), and we report peak RSS (`VmHWM`) during the
    runs minus the RSS at the reset: the extra physical memory the renders needed, everything included (autograd
    buffers, allocator slack), not just live tensors. Where /proc is unavailable, the growth of `ru_maxrss` (which
    can read 0 when setup peaked higher).
  * CUDA: `torch.cuda.max_memory_allocated()` above the memory allocated before the runs (inputs excluded), reset per
    configuration, all in one process (the caching allocator's live-tensor peak).

Usage: python bench/splat.py [--device cpu|cuda] [--repeats 3] [--threads 1] [--out results.json]
       CUDA only: [--sizes 256x256,576x880] [--ds 3,64,384,768] [--methods gsplat_1call,gsplat_3ch,triton,torch]
"""
import json, os, resource, subprocess, sys, time
from pathlib import Path
import torch
from fastcore.script import call_parse

ROOT = Path(__file__).resolve().parents[1]
SIZE, CTX, TGT = 64, [0, 8], [4]
CUDA_METHODS = ['gsplat_1call', 'gsplat_3ch', 'triton', 'torch']
CPU_METHODS = ['fused', 'tiled', 'dense']


def scene_views(h: int, w: int):
    "Depth, intrinsics and camera-to-world of views 0, 4, 8 of procedural scene 0 at h x w (context 0 and 8, target 4)."
    from splat_and_distill.scenes import make_scene
    sc = make_scene(0, n_views=9, size=(h, w)).select(CTX + TGT)
    return sc.depth, sc.K, sc.c2w


def gaussians(views, d: int, device: str):
    "Pixel-aligned Gaussians (oracle depth) of the two context views with random d-channel features, and the target camera."
    from splat_and_distill.gaussians import gaussians_from_depth
    depth, K, c2w = views
    h, w = depth.shape[-2:]
    feats = torch.rand(2, d, h, w, generator=torch.Generator().manual_seed(0))
    G = gaussians_from_depth(depth[:2], K[:2], c2w[:2], feats)
    return G.to(device), c2w[2:].to(device), K[2:].to(device)


def setup(d: int, device: str, h: int = SIZE, w: int = SIZE):
    return gaussians(scene_views(h, w), d, device)


def run_once(method: str, G, c2w, K, backward: bool, h: int = SIZE, w: int = SIZE):
    "One render (and backward); returns (outputs, grads)."
    from splat_and_distill.render import render
    from splat_and_distill.splat import project, rasterize_dense, render_torch
    from splat_and_distill.cameras import invert_pose
    g = G.map(lambda t: t.detach().requires_grad_(backward))          # fresh leaves, no copy
    if method in ('fused', 'torch', 'triton', 'gsplat_1call'):
        backend = dict(fused='torch', gsplat_1call='gsplat').get(method, method)
        r = render(g, c2w, K, w, h, backend=backend); out = (r['features'], r['alpha'], r['depth'])
    elif method == 'tiled':                                            # the tiled splatter (splat.rasterize)
        r = render_torch(g, c2w, K, w, h, fused=False); out = (r['features'], r['alpha'], r['depth'])
    elif method == 'dense':
        radii, m2, dep, con = project(g.means, g.covariances(), invert_pose(c2w), K, w, h, opacities=g.opacities)
        out = rasterize_dense(m2, con, g.opacities, g.features, dep, radii, w, h)
    elif method == 'gsplat_3ch':
        from splat_and_distill.gaussians import Gaussians
        parts = [render(Gaussians(g.means, g.quats, g.scales, g.opacities, g.features[:, i:i + 3]), c2w, K, w, h, backend='gsplat')
                 for i in range(0, g.d, 3)]
        out = (torch.cat([p['features'] for p in parts], -1), parts[0]['alpha'], parts[0]['depth'])
    else: raise ValueError(method)
    grads = None
    if backward:
        wts = torch.linspace(-1, 1, out[0].shape[-1], device=out[0].device)
        (out[0] * wts).sum().add(out[1].sum()).backward()
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
    "CPU: time and peak memory of one configuration (meant to run in its own process)."
    G, c2w, K = setup(d, device)
    import gc; gc.collect()
    base_rss, base = _rss_reset(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(repeats + 1):
        t = time.perf_counter()
        run_once(method, G, c2w, K, backward)
        times.append(time.perf_counter() - t)
    if base_rss is not None: peak = _status_mb('VmHWM') - base_rss
    else: peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    times = sorted(times[1:])
    return dict(method=method, d=d, mode='fwd+bwd' if backward else 'fwd', ms=1000 * times[len(times) // 2], peak_mb=peak)


def measure_cuda(method: str, G, c2w, K, h: int, w: int, backward: bool, repeats: int) -> dict:
    "CUDA, in process: median time and peak memory above the inputs of one configuration; `ms=None` if it ran out of memory."
    row = dict(method=method, size=f'{h}x{w}', d=G.d, mode='fwd+bwd' if backward else 'fwd', ms=None, peak_mb=None)
    torch.cuda.synchronize(); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    try:
        for i in range(repeats + 1):
            torch.cuda.synchronize(); t = time.perf_counter()
            run_once(method, G, c2w, K, backward, h, w)
            torch.cuda.synchronize(); times.append(time.perf_counter() - t)
    except torch.cuda.OutOfMemoryError:
        row['oom'] = True
        return row
    finally: torch.cuda.empty_cache()
    times = sorted(times[1:])
    row.update(ms=1000 * times[len(times) // 2], peak_mb=(torch.cuda.max_memory_allocated() - base) / 2 ** 20)
    return row


def _max_diff(a, b): return max((x - y).abs().max().item() for x, y in zip(a[:2], b[:2]))
def _grad_rel(ga, gb): return max(((x - y).norm() / y.norm().clamp(min=1e-12)).item() for x, y in zip(ga, gb) if y is not None)


def agreement(d: int, device: str) -> dict:
    "CPU: max abs difference of outputs and (relative) gradients, fused and tiled vs dense."
    G, c2w, K = setup(d, device)
    od, gd = run_once('dense', G, c2w, K, True)
    res = dict(d=d)
    for m in ('fused', 'tiled'):
        o, g = run_once(m, G, c2w, K, True)
        res.update({f'out_{m}_vs_dense': _max_diff(o, od), f'depth_rel_{m}_vs_dense': ((o[2] - od[2]).abs() / od[2].clamp(min=1e-6))[od[1] > 1e-3].max().item(),
                    f'grad_rel_{m}_vs_dense': _grad_rel(g, gd)})
    return res


def agreement_cuda(G, c2w, K, h: int, w: int, methods) -> dict:
    "CUDA: each fast path against the PyTorch splatter, outputs (max abs) and gradients (relative norm)."
    ref_out, ref_grads = run_once('torch', G, c2w, K, True, h, w)
    res = dict(size=f'{h}x{w}', d=G.d)
    for m in methods:
        if m == 'torch': continue
        o, g = run_once(m, G, c2w, K, True, h, w)
        res[f'out_{m}_vs_torch'], res[f'grad_rel_{m}_vs_torch'] = _max_diff(o, ref_out), _grad_rel(g, ref_grads)
    return res


def triton_check(size: int = 32) -> list:
    "Triton kernels (in the interpreter when run without a GPU) against the PyTorch splatter on a small scene."
    res = []
    for d in (3, 40):
        G, c2w, K = setup(d, 'cpu', size, size)
        (ot, gt), (oc, gc_) = run_once('triton', G, c2w, K, True, size, size), run_once('torch', G, c2w, K, True, size, size)
        res.append(dict(size=f'{size}x{size}', d=d, n=G.n, out_triton_vs_torch=_max_diff(ot, oc),
                        depth_triton_vs_torch=(ot[2] - oc[2]).abs().max().item(), grad_rel_triton_vs_torch=_grad_rel(gt, gc_)))
    return res


def cuda_main(sizes, ds, methods, repeats: int):
    "The CUDA table: every method, d and mode at every size, in this process."
    try: import gsplat  # noqa: F401
    except ImportError as e:
        print(f'gsplat does not import ({e}): its rows are skipped'); methods = [m for m in methods if not m.startswith('gsplat')]
    rows, agree = [], []
    for h, w in sizes:
        t = time.perf_counter(); views = scene_views(h, w)
        print(f'{h}x{w}: scene rendered in {time.perf_counter() - t:.1f} s, {2 * h * w} Gaussians', flush=True)
        for d in ds:
            G, c2w, K = gaussians(views, d, 'cuda')
            for bwd in (False, True):
                for m in methods:
                    r = measure_cuda(m, G, c2w, K, h, w, bwd, repeats); rows.append(r)
                    ms = 'OOM' if r['ms'] is None else f"{r['ms']:9.2f} ms  {r['peak_mb']:9.1f} MB"
                    print(f"  {m:>13} {h}x{w} d={d:<4} {r['mode']:<8} {ms}", flush=True)
            if d in (3, 384):
                try: agree.append(agreement_cuda(G, c2w, K, h, w, methods))
                except torch.cuda.OutOfMemoryError: agree.append(dict(size=f'{h}x{w}', d=d, oom=True))
                torch.cuda.empty_cache()
            del G
    return rows, agree


def print_cuda_table(rows, agree, dev: str, repeats: int, methods):
    key = {(r['method'], r['size'], r['d'], r['mode']): r for r in rows}
    print(f'\nPixel-aligned Gaussians of two context views rendered into a target of the same size on {dev}; median of {repeats} '
          'runs after a warm-up; peak = max_memory_allocated above the inputs.')
    cell = lambda r: ' ' * 19 + 'OOM' if r is None or r['ms'] is None else f"{r['ms']:10.2f} ms {r['peak_mb']:8.0f} MB"
    print(f"{'size':>8} {'d':>4} {'mode':<8}" + ''.join(f'{m:>26}' for m in methods))
    sizes = list(dict.fromkeys(r['size'] for r in rows))
    ds = list(dict.fromkeys(r['d'] for r in rows))
    for size in sizes:
        for d in ds:
            for mode in ('fwd', 'fwd+bwd'):
                print(f'{size:>8} {d:>4} {mode:<8}' + ''.join(f'{cell(key.get((m, size, d, mode))):>26}' for m in methods))
    def ratio(a, b, size, mode, d=384):
        ra, rb = key.get((a, size, d, mode)), key.get((b, size, d, mode))
        return None if ra is None or rb is None or ra['ms'] is None or rb['ms'] is None else ra['ms'] / rb['ms']
    ratios = []
    for size in sizes:
        for mode in ('fwd', 'fwd+bwd'):
            r = dict(size=size, mode=mode, d=384, gsplat_3ch_over_1call=ratio('gsplat_3ch', 'gsplat_1call', size, mode),
                     triton_over_gsplat_1call=ratio('triton', 'gsplat_1call', size, mode), torch_over_triton=ratio('torch', 'triton', size, mode))
            ratios.append(r)
            f = lambda v: ' n/a' if v is None else f'{v:6.2f}x'
            print(f"d=384 {size} {mode:<8}: gsplat 3-channel loop / one call {f(r['gsplat_3ch_over_1call'])} (target >= 5), "
                  f"Triton / gsplat one call {f(r['triton_over_gsplat_1call'])} (target <= 2), PyTorch / Triton {f(r['torch_over_triton'])}")
    for a in agree: print('agreement', json.dumps({k: (f'{v:.2e}' if isinstance(v, float) else v) for k, v in a.items()}))
    return ratios


@call_parse
def main(device: str = 'cpu',   # cpu or cuda
         repeats: int = 3,       # timed runs per configuration (median reported); the dense reference uses 1 on CPU
         threads: int = 1,       # torch CPU threads
         out: str = None,        # optional JSON file for the results
         sizes: str = '256x256,576x880',              # CUDA: target (and context) sizes, HxW
         ds: str = '3,64,384,768',                     # CUDA: feature channels
         methods: str = ','.join(CUDA_METHODS),        # CUDA: which renderers (also: tiled)
         _worker: str = None,    # internal: run one CPU configuration and print JSON
         _triton_check: bool = False):  # internal: print the Triton correctness rows as JSON
    torch.set_num_threads(threads)
    if _worker:
        method, d, bwd = _worker.split(':')
        reps = 1 if method == 'dense' else repeats
        print(json.dumps(measure(method, int(d), bwd == '1', device, reps))); return
    if _triton_check:
        print(json.dumps(triton_check())); return
    if device == 'cuda':
        if not torch.cuda.is_available(): raise SystemExit('--device cuda: no CUDA GPU is visible')
        size_list = [tuple(int(x) for x in s.split('x')) for s in sizes.split(',')]
        method_list = methods.split(',')
        unknown = set(method_list) - set(CUDA_METHODS + ['tiled'])
        if unknown: raise SystemExit(f'--methods: unknown {sorted(unknown)}; choose from {CUDA_METHODS + ["tiled"]}')
        rows, agree = cuda_main(size_list, [int(x) for x in ds.split(',')], method_list, repeats)
        dev = torch.cuda.get_device_name()
        ratios = print_cuda_table(rows, agree, dev, repeats, method_list)
        if out:
            from splat_and_distill.core import atomic_write_json
            atomic_write_json(out, dict(device=dev, repeats=repeats, rows=rows, ratios=ratios, agreement=agree))
        return
    rows = []
    for d in (64, 384):
        for bwd in (False, True):
            for m in CPU_METHODS:
                env = {'OMP_WAIT_POLICY': 'PASSIVE', **os.environ, 'OMP_NUM_THREADS': str(threads)}
                res = subprocess.run([sys.executable, __file__, '--device', device, '--repeats', str(repeats), '--threads', str(threads),
                                      '--_worker', f'{m}:{d}:{int(bwd)}'], capture_output=True, text=True, env=env, cwd=ROOT)
                if res.returncode: raise RuntimeError(res.stderr[-3000:])
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
                print(f"  {m:>13} d={d:<4} {rows[-1]['mode']:<8} {rows[-1]['ms']:9.1f} ms  {rows[-1]['peak_mb']:8.1f} MB", flush=True)
    agree = [agreement(d, device) for d in (64, 384)]
    # the Triton kernels on CPU need Triton's interpreter, chosen before Triton is first imported: a fresh process
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads), 'TRITON_INTERPRET': '1'}
    res = subprocess.run([sys.executable, __file__, '--threads', str(threads), '--_triton_check'], capture_output=True, text=True, env=env, cwd=ROOT)
    if res.returncode: raise RuntimeError(res.stderr[-3000:])
    triton_rows = json.loads(res.stdout.strip().splitlines()[-1])
    dev = f'CPU ({threads} thread{"s" * (threads > 1)}, {os.cpu_count()} cores on the machine, OMP_WAIT_POLICY={os.environ.get("OMP_WAIT_POLICY", "PASSIVE")})'
    print(f'\nSplatting 8192 pixel-aligned Gaussians (2 views, 64x64) into a 64x64 target on {dev}; median of {repeats} runs '
          '(dense: 1 run). Peak memory: peak RSS above the post-setup RSS, fresh process per row')
    key = {(r['method'], r['d'], r['mode']): r for r in rows}
    print(f"{'d':>4} {'mode':<8} {'fused ms':>9} {'tiled ms':>9} {'dense ms':>9} {'dense/fused':>11} {'dense/tiled':>11} {'tiled/fused':>11}"
          f" {'fused MB':>9} {'tiled MB':>9} {'dense MB':>9}")
    ratios = []
    for d in (64, 384):
        for mode in ('fwd', 'fwd+bwd'):
            f, t, dn = key['fused', d, mode], key['tiled', d, mode], key['dense', d, mode]
            ratios.append(dict(d=d, mode=mode, dense_over_fused=dn['ms'] / f['ms'], dense_over_tiled=dn['ms'] / t['ms'], tiled_over_fused=t['ms'] / f['ms']))
            print(f"{d:>4} {mode:<8} {f['ms']:9.1f} {t['ms']:9.1f} {dn['ms']:9.1f} {dn['ms'] / f['ms']:10.1f}x {dn['ms'] / t['ms']:10.1f}x "
                  f"{t['ms'] / f['ms']:10.1f}x {f['peak_mb']:9.1f} {t['peak_mb']:9.1f} {dn['peak_mb']:9.1f}")
    for a in agree: print('agreement', json.dumps({k: (f'{v:.2e}' if isinstance(v, float) else v) for k, v in a.items()}))
    for a in triton_rows: print('triton (interpreter, correctness only)', json.dumps({k: (f'{v:.2e}' if isinstance(v, float) else v) for k, v in a.items()}))
    if out:
        from splat_and_distill.core import atomic_write_json
        atomic_write_json(out, dict(device=dev, rows=rows, ratios=ratios, agreement=agree, triton_interpreter=triton_rows))
