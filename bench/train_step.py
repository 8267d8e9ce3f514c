"""Time one Splat-and-Distill training step, split into teacher, reconstructor, lifting+splatting, student, loss and update.

CPU, cpu_demo size (EfficientNet-Lite0 teacher, 128 px, batch 4, K=4096, lifting at 32 px):
    python bench/train_step.py
CUDA, 224 px ViT-S/14 (random init unless --weights is given; K=65536, LoRA rank 8, full-resolution lifting, gsplat):
    python bench/train_step.py --mode cuda
Add `--geometry reconstructor` to include a (randomly initialised, cpu_default-sized) feed-forward reconstructor.
Prints mean wall-clock milliseconds per step of each section and the process CPU seconds per step (on a machine shared
with other jobs, CPU seconds are the better estimate of the unloaded wall-clock time on 1 thread).
"""
import argparse, json, sys, tempfile, time
from pathlib import Path
import torch
from splat_and_distill.core import set_threads, batch_to
from splat_and_distill.train import make_config, validate_config, load_scenes, build_models, make_criterion, make_optimizer, \
    step_batch, downscale_batch, lift_scale, StepTimer
from splat_and_distill.distill import ema_due, ema_update
from splat_and_distill.lift import lift_and_splat_batch
from splat_and_distill.scenes import TripletDataset

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--mode', choices=['cpu', 'cuda'], default='cpu')
    p.add_argument('--steps', type=int, default=5, help='timed steps (after 2 warm-up steps)')
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--geometry', choices=['gt', 'reconstructor'], default='gt')
    p.add_argument('--weights', default=None, help='DINOv2 ViT-S/14 weights file (cuda mode; random init without it)')
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help='any TrainConfig override')
    a = p.parse_args(argv)
    if a.mode == 'cuda':
        if not torch.cuda.is_available(): sys.exit('bench: --mode cuda needs a GPU')
        ov = dict(backbone='dinov2_vits14', weights=a.weights, policy='lora', lora_rank=8, out_dim=65536, height=224, width=224,
                  render_scale=1.0, splat_backend='gsplat', device='cuda', batch_size=8)
    else:
        ov = dict(device='cpu', threads=a.threads)
    ov.update(dict(kv.split('=', 1) for kv in a.set))
    ov.update(train_scenes=2, val_scenes=0, n_views=12, cache_dir=None)
    tmp = None
    if a.geometry == 'reconstructor':
        from splat_and_distill.reconstruct import Reconstructor, cpu_default, save_reconstructor
        tmp = tempfile.TemporaryDirectory()
        size = 64 if a.mode == 'cpu' else 256  # the reconstructor presets cpu_default / gpu_256
        save_reconstructor(tmp.name, Reconstructor(cpu_default(size=size)))
        ov.update(geometry='reconstructor', reconstructor=tmp.name, render_scale=None)  # lift at the reconstructor's size
    cfg = make_config('cpu_demo', {k: v for k, v in ov.items() if v is not None or k == 'weights'})
    if cfg.backbone.startswith('dinov2') and not cfg.weights:
        cfg.weights = None  # random init for timing: bypass the weights-file requirement of training
        import splat_and_distill.train as T
        from splat_and_distill.backbones import make_backbone
        T.make_backbone = lambda name, weights=None: make_backbone(name, weights=None, pretrained=False)
    else: validate_config(cfg)
    device = torch.device(cfg.device)
    if device.type == 'cpu': set_threads(cfg.threads)
    ds = TripletDataset(load_scenes(cfg, 'train'), gap=cfg.gap)
    m = build_models(cfg, device)
    student, teacher, recon = m['student'], m['teacher'], m['reconstructor']
    crit, (opt, sched) = make_criterion(cfg).to(device), make_optimizer(cfg, student)
    timer = StepTimer()
    hp, wp = teacher.backbone.token_grid(cfg.height, cfg.width)
    cpu0 = None
    for step in range(a.steps + 2):
        if step == 2: timer, cpu0 = StepTimer(), time.process_time()
        batch = batch_to(step_batch(ds, step, cfg.batch_size, cfg.seed), device)
        with torch.no_grad():
            with timer.section('teacher'):
                ctx = teacher.tokens(batch['context_rgb'].flatten(0, 1))
            scale = lift_scale(cfg, (cfg.height, cfg.width), (hp, wp), recon)
            small = downscale_batch(batch, scale)
            geo = {}
            with timer.section('reconstructor'):
                if recon is not None:
                    from splat_and_distill.reconstruct import to_gaussians
                    geo = dict(gaussians=to_gaussians(recon(small['context_rgb'], small['context_K'], small['context_c2w'])))
            with timer.section('lifting+splatting'):
                tokens, valid = lift_and_splat_batch(lambda x: ctx, small, blend=cfg.blend_alpha, token_grid=(hp, wp),
                                                     backend=cfg.splat_backend, **geo)
        with timer.section('student'):
            out = student(batch['target_rgb'])
        with timer.section('loss'):
            with torch.no_grad(): t_logits = teacher.logits(tokens)
            loss = crit(out['logits'], t_logits, valid.flatten(1), step=step)
        with timer.section('backward+update'):
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); sched.step()
            if ema_due(step + 1, cfg.ema_every): ema_update(teacher, student, cfg.ema_momentum)
        timer.count += 1
    cpu = (time.process_time() - cpu0) / a.steps
    ms = {k: round(1000 * v, 1) for k, v in timer.mean().items()}
    total = sum(ms.values())
    print(f'device={device} backbone={cfg.backbone} {cfg.height}x{cfg.width} batch={cfg.batch_size} K={cfg.out_dim} '
          f'lift at {scale:.3g} x image size, geometry={cfg.geometry} threads={torch.get_num_threads()} steps={a.steps}')
    for k, v in ms.items(): print(f'  {k:<18} {v:9.1f} ms  ({100 * v / max(total, 1e-9):4.1f}%)')
    print(f'  {"total":<18} {total:9.1f} ms/step wall; {cpu:.2f} process CPU s/step')
    return dict(ms=ms, total_ms=total, cpu_s_per_step=cpu)

if __name__ == '__main__': main()
