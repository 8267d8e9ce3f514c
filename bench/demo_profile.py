"""Where the classroom demo's minutes go: `snd_demo`'s stages at the demo's default settings, timed per stage and per section.

    python bench/demo_profile.py --threads 2 --out /tmp/profile.json     # geometry, probes, one seed's student (minutes)
    python bench/demo_profile.py --compare before.json after.json         # two saved profiles side by side, with ratios
    PYTHONPATH=/tmp/before python bench/demo_profile.py ...               # profile another checkout of the package

It runs `demo.run_demo` itself, the code `snd_demo` runs (geometry, probe data, the teacher's probes and one student per
seed, distilled and probed, then the figures), at `demo_default()` settings on the first `--seeds` of the demo's seeds,
in a temporary output folder (never runs/demo), in this one process (`workers=1`: the demo's pool, chapter 15, would
run the stages where the wrappers cannot see them). Nothing in the package is edited: at run time package functions are
replaced, by name, with wrappers that time them (`time.perf_counter` for wall seconds, `time.process_time` for the
process's CPU seconds over all its threads), in every module that imported them by name too, and put back afterwards.
Names that do not exist in the checkout being profiled are skipped and listed, so the script runs before and after
changes to the splatter and the lifting code.

Sections nest (the splat inside lifting inside the teacher side of a step): each row counts a section's own time,
without the sections listed under it (its "incl" columns add them), so the rows of a stage, with "(other)" for the
stage's time outside every section, add up to the stage. A section entered inside itself (a recursive call, a batch
collated inside a batch function) is counted once. Stages nest too (a student's distillation runs inside `student_run`,
whose rest is its probes); a stage's table leaves out its nested stages. On a machine shared with other jobs the wall
seconds stretch; so do the CPU seconds once the demo's threads outnumber the free cores (a thread waiting for another
that is not running spins): read the load averages printed with them, and compare profiles made under similar load.
"""
import argparse, dataclasses, functools, importlib, inspect, json, os, platform, shutil, signal, subprocess, sys, tempfile, textwrap, threading, time
from pathlib import Path

# (where, section name, active only directly inside one of these sections). `where` is 'module:function' or
# 'module:Class.method'; a bare module name is a chapter of splat_and_distill. Later entries may name what does not exist.
SECTIONS = [
    # data: scenes (read from the scene cache, rendered on a miss), triplets, batches
    ('scenes:load_or_make_scene', 'scenes', None), ('scenes:make_scene', 'scene rendering', None),
    ('scenes:TripletDataset.__getitem__', 'data', None), ('scenes:step_batch', 'data', None),
    ('torch.utils.data:default_collate', 'data', None), ('core:batch_to', 'data', None),
    ('scenes:fixed_triplets', 'validation', None), ('scenes:fixed_items', 'validation', None),
    # the reconstructor (geometry stage, and the teacher side with geometry 'reconstructor')
    ('reconstruct:recon_loss', 'loss', None), ('reconstruct:Reconstructor.forward', 'reconstructor', None),
    ('reconstruct:FeatureExtractor.forward', 'encoder', None), ('reconstruct:CrossViewAttention.forward', 'attention', None),
    ('reconstruct:cost_volume', 'cost volume', None), ('reconstruct:UNet2d.forward', 'cost U-Net', None),
    ('reconstruct:gaussian_params', 'Gaussian parameters', None),
    ('reconstruct:evaluate_reconstructor', 'validation', None), ('reconstruct:save_recon_checkpoint', 'checkpointing', None),
    # training steps of every model
    ('torch:Tensor.backward', 'backward', None), ('torch.autograd:grad', 'backward', None),   # grad: chunked_grads (chapter 00)
    ('torch.nn.utils:clip_grad_norm_', 'optimiser', None), ('torch.optim:Adam.step', 'optimiser', None),
    ('torch.optim:AdamW.step', 'optimiser', None), ('torch.optim:Optimizer.zero_grad', 'optimiser', None),
    ('torch.optim.lr_scheduler:LRScheduler.step', 'optimiser', None),
    # the teacher side of a distillation step (chapter 07, 11)
    ('train:teacher_side', 'teacher side', None),
    ('distill:DistillModel.tokens', 'teacher', ('teacher side',)),
    ('lift:downscale_batch', 'downscale', None),
    ('reconstruct:to_gaussians', 'Gaussians', None), ('gaussians:gaussians_from_depth', 'Gaussians', None),
    ('lift:lift_and_splat_batch', 'lift+splat', None), ('lift:lift_and_splat_details', 'lift+splat', None),
    ('lift:mask_aware_upsample', 'upsample', None), ('lift:naive_upsample_tokens', 'upsample', None),
    ('render:render', 'splat', None),
    ('gaussians:Gaussians.check', 'input checks', None), ('render:_check_cameras', 'input checks', None),
    ('render:prepare', 'splat plan', None), ('splat:plan_render', 'splat plan', None), ('splat:plan_splat', 'splat plan', None),
    ('splat:pixel_pairs', 'pixel pairs', None), ('splat:splat_features', 'rasterise', None),
    ('splat:project', 'project', None), ('splat:rasterize', 'rasterise', None), ('splat:bin_gaussians', 'binning', None),
    ('lift:semantic_blend', 'blending', None),
    ('lift:downsample_to_tokens', 'token sampling', None), ('lift:hole_mask', 'token sampling', None),
    # the student side of a distillation step (chapter 09)
    ('distill:distill_step', 'student step', None),
    ('distill:DistillModel.forward', 'student forward', None),
    ('distill:DistillModel.logits', 'teacher head', ('student step',)),      # the EMA teacher's logits of the targets
    ('distill:DistillLoss.forward', 'loss', None),
    ('distill:ema_update', 'EMA', None),
    ('distill:distill_stats', 'stats', ('student step',)), ('distill:token_cosines', 'stats', ('student step',)),
    ('distill:masked_mean', 'stats', ('student step',)),
    # around the distillation loop
    ('train:plan_run', 'run folder', None), ('runs:open_run', 'run folder', None), ('train:build_models', 'models', None),
    ('train:validate', 'validation', None), ('train:consistency', 'validation', None),
    ('train:_consistency_pairs', 'validation', None),
    ('train:save_checkpoint', 'checkpointing', None), ('train:export_student', 'export', None),
    # probes (chapter 10, 10a)
    ('backbones:make_backbone', 'backbone', None), ('backbones:load_probe_backbone', 'backbone', None),
    ('probe_runs:probe_backbone', lambda a, k: f"probes: {k.get('label', a[3] if len(a) > 3 else 'model')}", None),
    ('probe_runs:cached_features', 'features', None), ('probes:extract_features', 'features', None),
    ('probes:feature_stats', 'features', None), ('probes:standardize_features', 'features', None),
    ('probes:train_depth_probe', 'depth', None), ('probes:evaluate_depth_probe', 'depth', None),
    ('probes:train_normals_probe', 'normals', None), ('probes:evaluate_normals_probe', 'normals', None),
    ('probes:constant_normal', 'normals', None), ('probes:evaluate_constant_normal', 'normals', None),
    ('probes:train_seg_probe', 'segmentation', None), ('probes:evaluate_seg_probe', 'segmentation', None),
    ('probes:view_pairs', 'correspondence', None), ('probes:evaluate_correspondence', 'correspondence', None),
    ('probes:multiview_consistency_score', 'consistency', None),
    ('probe_runs:pair_measures', 'pair measures', None), ('probes:pair_matches', 'correspondence', None),
    ('hard_measures:hard_measures', 'harder measures', None),
    ('probes:real_image_check', 'real', None),
]
# the demo's stages (`demo._demo_runs`, `demo._finish_demo`); PLUMBING is the rest of `run_demo` (checks, folder, results)
STAGES = [('demo:demo_geometry', 'geometry'), ('probes:probe_splits', 'probe data'), ('demo:teacher_probes', 'teacher probes'),
          ('demo:student_run', 'student probes'), ('train:train', 'distillation'), ('demo:demo_figures', 'figures')]
PLUMBING = 'demo plumbing'
STAGE_ORDER = ['geometry', 'probe data', 'teacher probes', 'distillation', 'student probes', 'figures']   # the order they run in
PER_SEED = ('teacher probes', 'distillation', 'student probes')   # run once per seed; the other stages once per demo
FORMAT = 'snd-demo-profile/1'
ENV_KEYS = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OMP_WAIT_POLICY', 'GOMP_SPINCOUNT', 'SND_CACHE', 'PYTHONPATH')   # recorded
NOTES = {   # what a section's own time holds, where the name does not say it
    'scenes': 'scene cache reads (scene rendering: misses, rendered)', 'data': 'triplets, collation, device transfer',
    'loss': "the loss's own arithmetic (geometry: rendering loss, SSIM, depth loss and metrics around the forward and the splat)",
    'reconstructor': 'forward of the reconstructor (its layers listed under it; the rest: refinement convolutions, upsampling)',
    'optimiser': 'Adam(W) step, zero_grad, learning-rate schedule, gradient clipping',
    'teacher side': 'token grid and the rest of train.teacher_side', 'teacher': "the EMA teacher's tokens of the context views",
    'downscale': 'the batch resized to the lifting resolution', 'Gaussians': 'Gaussians from the reconstructor output or from depth',
    'lift+splat': "lifting's own work: the upsampled features packed into the Gaussians (a copy), layout changes, thresholds",
    'upsample': 'mask-aware (or bilinear) upsampling of the context tokens', 'splat': 'render(): dispatch and whatever it does itself',
    'input checks': "render()'s checks of Gaussians and cameras", 'rasterise': 'compositing: fused (the pairs of a plan gathered) or tiled (binning listed under it)',
    'splat plan': 'projection and the (Gaussian, pixel) pairs of one render, shared by all feature chunks',
    'pixel pairs': 'the (Gaussian, pixel) pairs in front-to-back order with their weights',
    'pair measures': 'measures without training: correspondence, consistency and the harder measures (chapter 10_probes_hard)',
    'blending': 'semantic blending (off at blend_alpha 1)', 'token sampling': 'downsample_to_tokens and the hole mask',
    'student step': 'the rest of distill.distill_step', 'student forward': 'student backbone and DINO head',
    'teacher head': "the EMA teacher's DINO head on the splatted targets (part of the DINO loss)",
    'stats': 'logged statistics of the step', 'EMA': 'EMA update of the teacher', 'models': 'building student, teacher, reconstructor',
    'backbone': 'building or loading a backbone', 'features': 'feature extraction and standardisation',
    '(other)': "the stage's time outside every section (loop bookkeeping, logging, progress bars, file writes)",
}

# ---- the profiler -------------------------------------------------------------------------------------------------
class Node:
    "One section (or stage) at one place in the tree: calls, inclusive seconds, and the inclusive seconds of its children."
    def __init__(self, name: str, stage: bool = False):
        self.name, self.stage, self.children = name, stage, {}
        self.calls, self.wall, self.cpu, self.child_wall, self.child_cpu = 0, 0., 0., 0., 0.

class Profiler:
    "A stack of open sections on the thread that made it; time is added on exit, to the section and to its parent's children."
    def __init__(self, name: str = 'total'):
        self.root, self.thread, self.stage_order, self.loads = Node(name, True), threading.get_ident(), [], []
        self.stack = [(self.root, 0., 0.)]

    def enter(self, name: str, stage: bool = False, within=None):
        "Open section `name` under the innermost open one; None (nothing timed) off the main thread, outside `within`, or inside itself."
        if threading.get_ident() != self.thread: return None
        top = self.stack[-1][0]
        if within is not None and top.name not in within: return None
        if not stage:
            for node, _, _ in reversed(self.stack):
                if node.name == name: return None
                if node.stage: break
        node = top.children.get(name)
        if node is None:
            node = top.children[name] = Node(name, stage)
            if stage: self.stage_order.append(name)
        if stage: self.loads.append((name, 'start', os.getloadavg()[0]))
        frame = (node, time.perf_counter(), time.process_time())
        self.stack.append(frame)
        return frame

    def exit(self, frame):
        if frame is None: return
        node, w0, c0 = frame
        dw, dc = time.perf_counter() - w0, time.process_time() - c0
        while len(self.stack) > 1 and self.stack[-1] is not frame: self.stack.pop()   # an inner section left by an exception
        self.stack.pop()
        parent = self.stack[-1][0]
        node.calls, node.wall, node.cpu = node.calls + 1, node.wall + dw, node.cpu + dc
        parent.child_wall, parent.child_cpu = parent.child_wall + dw, parent.child_cpu + dc
        if node.stage: self.loads.append((node.name, 'end', os.getloadavg()[0]))

    def section(self, name: str, stage: bool = False):
        "Context manager of one section."
        prof = self
        class _Section:
            def __enter__(s): s.frame = prof.enter(name, stage)
            def __exit__(s, *exc): prof.exit(s.frame)
        return _Section()

def wrap(fn, name, prof: Profiler, stage: bool = False, within=None):
    "`fn` timed as section `name` (a string, or a function of the call's args and kwargs giving one)."
    @functools.wraps(fn)                                  # keeps attributes such as torch's `hooked` mark of optimiser steps
    def timed(*args, **kwargs):
        frame = prof.enter(name(args, kwargs) if callable(name) else name, stage, within)
        try: return fn(*args, **kwargs)
        finally: prof.exit(frame)
    return timed

def _resolve(where: str):
    "(object holding the attribute, attribute name, is-a-class-attribute) of `where`, or the reason it does not exist."
    mod, _, attr = where.partition(':')
    mod = mod if mod.startswith('torch') else f'splat_and_distill.{mod}'
    try: owner = importlib.import_module(mod)
    except ImportError as e: return f'no module {mod} ({e})'
    *classes, fname = attr.split('.')
    for c in classes:
        owner = getattr(owner, c, None)
        if owner is None: return f'no {c} in {mod}'
    if not hasattr(owner, fname): return f'no {attr} in {mod}'
    if classes and isinstance(inspect.getattr_static(owner, fname), (staticmethod, classmethod, property)): return f'{attr} is not a plain method'
    return owner, fname, bool(classes)

def install(prof: Profiler, sections=SECTIONS, stages=STAGES) -> tuple[list, list]:
    "Wrap every section and stage that exists (everywhere a module holds the same function); returns (patches to undo, skipped names)."
    importlib.import_module('splat_and_distill.demo')          # and with it every chapter the demo runs
    pkg = [m for n, m in list(sys.modules.items()) if m is not None and (n == 'splat_and_distill' or n.startswith('splat_and_distill.'))]
    patches, skipped, done = [], [], {}
    specs = [(w, n, False, within) for w, n, within in sections] + [(w, n, True, None) for w, n in stages]
    for where, name, stage, within in specs:
        found = _resolve(where)
        if isinstance(found, str): skipped.append(f'{where} ({found})'); continue
        owner, fname, is_method = found
        orig = getattr(owner, fname)
        if not callable(orig): skipped.append(f'{where} (not callable)'); continue
        if id(orig) in done: skipped.append(f'{where} (already timed as {done[id(orig)]!r})'); continue
        timed = wrap(orig, name, prof, stage, within)
        done[id(orig)] = name if isinstance(name, str) else where
        places = [(owner, fname)] + ([] if is_method else [(m, k) for m in pkg for k, v in list(vars(m).items())
                                                             if v is orig and (m, k) != (owner, fname)])
        for o, k in places:
            patches.append((o, k, k in vars(o), vars(o).get(k)))
            setattr(o, k, timed)
    return patches, skipped

def uninstall(patches: list):
    "Put every wrapped attribute back as it was."
    for o, k, had, old in reversed(patches):
        if had: setattr(o, k, old)
        else: delattr(o, k)

# ---- tables of a profile -----------------------------------------------------------------------------------------
def stage_tables(prof: Profiler, steps: dict) -> dict:
    "Per stage: its wall/CPU seconds without nested stages, calls, steps, and rows of exclusive (and inclusive) seconds."
    out = {}
    def rows_of(node, prefix, depth, rows, nested):
        for ch in node.children.values():
            if ch.stage: nested.append(ch); continue
            rows.append(dict(section='/'.join(prefix + [ch.name]), depth=depth, calls=ch.calls, wall=ch.wall - ch.child_wall,
                             cpu=ch.cpu - ch.child_cpu, wall_incl=ch.wall, cpu_incl=ch.cpu, nested=bool(ch.children)))
            rows_of(ch, prefix + [ch.name], depth + 1, rows, nested)
    def visit(stage):
        rows, nested = [], []
        rows_of(stage, [], 0, rows, nested)
        rows.append(dict(section='(other)', depth=0, calls=stage.calls, wall=stage.wall - stage.child_wall,
                         cpu=stage.cpu - stage.child_cpu, wall_incl=None, cpu_incl=None, nested=False))
        name = stage.name if stage.name not in out else f'{stage.name} ({len(out)})'
        out[name] = dict(calls=stage.calls, steps=steps.get(stage.name), wall=sum(r['wall'] for r in rows),
                         cpu=sum(r['cpu'] for r in rows), wall_incl=stage.wall, cpu_incl=stage.cpu, rows=rows,
                         load1=[l for s, _, l in prof.loads if s == stage.name][:1] + [l for s, _, l in prof.loads if s == stage.name][-1:])
        for s in nested: visit(s)
    for s in prof.root.children.values(): visit(s)
    return out

def extrapolate(stages: dict, seeds: int, demo_seeds: int) -> dict:
    "The demo's total if every seed took what the profiled seeds took on average (stages once per demo counted once)."
    per_seed = {k: v['wall'] / max(seeds, 1) for k, v in stages.items() if k in PER_SEED}
    once = {k: v['wall'] for k, v in stages.items() if k not in PER_SEED}
    cpu = sum(v['cpu'] for k, v in stages.items() if k not in PER_SEED) + \
        sum(v['cpu'] / max(seeds, 1) * demo_seeds for k, v in stages.items() if k in PER_SEED)
    return dict(wall=sum(once.values()) + demo_seeds * sum(per_seed.values()), cpu=cpu, seeds=demo_seeds, once=once, per_seed=per_seed)

def _pct(x, total): return f'{100 * x / total:5.1f}%' if total > 0 else '    -'

def render_profile(p: dict) -> str:
    "The printed report of a profile (as `--out` saves it)."
    m, lines = p['meta'], []
    add = lines.append
    add("Splat and Distill demo profile: where snd_demo's minutes go")
    add(f"package    {m['package']} ({m['git']})")
    add(f"machine    {m['cpu_count']} CPUs ({m['cpu_usable']} usable by this process), {m['cpu_model']}; {m['platform']}")
    add(f"software   Python {m['python']}, torch {m['torch']}; torch threads {m['torch_threads']} (--threads {p['threads']})")
    la = lambda x: ' '.join(f'{v:.2f}' for v in x)
    add(f"load avg   before {la(m['load_before'])}, after {la(m['load_after'])} (1, 5, 15 min; others share the cores)")
    add(f"date, env  {m.get('date', '?')}; " + (' '.join(f'{k}={v}' for k, v in m.get('env', {}).items()) or 'no thread variables set'))
    s = p['settings']
    add(f"settings   demo_default(): geometry {s['geometry']}, reconstructor {s['recon_steps']} steps, distillation "
        f"{s['train_steps']} steps; profiled seeds {p['seeds']} of the demo's {list(s['demo_seeds'])}")
    if p['changed']:
        add('           SHORTENED / CHANGED, not the demo\'s settings: ' +
            ', '.join(f'{k}={v!r} (default {p["defaults"][k]!r})' for k, v in p['changed'].items()))
    sc = p['scene_cache']
    add(f"scenes     cache {sc['dir']}: {sc['rendered']} of {sc['requested']} cached-scene requests rendered (misses); "
        f"probe scenes are always rendered")
    add(f"wrapped    {p['wrapped']} names; not found here, skipped: {', '.join(p['skipped']) or 'none'}")
    if p.get('incomplete'): add(f"INCOMPLETE   {p['incomplete']}: the stages after it are missing, the totals are partial")
    st, order = p['stages'], p['order']
    total_w, total_c = sum(v['wall'] for v in st.values()), sum(v['cpu'] for v in st.values())
    add('')
    add(f"{'stage':<26}{'runs':>5}{'wall s':>9}{'cpu s':>9}{'cpu/wall':>9}{'wall %':>8}{'cpu %':>8}   load1 start-end")
    for k in order:
        v = st[k]
        add(f"{k:<26}{v['calls']:>5}{v['wall']:>9.1f}{v['cpu']:>9.1f}{v['cpu'] / max(v['wall'], 1e-9):>9.2f}"
            f"{_pct(v['wall'], total_w):>8}{_pct(v['cpu'], total_c):>8}   {'-'.join(f'{l:.2f}' for l in v['load1'])}")
    add(f"{'profiled total':<26}{'':>5}{total_w:>9.1f}{total_c:>9.1f}{total_c / max(total_w, 1e-9):>9.2f}")
    dt = p.get('demo_timing_s') or {}
    if dt: add("the demo's own timing_s (its results.json; teacher_probes = probe data + teacher probes, students = distillation "
               "+ student probes): " + ', '.join(f'{k} {v}' for k, v in dt.items()))
    e = p['extrapolated']
    add(f"EXTRAPOLATED (not measured) demo total for {e['seeds']} seeds: {e['wall']:.0f} s wall, {e['cpu']:.0f} s CPU = "
        + ' + '.join(f'{k} {v:.1f}' for k, v in e['once'].items()) + ' + ' + f"{e['seeds']} x ("
        + ' + '.join(f'{k} {v:.1f}' for k, v in e['per_seed'].items()) + ') per seed')
    add('')
    add('Rows: own seconds of a section (sections nested in it are listed under it, indented); incl: with them. '
        '(other): the stage outside every section.')
    for k in order:
        v = st[k]
        n_steps = (v['steps'] or 0) * v['calls']
        add('')
        add(f"== {k}: {v['wall']:.1f} s wall, {v['cpu']:.1f} s CPU, {v['calls']} run(s)"
            + (f", {v['steps']} steps per run: {1e3 * v['wall'] / n_steps:.0f} ms wall / step" if n_steps else '')
            + (f"; nested stages ({v['wall_incl'] - v['wall']:.1f} s) not included" if v['wall_incl'] - v['wall'] > 1e-3 else ''))
        add(f"{'section':<40}{'calls':>7}{'wall s':>9}{'cpu s':>9}{'wall %':>8}{'cpu %':>8}"
            + (f"{'ms/step':>9}" if n_steps else '') + f"{'incl s':>9}{'incl %':>8}")
        for r in v['rows']:
            name = '  ' * r['depth'] + r['section'].split('/')[-1]
            incl = f"{r['wall_incl']:>9.2f}{_pct(r['wall_incl'], v['wall']):>8}" if r['nested'] else ''
            add(f"{name:<40.40}{r['calls']:>7}{r['wall']:>9.2f}{r['cpu']:>9.2f}{_pct(r['wall'], v['wall']):>8}"
                f"{_pct(r['cpu'], v['cpu']):>8}" + (f"{1e3 * r['wall'] / n_steps:>9.1f}" if n_steps else '') + incl)
    seen = {r['section'].split('/')[-1] for k in order for r in st[k]['rows']}
    add('')
    lines += textwrap.wrap('Sections: ' + '; '.join(f'{k}: {v}' for k, v in NOTES.items() if k in seen) + '.', 120)
    return '\n'.join(lines) + '\n'

def _ratio(a, b): return f'{b / a:6.2f}' if a and a > 1e-9 and b is not None else '     -'

def compare_profiles(a: dict, b: dict, names=('A', 'B')) -> str:
    "Two profiles side by side per stage and section: wall and CPU seconds and their ratios B / A."
    lines = [f'{names[0]} vs {names[1]}: seconds and ratios {names[1]} / {names[0]} (below 1: {names[1]} is faster)']
    for n, p in zip(names, (a, b)):
        m = p['meta']
        lines.append(f"{n}: {m['package']} ({m['git']}); {m['cpu_count']} CPUs {m['cpu_model']}, torch {m['torch']}, threads "
                     f"{m['torch_threads']}; load avg before/after {m['load_before'][0]:.2f}/{m['load_after'][0]:.2f}; seeds "
                     f"{p['seeds']}; " + ('changed: ' + ', '.join(f'{k}={v!r}' for k, v in p['changed'].items()) if p['changed'] else 'demo defaults'))
    if a['changed'] != b['changed'] or a['seeds'] != b['seeds']: lines.append('WARNING: the two profiles ran different settings')
    if (a['meta']['cpu_model'], a['meta']['cpu_count']) != (b['meta']['cpu_model'], b['meta']['cpu_count']):
        lines.append('WARNING: the two profiles ran on different machines')
    head = f"{'stage / section':<40}{'wall ' + names[0]:>9}{'wall ' + names[1]:>9}{'ratio':>7}{'cpu ' + names[0]:>9}{'cpu ' + names[1]:>9}{'ratio':>7}"
    fmt = lambda x: f'{x:>9.2f}' if x is not None else f"{'-':>9}"
    row = lambda label, wa, wb, ca, cb: f'{label:<40.40}{fmt(wa)}{fmt(wb)}{_ratio(wa, wb):>7}{fmt(ca)}{fmt(cb)}{_ratio(ca, cb):>7}'
    order = list(a['order']) + [k for k in b['order'] if k not in a['order']]
    lines += ['', head]
    for k in order:
        sa, sb = a['stages'].get(k), b['stages'].get(k)
        lines.append(row(k, sa and sa['wall'], sb and sb['wall'], sa and sa['cpu'], sb and sb['cpu']))
    tw = [sum(v['wall'] for v in p['stages'].values()) for p in (a, b)]
    tc = [sum(v['cpu'] for v in p['stages'].values()) for p in (a, b)]
    lines.append(row('profiled total', *tw, *tc))
    lines.append(row('EXTRAPOLATED demo total (not measured)', a['extrapolated']['wall'], b['extrapolated']['wall'],
                     a['extrapolated']['cpu'], b['extrapolated']['cpu']))
    for k in order:
        sa, sb = a['stages'].get(k, {'rows': []}), b['stages'].get(k, {'rows': []})
        ra, rb = {r['section']: r for r in sa['rows']}, {r['section']: r for r in sb['rows']}
        secs = [r['section'] for r in sa['rows'] if r['section'] != '(other)']
        prev = None
        for r in sb['rows']:                        # B's new sections go after the row that precedes them in B
            if r['section'] not in secs and r['section'] != '(other)': secs.insert(secs.index(prev) + 1 if prev in secs else len(secs), r['section'])
            prev = r['section']
        secs.append('(other)')
        lines += ['', f'== {k}', head]
        for s in secs:
            x, y = ra.get(s), rb.get(s)
            label = '  ' * s.count('/') + s.split('/')[-1] if s != '(other)' else s
            lines.append(row(label, x and x['wall'], y and y['wall'], x and x['cpu'], y and y['cpu']))
        lines.append(row('stage', sa.get('wall'), sb.get('wall'), sa.get('cpu'), sb.get('cpu')))
    return '\n'.join(lines) + '\n'

# ---- running the demo --------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try: return next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): return platform.processor() or 'unknown'

def _git(folder: Path) -> str:
    "Commit of the checkout holding `folder`, and whether its tracked files differ from it."
    try:
        run = lambda *a: subprocess.run(['git', '-C', str(folder), *a], capture_output=True, text=True, timeout=30).stdout.strip()
        head = run('rev-parse', '--short', 'HEAD')
        if not head: return 'not a git checkout'
        dirty = run('status', '--porcelain', '--untracked-files=no', '--', '.')
        return f"git {head}, {'tracked files changed' if dirty else 'clean'} under {folder.name}/"
    except (OSError, subprocess.SubprocessError): return 'git unknown'

def _interrupt(signum, frame): raise KeyboardInterrupt(f'signal {signal.Signals(signum).name}')

def profile_demo(threads: int = 2, seeds: int = 1, train_steps: int | None = None, recon_steps: int | None = None,
                 sets: list[str] | None = None, workdir: str | None = None, scene_cache: str | None = None,
                 progress: bool = True, keep: bool = False) -> dict:
    "Run the demo on its first `seeds` seeds, profiled; returns the profile (what `--out` saves)."
    import torch
    import splat_and_distill
    from splat_and_distill import demo
    from splat_and_distill.runs import parse_sets
    defaults = demo.demo_default()
    given = parse_sets(demo.DemoConfig, sets or [])
    if train_steps is not None: given['train_steps'] = train_steps
    if recon_steps is not None: given['recon_steps'] = recon_steps
    demo_seeds = tuple(given.pop('seeds', defaults.seeds))
    if not 1 <= seeds <= len(demo_seeds): raise ValueError(f'--seeds {seeds}: profile 1 to {len(demo_seeds)} of the demo seeds {demo_seeds}')
    tmp = Path(tempfile.mkdtemp(prefix='demo_profile_', dir=workdir))
    one_process = {'workers': 1} if 'workers' in demo.DemoConfig.__dataclass_fields__ else {}   # the wrappers time this process only
    cfg = demo.demo_default(**{**given, 'seeds': demo_seeds[:seeds], 'threads': threads, 'progress': progress, **one_process, 'out': str(tmp / 'demo')})
    cd, dd = dataclasses.asdict(cfg), dataclasses.asdict(defaults)
    changed = {k: cd[k] for k in cd if k not in ('out', 'threads', 'workers', 'progress', 'seeds') and cd[k] != dd[k]}
    old_cache = os.environ.get('SND_CACHE')
    if scene_cache is not None: os.environ['SND_CACHE'] = str(Path(scene_cache).resolve())
    from splat_and_distill.scenes import default_cache_dir
    prof = Profiler()
    load_before, pkg = os.getloadavg(), Path(splat_and_distill.__file__).resolve().parent
    patches, skipped = install(prof)
    main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None    # `kill PID`: keep what was measured
    res, incomplete = {}, None
    try:
        frame = prof.enter(PLUMBING, stage=True)
        try: res = demo.run_demo(cfg, command='bench/demo_profile.py')
        finally: prof.exit(frame)
    except KeyboardInterrupt as e:
        incomplete = f'interrupted ({e or "Ctrl-C"}) in stage {prof.stage_order[-1] if prof.stage_order else PLUMBING!r}'
    finally:
        if main_thread: signal.signal(signal.SIGTERM, old_term)
        uninstall(patches)
        if scene_cache is not None:
            if old_cache is None: os.environ.pop('SND_CACHE', None)
            else: os.environ['SND_CACHE'] = old_cache
        if not keep: shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()
    steps = {'geometry': cfg.recon_steps if cfg.geometry == 'reconstructor' and cfg.reconstructor is None else None,
             'distillation': cfg.train_steps}
    stages = stage_tables(prof, steps)
    order = [k for k in STAGE_ORDER if k in stages] + [k for k in stages if k not in STAGE_ORDER + [PLUMBING]] + [PLUMBING]
    def count(name, node=prof.root, parent=None):
        "Calls of section `name` (directly inside a section `parent`, if given) anywhere in the tree."
        return sum((c.calls if c.name == name and parent in (None, node.name) else 0) + count(name, c, parent) for c in node.children.values())
    return dict(format=FORMAT, incomplete=incomplete, threads=threads, seeds=seeds, changed=changed, defaults={k: dd[k] for k in changed},
                settings=dict(geometry=cfg.geometry, recon_steps=cfg.recon_steps, train_steps=cfg.train_steps, demo_seeds=demo_seeds),
                config=json.loads(json.dumps(cd, default=str)), stages=stages, order=order,
                extrapolated=extrapolate(stages, seeds, len(demo_seeds)), demo_timing_s=res.get('timing_s', {}),
                wrapped=len(SECTIONS) + len(STAGES) - len(skipped), skipped=skipped,
                scene_cache=dict(dir=str(default_cache_dir()) if scene_cache is None else str(Path(scene_cache).resolve()),
                                 requested=count('scenes'), rendered=count('scene rendering', parent='scenes')),
                meta=dict(package=str(pkg), git=_git(pkg), cpu_count=os.cpu_count(), cpu_usable=len(os.sched_getaffinity(0)),
                          cpu_model=_cpu_model(), platform=platform.platform(), python=platform.python_version(),
                          torch=torch.__version__, torch_threads=torch.get_num_threads(), load_before=list(load_before),
                          load_after=list(load_after), date=time.strftime('%Y-%m-%d %H:%M:%S %Z'),
                          env={k: os.environ[k] for k in ENV_KEYS if k in os.environ}))

def main(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog='\n'.join(__doc__.splitlines()[1:5]))
    p.add_argument('--threads', type=int, default=2, help='CPU threads of the demo, as snd_demo --threads (default 2)')
    p.add_argument('--seeds', type=int, default=1, help="students to profile, the demo's first seeds (default 1 of its 3)")
    p.add_argument('--train-steps', type=int, default=None, help='distillation steps (shortens the run: for testing)')
    p.add_argument('--recon-steps', type=int, default=None, help='reconstructor steps (shortens the run: for testing)')
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help='any other DemoConfig field (for testing)')
    p.add_argument('--out', default=None, metavar='FILE.json', help='save the profile')
    p.add_argument('--table', default=None, metavar='FILE.txt', help='also write the printed report here')
    p.add_argument('--workdir', default=None, help='make the temporary output folder in here (default: the system temp folder)')
    p.add_argument('--keep', action='store_true', help='keep the output folder of the run')
    p.add_argument('--scene-cache', default=None, metavar='DIR', help="scene cache ($SND_CACHE) for this run (default: the demo's)")
    p.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bars')
    p.add_argument('--compare', nargs=2, metavar=('A.json', 'B.json'), help='print two saved profiles side by side and exit')
    p.add_argument('--show', metavar='FILE.json', help='print a saved profile and exit')
    a = p.parse_args(argv)
    read = lambda f: json.loads(Path(f).read_text())
    if a.compare:
        text = compare_profiles(*map(read, a.compare), names=('A', 'B'))
        print(text, end='')
        return text
    prof = read(a.show) if a.show else profile_demo(a.threads, a.seeds, a.train_steps, a.recon_steps, a.set, a.workdir,
                                                    a.scene_cache, a.progress, a.keep)
    text = render_profile(prof)
    print(text, end='')
    if a.table: Path(a.table).write_text(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(prof, indent=1))
        print(f'wrote {a.out}')
    return prof

if __name__ == '__main__':
    result = main()
    sys.exit(1 if isinstance(result, dict) and result.get('incomplete') else 0)
