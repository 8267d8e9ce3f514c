"""Peak memory of the real-data pipeline as the number of scenes grows: streamed (FolderTripletDataset) vs all in memory (read_scene).

    python bench/data_memory.py                     # 10 and 100 scenes of 10 frames at 192x288, 20 batches of 4 triplets each

Each measurement runs in a fresh process; it reports the peak resident set size above the process's size after imports
(VmHWM after resetting it with /proc/self/clear_refs; Linux), so every allocation counts (PIL, numpy and torch alike). The scene folders are written once into a
temporary folder in the authors' ScanNet++ layout.
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

CHILD = r'''
import json, resource, sys, torch
from splat_and_distill.scenes import scene_folders, FolderTripletDataset, read_scene, TripletDataset
root, mode, n, size, batches = sys.argv[1], sys.argv[2], int(sys.argv[3]), (int(sys.argv[4]), int(sys.argv[5])), int(sys.argv[6])
folders = scene_folders(root)[:n]
def status(key): return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key + ':'))
open('/proc/self/clear_refs', 'w').write('5')        # reset the peak (VmHWM) to the current size, after the imports
base = status('VmRSS')
ds = FolderTripletDataset(folders, gap=4, size=size) if mode == 'stream' else TripletDataset([read_scene(f, size=size) for f in folders], gap=4)
loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
for i, b in zip(range(batches), loader): pass
print(json.dumps(dict(peak_kb=status('VmHWM') - base, items=len(ds))))
'''

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--scenes', type=int, nargs='+', default=[10, 100])
    p.add_argument('--frames', type=int, default=10)
    p.add_argument('--height', type=int, default=192)
    p.add_argument('--width', type=int, default=288)
    p.add_argument('--batches', type=int, default=20)
    a = p.parse_args(argv)
    import torch
    from splat_and_distill.scenes import make_scene
    from splat_and_distill.scene_io import make_snd_scannetpp_folder
    env = dict(os.environ, OMP_NUM_THREADS='1')
    with tempfile.TemporaryDirectory() as d:
        t = time.time()
        base = [make_scene(s, a.frames, (a.height, a.width)) for s in range(3)]
        root = make_snd_scannetpp_folder(Path(d) / 'snd', [base[i % 3] for i in range(max(a.scenes))], skip_frames=())
        print(f'wrote {max(a.scenes)} scenes x {a.frames} frames at {a.height}x{a.width} in {time.time() - t:.0f} s')
        rows = []
        for mode in ('stream', 'memory'):
            for n in a.scenes:
                out = subprocess.run([sys.executable, '-c', CHILD, str(root), mode, str(n), str(a.height), str(a.width), str(a.batches)],
                                     capture_output=True, text=True, env=env, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1]); rows.append((mode, n, r))
                print(f'{mode:>7}: {n:4d} scenes ({r["items"]:5d} triplets): peak RSS above baseline {r["peak_kb"] / 1024:8.1f} MB')
    get = lambda m, n: next(r['peak_kb'] for mm, nn, r in rows if mm == m and nn == n)
    lo, hi = min(a.scenes), max(a.scenes)
    print(f'growth {lo} -> {hi} scenes: streamed x{get("stream", hi) / max(get("stream", lo), 1):.2f}, in memory x{get("memory", hi) / max(get("memory", lo), 1):.2f}')

if __name__ == '__main__': main()
