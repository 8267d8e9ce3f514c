"Time procedural scene generation: 50 scenes x 24 views at 128x128, every output (RGB, depth, normals, labels), one CPU thread."
import argparse, os, time
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch
from splat_and_distill.scenes import make_scene

def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--n-scenes', type=int, default=50)
    p.add_argument('--n-views', type=int, default=24)
    p.add_argument('--size', type=int, default=128)
    p.add_argument('--threads', type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    make_scene(10_000, 2, 16)                                   # warm-up (imports, allocator)
    per = []
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(a.n_scenes):
        t = time.perf_counter()
        sc = make_scene(s, a.n_views, a.size)
        per.append(time.perf_counter() - t)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    per.sort()
    print(f'{a.n_scenes} scenes x {a.n_views} views at {a.size}x{a.size} on {torch.get_num_threads()} thread(s): {total:.1f} s '
          f'({total / a.n_scenes:.3f} s per scene, median {per[len(per) // 2]:.3f} s, fastest {per[0]:.3f} s; target < 60 s)')
    print(f'CPU time of this process: {cpu:.1f} s ({cpu / a.n_scenes:.3f} s per scene); wall time above exceeds it when other '
          'processes share the core')

if __name__ == '__main__': main()
