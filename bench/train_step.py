"""Time one Splat-and-Distill training step (teacher, reconstructor, lifting+splatting, student+loss+update) and its peak memory.

CPU, cpu_demo size (EfficientNet-Lite0 teacher, 128 px, batch 4, K=4096, lifting at 32 px):
    python bench/train_step.py
The paper's configuration (ViT-S/14, K=65536, LoRA rank 8, batch 1, lifting at full size in 64-channel chunks), reduced
size on CPU (random ViT-S/14: no weights needed for timing):
    python bench/train_step.py --preset paper_vits14 --set height=112 --set width=168 --steps 3
The same at the paper's 576x880 on a GPU, 150 steps, with the projected time of the 300k-step schedule:
    python bench/train_step.py --preset paper_vits14 --device cuda --steps 150 [--set amp=bf16]
Add `--geometry reconstructor` to include a randomly initialised reconstructor (cpu_default architecture) at the
lifting resolution. Procedural scenes stand in for the data (timing needs no real captures). Peak memory: CUDA
`max_memory_allocated`, or on CPU the process's peak resident set size above its size before the timed steps (Linux).
On a machine shared with other jobs, process CPU seconds are the better estimate of unloaded 1-thread wall time.
"""
import argparse, sys, tempfile, time
import torch
from splat_and_distill.core import set_threads, batch_to
from splat_and_distill.runs import parse_sets
from splat_and_distill.train import (make_config, validate_config, load_scenes, build_models, make_criterion,
    make_optimizer, teacher_side, autocast, StepTimer, backbone_name, TrainConfig)
from splat_and_distill.scenes import step_batch
from splat_and_distill.lift import lift_scale
from splat_and_distill.distill import distill_step
from splat_and_distill.scenes import TripletDataset

def _rss(key):
    try: return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key + ':')) / 2**20  # GB
    except (OSError, StopIteration): return float('nan')

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--preset', default='cpu_demo', help='cpu_demo, paper_vits14 or paper_vitb14')
    p.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    p.add_argument('--steps', type=int, default=5, help='timed steps (after 2 warm-up steps)')
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--geometry', choices=['gt', 'reconstructor'], default='gt')
    p.add_argument('--weights', default=None, help='DINOv2 weights file (default for DINOv2 presets: random init, fine for timing)')
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help='any TrainConfig override')
    a = p.parse_args(argv)
    if a.device == 'cuda' and not torch.cuda.is_available(): sys.exit('bench: --device cuda needs a GPU')
    ov = dict(device=a.device, threads=a.threads, data='procedural', train_scenes=2, val_scenes=0, n_views=12, gap=8, cache_dir=None,
              geometry='gt', splat_backend='gsplat' if a.device == 'cuda' else 'torch')
    ov.update(parse_sets(TrainConfig, a.set))                          # the one --set syntax of every command (chapter 00)
    cfg = make_config(a.preset, {k: v for k, v in ov.items() if v is not None})
    if backbone_name(cfg.backbone)[0].startswith('dinov2'):
        if a.weights: cfg.weights = a.weights
        elif not cfg.backbone.endswith(':random'): cfg.backbone += ':random'
    tmp = None
    if a.geometry == 'reconstructor':
        from splat_and_distill.reconstruct import Reconstructor, cpu_default, save_reconstructor
        tmp = tempfile.TemporaryDirectory()
        save_reconstructor(tmp.name, Reconstructor(cpu_default()))
        cfg.geometry, cfg.reconstructor = 'reconstructor', tmp.name
    validate_config(cfg)
    device = torch.device(cfg.device)
    if device.type == 'cpu': set_threads(cfg.threads)
    ds = TripletDataset(load_scenes(cfg, 'train'), gap=cfg.gap)
    m = build_models(cfg, device)
    student, teacher, recon = m['student'], m['teacher'], m['reconstructor']
    del m['original']
    crit, (opt, sched) = make_criterion(cfg).to(device), make_optimizer(cfg, student)
    hp, wp = teacher.backbone.token_grid(cfg.height, cfg.width)
    scale = lift_scale(cfg, (cfg.height, cfg.width), (hp, wp), recon)
    timer, cpu0, t0 = StepTimer(), None, None
    for step in range(a.steps + 2):
        if step == 2:                                                  # after warm-up: reset clocks and peaks
            timer, cpu0, t0 = StepTimer(), time.process_time(), time.perf_counter()
            if device.type == 'cuda': torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
            else:
                try: open('/proc/self/clear_refs', 'w').write('5'); base = _rss('VmRSS')
                except OSError: base = float('nan')
        batch = batch_to(step_batch(ds, step, cfg.batch_size, cfg.seed), device)
        tokens, valid = teacher_side(batch, teacher, cfg, recon, timer)
        with timer.section('student+loss+update'), autocast(cfg, device):
            distill_step(student, teacher, crit, opt, batch['target_rgb'], tokens, valid, step, cfg.ema_every, cfg.ema_momentum, cfg.grad_clip, sched)
        timer.count += 1
    if device.type == 'cuda': torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / a.steps
    cpu = (time.process_time() - cpu0) / a.steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == 'cuda' else _rss('VmHWM') - base
    ms = {k: round(1000 * v, 1) for k, v in timer.mean().items()}
    total = sum(ms.values())
    lift_hw = (max(4, round(cfg.height * scale / 4) * 4), max(4, round(cfg.width * scale / 4) * 4))
    name = torch.cuda.get_device_name() if device.type == 'cuda' else f'cpu x{torch.get_num_threads()} threads'
    print(f'preset={cfg.preset} device={name} backbone={cfg.backbone} {cfg.height}x{cfg.width} batch={cfg.batch_size} K={cfg.out_dim} '
          f'lift at {lift_hw[0]}x{lift_hw[1]} channel_chunk={cfg.channel_chunk} amp={cfg.amp} geometry={cfg.geometry} steps={a.steps}')
    for k, v in ms.items(): print(f'  {k:<20} {v:9.1f} ms  ({100 * v / max(total, 1e-9):4.1f}%)')
    print(f'  {"total":<20} {total:9.1f} ms/step ({wall:.3f} s/step wall; {cpu:.2f} process CPU s/step)')
    print(f'  peak memory          {peak:9.2f} GB ({"CUDA max_memory_allocated" if device.type == "cuda" else "resident set above the pre-step size"})')
    print(f'  projected schedule   {cfg.steps} steps x {wall:.3f} s = {cfg.steps * wall / 3600:.1f} h on this device (batch {cfg.batch_size}; '
          f'torchrun on N devices: same steps, N x the triplets)')
    return dict(ms=ms, total_ms=total, s_per_step=wall, cpu_s_per_step=cpu, peak_gb=peak, projected_h=cfg.steps * wall / 3600)

if __name__ == '__main__': main()
