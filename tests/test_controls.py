"Controls (chapter 09a): each changes only what the teacher side lifts; a training step runs with each; bad names fail early."
import math
import pytest
import torch
import torch.nn.functional as F
from splat_and_distill.controls import TARGETS, plane_depth, control_views, plane_gaussians, plane_parallax
from splat_and_distill.gaussians import gaussians_from_depth
from splat_and_distill.scenes import make_scene, TripletDataset, scene_seeds
from splat_and_distill.train import make_config, build_models, teacher_side, validate_config, train
from splat_and_distill.cameras import project_points

@pytest.fixture(scope='module')
def batch():
    ds = TripletDataset([make_scene(scene_seeds('val', 1)[0], n_views=12, size=32)], gap=6)
    items = [ds[0], ds[3]]
    return {k: torch.stack([it[k] for it in items]) for k in items[0] if isinstance(items[0][k], torch.Tensor)}

def test_plane_depth_keeps_invalid_pixels_and_uses_the_median():
    d = torch.tensor([[[1., 2.], [3., 0.]], [[float('nan'), 5.], [-1., float('inf')]]])
    p = plane_depth(d)
    assert torch.equal(p[0], torch.tensor([[2., 2.], [2., 0.]]))
    assert torch.equal(p[1], torch.tensor([[0., 5.], [0., 0.]]))

def test_control_views_changes_only_what_the_control_names(batch):
    sv = control_views(batch, 'same_view_splat')
    for k in ('rgb', 'depth', 'K', 'c2w', 'instance'):
        assert sv[f'context_{k}'].shape == batch[f'context_{k}'].shape
        for v in range(2): assert torch.equal(sv[f'context_{k}'][:, v], batch[f'target_{k}'])
    wp = control_views(batch, 'wrong_pose')
    assert torch.equal(wp['context_c2w'][:, 0], batch['context_c2w'][:, 1]) and torch.equal(wp['context_depth'], batch['context_depth'])
    pg = control_views(batch, 'plane_geometry')
    assert torch.equal(pg['context_c2w'], batch['context_c2w']) and not torch.equal(pg['context_depth'], batch['context_depth'])
    for t in ('splat', 'self_target'):
        out = control_views(batch, t)
        assert all(out[k] is batch[k] for k in batch)
    three = {**batch, 'context_c2w': torch.stack([batch['context_c2w'][:, 0], batch['context_c2w'][:, 1], batch['target_c2w']], 1)}
    assert torch.equal(control_views(three, 'wrong_pose')['context_c2w'][:, 0], batch['target_c2w'])   # rolled by one view
    with pytest.raises(ValueError, match='choose one of'): control_views(batch, 'planar')

def test_plane_gaussians_equal_gaussians_from_a_plane_and_stay_on_their_rays(batch):
    d, K, c2w = batch['context_depth'], batch['context_K'], batch['context_c2w']
    g = gaussians_from_depth(d, K, c2w, batch['context_rgb'])
    flat = plane_gaussians(dict(depth=d, means=g.means, scales=g.scales, quats=g.quats), K, c2w)
    ref = gaussians_from_depth(plane_depth(d), K, c2w, batch['context_rgb'])
    torch.testing.assert_close(flat['means'], ref.means, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(flat['scales'], ref.scales, atol=1e-5, rtol=1e-5)
    b, v, h, w = d.shape
    uv0, _ = project_points(g.means.reshape(b, v, h * w, 3)[0, 0], K[0, 0], c2w[0, 0])
    uv1, z1 = project_points(flat['means'].reshape(b, v, h * w, 3)[0, 0], K[0, 0], c2w[0, 0])
    torch.testing.assert_close(uv0, uv1, atol=1e-3, rtol=0)                # same pixel ...
    assert float(z1.std()) < 1e-4                                            # ... on one plane

def test_plane_parallax_is_zero_for_a_fronto_parallel_wall_and_grows_with_baseline(batch):
    d, K, c2w = batch['context_depth'][0], batch['context_K'][0], batch['context_c2w'][0]
    wall = torch.full_like(d, 2.0)                                           # already a plane: nothing to fix
    p = plane_parallax(wall, K, c2w, batch['target_K'][0], batch['target_c2w'][0])
    assert float(p.nan_to_num(0).abs().max()) < 1e-3
    near = plane_parallax(d, K, c2w, K[0], c2w[0])                           # seen from context view 0 itself ...
    assert float(near[0].nan_to_num(0).abs().max()) < 1e-3                   # ... its own pixels do not move
    assert float(near[1].nanmean()) > 0.01                                   # the other view's do
    far = plane_parallax(d, K, c2w, batch['target_K'][0], batch['target_c2w'][0])
    assert float(far.nanmean()) > 0.01

CFG = dict(backbone='tiny_vit', out_dim=32, head_hidden=16, head_bottleneck=8, height=32, width=32, n_views=12, gap=6,
           train_scenes=1, val_scenes=1, val_pairs=2, batch_size=2, steps=2, progress=False, device='cpu', threads=1,
           val_every=0, ckpt_every=0)

@pytest.mark.parametrize('targets', list(TARGETS))
def test_teacher_side_of_each_control(batch, targets):
    cfg = make_config('cpu_demo', {**CFG, 'targets': targets, 'backbone': 'tiny_vit:random'})
    teacher = build_models(cfg, torch.device('cpu'))['teacher']
    tokens, valid = teacher_side(batch, teacher, cfg)
    hp, wp = teacher.backbone.token_grid(32, 32)
    assert tokens.shape == (2, teacher.backbone.dim, hp, wp) and valid.shape == (2, hp, wp) and valid.dtype == torch.bool
    own = teacher.tokens(batch['target_rgb']).float()
    cos = F.cosine_similarity(tokens, own, dim=1)[valid].mean()
    if targets == 'self_target': assert valid.all() and torch.allclose(tokens, own)
    base = make_config('cpu_demo', {**CFG, 'backbone': 'tiny_vit:random'})
    if targets == 'same_view_splat':                                         # its own features, resampled: closer than other views'
        ref, ok = teacher_side(batch, teacher, base)
        assert cos > F.cosine_similarity(ref, own, dim=1)[ok].mean() + 0.02
    if targets not in ('splat', 'self_target'):
        ref, _ = teacher_side(batch, teacher, base)
        assert not torch.allclose(tokens, ref), 'a control must change the targets'

def test_bad_targets_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match='targets'): validate_config(make_config('cpu_demo', targets='plane'))
    with pytest.raises(ValueError, match='targets'): train(make_config('cpu_demo', {**CFG, 'targets': 'nope', 'out': str(tmp_path / 'r')}))
    assert not (tmp_path / 'r').exists()

def test_a_control_trains_end_to_end(tmp_path):
    r = train(make_config('cpu_demo', {**CFG, 'targets': 'wrong_pose', 'out': str(tmp_path / 'w')}))
    assert math.isfinite(r['results']['val_loss'])

STUDY = ['--quick', '--seeds', '0,1', '--threads', '1', '--no-progress', '--set', 'train_steps=2', '--set', 'train_scenes=1', '--set', 'n_views=10',
         '--set', 'probe_overrides={"n_views": 6, "n_train_scenes": 1, "n_test_scenes": 1, "epochs": 1, "normals_epochs": 1, "real_image": false, "corr_gaps": [1, 2], "eval_split": "fresh"}']

def test_study_with_controls_and_remeasure(tmp_path):
    "A tiny study with the default and two controls: the controls table pairs default - control by seed; --remeasure keeps trained probes and recomputes the rest."
    from splat_and_distill.demo import snd_study, study_table
    out = tmp_path / 'study'
    res = snd_study(STUDY + ['--variants', 'default,self_target,plane_geometry', '--out', str(out)])
    assert set(res['controls']) == {'self_target', 'plane_geometry'}
    gap = res['controls']['self_target']['consistency.gap']
    d = [res['runs']['default'][s]['models']['student']['consistency']['gap'] - res['runs']['self_target'][s]['models']['student']['consistency']['gap']
         for s in res['runs']['default']]
    assert abs(gap['diff'] - sum(d) / len(d)) < 1e-9 and gap['n'] == 2 and len(gap['ci']) == 2
    table = (out / 'study.md').read_text()
    assert 'default − self_target' in table and 'Holm' in table and '2 std' not in table
    seeds = res['runs']['default'][0]['models']['student']['eval_scenes']['seeds']
    assert seeds and all(s >= 3_000_000 for s in seeds), 'the fresh split reports on never-used scenes'
    depth = res['runs']['default'][0]['models']['student']['depth']['abs_rel']
    again = snd_study(STUDY + ['--out', str(out), '--remeasure'])
    st = again['runs']['default']['0']['models']['student']
    assert st['depth']['abs_rel'] == depth, 'trained probes are kept'
    assert 'mrr' in st['corr'] and 'remeasured' in again and study_table(again) == (out / 'study.md').read_text()
