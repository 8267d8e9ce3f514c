"""Cost of 3D-consistent teacher features, side by side on the same scenes and held-out views: FiT3D's per-scene
optimisation (stage 1 of chapter 12, to convergence) against Splat and Distill's feed-forward lifting of one triplet
(chapter 07's `lift_and_splat_details`), with the feature error each reaches (token cosine to the teacher's own
features of the held-out views).

    python bench/lift_cost.py                         # 2 procedural scenes, 128 px, 24 views, cpu_fit3d stage 1 (300 steps), lifting at 64 px
    python bench/lift_cost.py --scenes 1 --steps 100  # quicker
    python bench/lift_cost.py --reconstructor runs/recon   # geometry from chapter 08's reconstructor for both methods

Timing: stage 1 counts initialisation (teacher on the training views, initial points, optimiser) and the optimisation
steps, not the held-out evaluations that draw its curve; "converged" is the first evaluation within 0.005 of the best
held-out cosine the run reaches (`converged_at`). Lifting counts the teacher on the two context views, the geometry
(ground-truth depth, or the reconstructor's forward pass) at `--lift_scale` of the image size as the study's
distillation runs it (teacher on the full-size views), upsampling, splatting, blending and downsampling; median over
the held-out triplets after one warm-up. Both are reported as wall seconds and as process CPU seconds; with one thread
on a machine shared with other jobs, CPU seconds are the better estimate of unloaded wall time, and the ratio of the
two methods measured in this one run is meaningful either way.
"""
import argparse, json, os, sys, time
import numpy as np
import torch
from splat_and_distill.core import set_threads, atomic_write_json
from splat_and_distill.fit3d import fit3d_config, validate_fit3d_config, fit_scene, lift_metrics, reconstructor_geometry
from splat_and_distill.backbones import make_backbone
from splat_and_distill.scenes import load_or_make_scene, scene_seeds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--scenes', type=int, default=2, help='procedural training scenes (scene_seeds train 0..n-1)')
    p.add_argument('--size', type=int, default=None, help='image size (square; default: cpu_fit3d, 128)')
    p.add_argument('--lift_scale', type=float, default=None, help="lifting and splatting at this fraction of the size (default: cpu_fit3d, 0.5: the study's 64 px)")
    p.add_argument('--views', type=int, default=24, help='views per scene')
    p.add_argument('--steps', type=int, default=None, help='stage-1 steps (default: cpu_fit3d, 300)')
    p.add_argument('--reconstructor', default=None, help="checkpoint of chapter 08's reconstructor: geometry for both methods")
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--out', default=None, help='optional JSON file for the results')
    a = p.parse_args(argv)
    set_threads(a.threads)
    kw = dict(n_views=a.views, threads=a.threads, progress=False)
    if a.size: kw.update(height=a.size, width=a.size)
    if a.lift_scale: kw['lift_scale'] = a.lift_scale
    if a.steps: kw['fit_steps'] = a.steps
    if a.reconstructor: kw.update(geometry='reconstructor', reconstructor=a.reconstructor)
    try: cfg = validate_fit3d_config(fit3d_config('cpu_fit3d', **kw))
    except (ValueError, FileNotFoundError) as e: p.exit(2, f'lift_cost: error: {e}\n')
    teacher = make_backbone(cfg.backbone.partition(':')[0]).eval()
    recon = None
    if a.reconstructor:
        from splat_and_distill.reconstruct import load_reconstructor
        recon = load_reconstructor(a.reconstructor, device='cpu').eval().requires_grad_(False)
    geo = None if recon is None else reconstructor_geometry(recon)
    load0 = os.getloadavg()
    rows = []
    for seed in scene_seeds('train', a.scenes):
        scene = load_or_make_scene(seed, cfg.n_views, cfg.height)
        fit = fit_scene(scene, teacher, cfg, recon, progress=False)
        lift_metrics(teacher, scene, fit['triplets'][:1], blend_alpha=0.5, geometry=geo, scale=cfg.lift_scale)   # warm-up
        lift = lift_metrics(teacher, scene, fit['triplets'], blend_alpha=0.5, geometry=geo, scale=cfg.lift_scale)
        lift1 = lift_metrics(teacher, scene, fit['triplets'], blend_alpha=1.0, geometry=geo, scale=cfg.lift_scale)
        last = fit['curve'][-1]
        rows.append(dict(scene=seed, n_gaussians=fit['n_gaussians'], steps=cfg.fit_steps, fit_wall_s=fit['fit_seconds'], fit_cpu_s=fit['fit_cpu_seconds'],
                         converged_step=fit['converged_step'], converged_wall_s=fit['converged_seconds'], converged_cpu_s=fit['converged_cpu_seconds'],
                         fit3d_token_cos=last['token_cos'], fit3d_pixel_cos=last['pixel_cos'], fit3d_psnr=last['psnr'],
                         lift_wall_s=lift['seconds_per_triplet'], lift_cpu_s=lift['cpu_seconds_per_triplet'],
                         lift_token_cos=lift['token_cos'], lift_noblend_token_cos=lift1['token_cos'], lift_pixel_cos=lift['pixel_cos'],
                         curve=[{k: round(r[k], 4) for k in ('step', 'seconds', 'cpu_seconds', 'token_cos')} for r in fit['curve']]))
        r = rows[-1]
        print(f"scene {seed}: stage 1 converged after {r['converged_step']} steps, {r['converged_cpu_s']:.1f} CPU s "
              f"({r['converged_wall_s']:.1f} s wall; {r['steps']} steps {r['fit_cpu_s']:.1f} CPU s), held-out cos {r['fit3d_token_cos']:.3f} | "
              f"lifting one triplet {r['lift_cpu_s']:.3f} CPU s ({r['lift_wall_s']:.3f} s wall), cos {r['lift_token_cos']:.3f} "
              f"(no blending {r['lift_noblend_token_cos']:.3f})", flush=True)
    m = lambda k: float(np.mean([r[k] for r in rows]))
    summary = dict(converged_cpu_s=m('converged_cpu_s'), fit_cpu_s=m('fit_cpu_s'), lift_cpu_s=m('lift_cpu_s'),
                   converged_wall_s=m('converged_wall_s'), fit_wall_s=m('fit_wall_s'), lift_wall_s=m('lift_wall_s'),
                   ratio_converged_cpu=m('converged_cpu_s') / m('lift_cpu_s'), ratio_full_cpu=m('fit_cpu_s') / m('lift_cpu_s'),
                   ratio_converged_wall=m('converged_wall_s') / m('lift_wall_s'),
                   fit3d_token_cos=m('fit3d_token_cos'), lift_token_cos=m('lift_token_cos'), lift_noblend_token_cos=m('lift_noblend_token_cos'))
    geom = 'reconstructor' if recon is not None else 'ground-truth depth'
    print(f"\n{len(rows)} procedural scene(s), {cfg.n_views} views at {cfg.height}x{cfg.width} (lifting at {cfg.lift_scale:g} of it), geometry: {geom}, teacher {cfg.backbone}, "
          f"{torch.get_num_threads()} thread(s); load average {load0[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    print(f"{'':34} {'CPU s':>9} {'wall s':>9} {'held-out token cos':>19}")
    print(f"{'FiT3D stage 1, to convergence':34} {summary['converged_cpu_s']:9.2f} {summary['converged_wall_s']:9.2f} {summary['fit3d_token_cos']:19.3f}")
    print(f"{'FiT3D stage 1, ' + str(cfg.fit_steps) + ' steps':34} {summary['fit_cpu_s']:9.2f} {summary['fit_wall_s']:9.2f}")
    print(f"{'feed-forward lifting, one triplet':34} {summary['lift_cpu_s']:9.3f} {summary['lift_wall_s']:9.3f} {summary['lift_token_cos']:19.3f}"
          f"  (no blending: {summary['lift_noblend_token_cos']:.3f})")
    print(f"ratio per scene-to-convergence / per triplet: {summary['ratio_converged_cpu']:.0f}x (CPU), {summary['ratio_converged_wall']:.0f}x (wall); "
          f"full {cfg.fit_steps}-step run: {summary['ratio_full_cpu']:.0f}x (CPU)")
    if a.out: atomic_write_json(a.out, dict(rows=rows, summary=summary, config={**vars(a), 'size': cfg.height, 'lift_scale': cfg.lift_scale},
                                            loadavg_start=load0, loadavg_end=os.getloadavg(),
                                            threads=torch.get_num_threads(), geometry=geom))


if __name__ == '__main__':
    main()
