"""One prepared check for a machine with one CUDA GPU: everything in this repository that needs CUDA, in at most 8 minutes.

Steps, each a subprocess with its own time budget (seconds; a step over budget is stopped, reported as `timeout`, and the
check goes on):

  gsplat_build   180  import gsplat's CUDA extension (gsplat 1.5.3 JIT-compiles it on first use: minutes, needs the CUDA
                      toolkit) and render one Gaussian: what `render(backend='auto')` will pick, and why
  pytest_cuda     60  tests/test_splat.py, tests/test_triton.py, tests/test_gsplat_cpu.py on the GPU (their `cuda` tests:
                      gsplat vs torch vs Triton values and gradients, d up to 768)
  cells_06a       30  chapter 06a with its `#| cuda` cells (nbdev_test --flags cuda; nothing written back)
  cells_08        40  chapter 08 with its `#| cuda` cells
  bench_splat     55  bench/splat.py --device cuda --ds 3,64,384: gsplat one call, gsplat 3 channels at a time, Triton,
                      torch; forward and forward+backward; 256x256 and 576x880
  train_step      25  bench/train_step.py --preset paper_vits14 --device cuda (576x880, random ViT-S/14)
  train_step_bf16 25  the same with --set amp=bf16
  snd_train_100   65  snd_train --preset paper_vits14 --backbone dinov2_vits14:random, 100 steps at 576x880 on a
                      fabricated scene folder in the authors' ScanNet++ layout (2 procedural scenes, written while
                      gsplat builds) with a randomly initialised tiny reconstructor

Writes OUT/gpu_check.json (machine, versions, each step's command, status, wall time, budget and parsed figures) and
OUT/gpu_check.log (every step's output), and prints a summary table.

Usage: python bench/gpu_check.py [--out runs/gpu_check] [--only step,step] [--dry-run]
  --dry-run prints the plan (steps, budgets, commands) and exits; it runs anywhere, no GPU needed.
"""
import argparse, json, os, platform, re, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TOTAL_BUDGET = 480

def probe():
    "What `render(backend='auto')` picks on this GPU: gsplat's extension loaded (built on first import) and one Gaussian rendered."
    import torch
    from splat_and_distill import render as R
    t0, dev = time.time(), torch.device('cuda')
    why = R._gsplat_why_not(dev)
    return dict(gsplat_ok=why is None, why_not=why, auto=R._auto_backend(dev), build_s=round(time.time() - t0, 1),
                device=torch.cuda.get_device_name(), smem_optin=R._smem_optin(dev))


def train_step(argv):
    sys.path.insert(0, str(ROOT / 'bench'))
    import train_step as ts
    r = ts.main(argv)
    return dict(s_per_step=round(r['s_per_step'], 4), peak_gb=round(r['peak_gb'], 2), projected_h=round(r['projected_h'], 1))


def snd_train(argv):
    from splat_and_distill.train import snd_train as run
    run(argv)
    rows = [json.loads(l) for l in (Path(argv[argv.index('--out') + 1]) / 'metrics.jsonl').read_text().splitlines()]
    last = [r for r in rows if 'loss' in r][-1:]
    return dict(rows=len(rows), step=last[0].get('step') if last else None, loss=round(last[0]['loss'], 4) if last else None,
                sec_per_step=round(last[0]['sec_per_step'], 4) if last and 'sec_per_step' in last[0] else None)


def fabricate(out: Path):
    "Two procedural scenes at 576x880 in the authors' layout, and a randomly initialised tiny reconstructor."
    import torch
    from splat_and_distill.scenes import make_scene
    from splat_and_distill.scene_io import make_snd_scannetpp_folder
    from splat_and_distill.reconstruct import Reconstructor, tiny, save_reconstructor
    make_snd_scannetpp_folder(out / 'data', [make_scene(s, 12, (576, 880)) for s in (0, 1)])
    torch.manual_seed(0); save_reconstructor(out / 'recon', Reconstructor(tiny(size=32)))
    (out / 'READY').write_text('ok')


def plan(out: Path) -> list[dict]:
    "The steps: name, budget (s), commands (argv lists, run in order), what it checks."
    fab = out / 'fabricated'
    me = [PY, 'bench/gpu_check.py', '--_call']
    snd = me + ['snd_train', '--preset', 'paper_vits14', '--backbone', 'dinov2_vits14:random', '--data', str(fab / 'data'),
                 '--reconstructor', str(fab / 'recon'), '--steps', '100', '--val_scenes', '1', '--val_pairs', '2',
                 '--log_every', '10', '--val_every', '0', '--ckpt_every', '0', '--out', str(out / 'snd_train_run'),
                 '--device', 'cuda', '--no-progress', '--require_masks', '--workers', '2']
    nb = lambda n: [['nbdev_test', '--flags', 'cuda', '--path', f'nbs/{n}.ipynb']]
    return [
        dict(name='gsplat_build', budget=180, cmds=[me + ['probe']], what="gsplat's extension builds and renders one Gaussian"),
        dict(name='pytest_cuda', budget=60, cmds=[[PY, '-m', 'pytest', '-q', '-rs', 'tests/test_splat.py', 'tests/test_triton.py',
                                                   'tests/test_gsplat_cpu.py']], what='CUDA tests: gsplat/Triton/torch parity'),
        dict(name='cells_06a', budget=30, cmds=nb('06a_render'), what='chapter 06a with #| cuda cells'),
        dict(name='cells_08', budget=40, cmds=nb('08_reconstruct'), what='chapter 08 with #| cuda cells'),
        dict(name='bench_splat', budget=55, cmds=[[PY, 'bench/splat.py', '--device', 'cuda', '--ds', '3,64,384', '--repeats', '3',
                                                   '--out', str(out / 'bench_splat.json')]], what='splatter timings'),
        dict(name='train_step', budget=25, cmds=[me + ['train_step', '--preset', 'paper_vits14', '--device', 'cuda', '--steps', '10']],
             what='paper_vits14 step, fp32'),
        dict(name='train_step_bf16', budget=25, cmds=[me + ['train_step', '--preset', 'paper_vits14', '--device', 'cuda',
                                                       '--steps', '10', '--set', 'amp=bf16']], what='paper_vits14 step, bf16'),
        dict(name='snd_train_100', budget=65, cmds=[['wait-for', str(fab / 'READY')], snd],
             what='100 steps of snd_train on the authors\' layout at 576x880'),
    ]


def run_step(step: dict, log) -> dict:
    t0, out_text, status = time.time(), '', 'ok'
    for cmd in step['cmds']:
        left = step['budget'] - (time.time() - t0)
        if cmd[0] == 'wait-for':                                            # a file written by a background job
            while not Path(cmd[1]).exists() and time.time() - t0 < step['budget']: time.sleep(1)
            if not Path(cmd[1]).exists(): status = 'timeout'; break
            continue
        log.write(f'\n$ {" ".join(cmd)}\n'); log.flush()
        try:
            p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(left, 1))
            out_text += p.stdout + p.stderr
            if p.returncode != 0: status = f'fail (rc {p.returncode})'
        except subprocess.TimeoutExpired as e:
            out_text += (e.stdout or b'').decode(errors='replace') if isinstance(e.stdout, bytes) else (e.stdout or '')
            status = 'timeout'
        log.write(out_text); log.flush()
        if status != 'ok': break
    res = dict(name=step['name'], what=step['what'], budget_s=step['budget'], wall_s=round(time.time() - t0, 1), status=status,
               commands=[' '.join(c) for c in step['cmds']])
    res['figures'] = [json.loads(l.split('GPU_CHECK', 1)[1]) for l in out_text.splitlines() if l.startswith('GPU_CHECK ')]
    m = re.findall(r'(\d+) passed|(\d+) failed|(\d+) skipped', out_text)
    if step['name'] == 'pytest_cuda' and m:
        res['figures'].append({k: sum(int(x[i] or 0) for x in m) for i, k in enumerate(('passed', 'failed', 'skipped'))})
    if step['name'] == 'bench_splat':
        try: res['figures'] += json.loads(Path(step['cmds'][0][-1]).read_text())['ratios']   # d = 384 ratios; rows in its file
        except (OSError, ValueError): pass
    return res


def summary(results: list[dict]) -> str:
    rows = [f'{"step":<16} {"status":<14} {"wall s":>7} {"budget":>7}  figures']
    for r in results:
        figs = '; '.join(json.dumps(f)[:150] for f in r['figures'])
        rows.append(f'{r["name"]:<16} {r["status"]:<14} {r["wall_s"]:>7} {r["budget_s"]:>7}  {figs}')
    rows.append(f'{"total":<16} {"":<14} {sum(r["wall_s"] for r in results):>7.1f} {sum(r["budget_s"] for r in results):>7}')
    return '\n'.join(rows)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ['--_call']:                                         # internal: one step's work, its figures as JSON
        name, rest = argv[1], argv[2:]
        fig = dict(probe=lambda: probe(), train_step=lambda: train_step(rest), snd_train=lambda: snd_train(rest))[name]()
        print('GPU_CHECK', json.dumps(fig)); return
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default='runs/gpu_check', help='output folder (JSON and log; default runs/gpu_check, under the one output root)')
    p.add_argument('--only', default=None, help='comma-separated step names (default: all)')
    p.add_argument('--dry-run', action='store_true', help='print the plan and each step\'s time budget, run nothing')
    p.add_argument('--_fabricate', default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._fabricate: fabricate(Path(a._fabricate)); return
    out = Path(a.out).resolve()
    steps = [s for s in plan(out) if a.only is None or s['name'] in a.only.split(',')]
    assert sum(s['budget'] for s in plan(out)) <= TOTAL_BUDGET
    if a.dry_run:
        print(f'gpu_check plan: {len(steps)} steps, {sum(s["budget"] for s in steps)} s of budget (at most {TOTAL_BUDGET} s); output in {out}')
        for s in steps:
            print(f'  {s["name"]:<16} {s["budget"]:>4} s  {s["what"]}')
            for c in s['cmds']: print(f'{"":>26}$ {" ".join(c)[:160]}')
        return steps
    import torch
    if not torch.cuda.is_available(): sys.exit('gpu_check: needs a CUDA GPU (python bench/gpu_check.py --dry-run shows the plan)')
    out.mkdir(parents=True, exist_ok=True)
    os.environ['PYTHONPATH'] = str(ROOT)                               # every step imports this checkout
    fab = None
    if any(s['name'] == 'snd_train_100' for s in steps):               # written on the CPUs while gsplat builds
        fab = subprocess.Popen([PY, __file__, '--_fabricate', str(out / 'fabricated')], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=open(out / 'fabricate.log', 'w'))
    results, t0 = [], time.time()
    with open(out / 'gpu_check.log', 'w') as log:
        for s in steps:
            print(f'[{time.time() - t0:6.1f} s] {s["name"]} (budget {s["budget"]} s) ...', flush=True)
            results.append(run_step(s, log))
            print(f'          {results[-1]["status"]} in {results[-1]["wall_s"]} s', flush=True)
    if fab is not None and fab.poll() is None: fab.kill()
    import gsplat
    info = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda, gsplat=gsplat.__version__,
                python=platform.python_version(), total_s=round(time.time() - t0, 1), budget_s=TOTAL_BUDGET)
    (out / 'gpu_check.json').write_text(json.dumps(dict(machine=info, steps=results), indent=1))
    print(f'\n{info["device"]}  torch {info["torch"]}  CUDA {info["cuda"]}  gsplat {info["gsplat"]}')
    print(summary(results))
    print(f'\nwritten: {out / "gpu_check.json"}, {out / "gpu_check.log"}')
    return results


if __name__ == '__main__': main()
