"Reconstruction distillation: the confidence loss by hand, PnP on exact correspondences, a student that learns, held-out frames, the CLI."
import json, math
from pathlib import Path
import pytest
import torch
from splat_and_distill.cameras import look_at, intrinsics_from_fov, unproject_depth
from splat_and_distill.scenes import load_or_make_scene, scene_seeds
from splat_and_distill.reconkd import (conf_regression_loss, confidence_from_raw, localize, pose_errors, holdout_split, pair_partners,
                                       gt_pointmaps, make_pointmap_student, train_student, predict_pointmaps, point_errors,
                                       snd_reconkd, results_table, comparisons_table, tiny, validate_config)

ROOT = Path(__file__).resolve().parents[1]

def test_conf_loss_by_hand():
    pred = torch.tensor([[[[1., 2., 3.], [0., 0., 0.]]]])                      # (b=1, h=1, w=2, 3)
    target = torch.tensor([[[[1., 2., 3.5], [0.3, 0.4, 0.]]]])                 # errors 0.5 and 0.5 (3-4-5)
    conf = torch.tensor([[[3., 1.5]]])
    both = torch.tensor([[[True, True]]])
    want = ((3 * 0.5 - 0.1 * math.log(3)) + (1.5 * 0.5 - 0.1 * math.log(1.5))) / 2
    assert torch.isclose(conf_regression_loss(pred, conf, target, both, alpha=0.1), torch.tensor(want))
    first = torch.tensor([[[True, False]]])
    assert torch.isclose(conf_regression_loss(pred, conf, target, first, alpha=0.1), torch.tensor(3 * 0.5 - 0.1 * math.log(3)))
    # gradient with respect to the confidence: err - alpha / C, zero at C = alpha / err
    c = torch.tensor([[[0.2 / 0.5 * 10, 1.5]]], requires_grad=True)            # C = 4 = alpha / err for alpha = 2
    conf_regression_loss(pred, c, target, first, alpha=2.0).backward()
    assert abs(float(c.grad[0, 0, 0])) < 1e-6
    assert torch.allclose(confidence_from_raw(torch.tensor([0., -50.])), torch.tensor([2., 1.]))

def test_pnp_recovers_a_known_pose_from_exact_correspondences():
    g = torch.Generator().manual_seed(0)
    h = w = 48
    K = intrinsics_from_fov(60., w, h)
    c2w = look_at(torch.tensor([0.7, -1.2, 1.4]), torch.tensor([0.1, 0.3, 0.6]))
    depth = 1.5 + 2.0 * torch.rand(h, w, generator=g)                          # non-planar: random depth per pixel
    points = unproject_depth(depth, K, c2w)                                     # (h, w, 3): what pixel centre (u+0.5, v+0.5) sees
    res = localize(points, K, top=1.0)
    t, r = pose_errors(res['c2w'], c2w)
    assert res['inliers'] > 0.99 * h * w
    assert t < 1e-2 and r < 0.05, (t, r)       # cm, degrees (acos of a float32 rotation's trace resolves ~0.02 deg near 0)
    # with 40% gross outliers, RANSAC still finds it
    bad = torch.rand(h, w, generator=g) < 0.4
    noisy = points.clone(); noisy[bad] += torch.randn(int(bad.sum()), 3, generator=g)
    t, r = pose_errors(localize(noisy, K, top=1.0)['c2w'], c2w)
    assert t < 0.5 and r < 0.1, (t, r)
    assert pose_errors(None, c2w) == (math.inf, math.inf)

def test_held_out_frames_never_feed_training_or_teacher_pairs():
    for mode in ('every', 'segment'):
        tr, te = holdout_split(40, every=5, mode=mode)
        assert not set(tr) & set(te) and sorted(tr + te) == list(range(40))
        for f in tr + te: assert set(pair_partners(f, tr, 8)) <= set(tr) - {f}
    with pytest.raises(ValueError, match='every'): holdout_split(10, every=1)

def test_tiny_student_improves_over_its_initial_error():
    scene = load_or_make_scene(scene_seeds('test', 1)[0], n_views=20, size=32)
    tr, te = holdout_split(scene.n_views, every=5)
    (p_tr, v_tr), (p_te, v_te) = gt_pointmaps(scene, tr), gt_pointmaps(scene, te)
    st = make_pointmap_student('vit_scratch', input_size=32, head_ch=16, vit_dim=32, vit_depth=1, vit_heads=2, vit_patch=8, seed=0)
    st.set_normaliser(p_tr, v_tr)
    before = point_errors(predict_pointmaps(st, scene.rgb[te])['points'], p_te, v_te)['median_cm']
    hist = train_student(st, scene.rgb[tr], p_tr, v_tr, steps=60, batch_size=4, lr=3e-3, seed=0)
    after = point_errors(predict_pointmaps(st, scene.rgb[te])['points'], p_te, v_te)['median_cm']
    assert hist[-1]['loss'] < hist[0]['loss']
    assert after < 0.8 * before, (before, after)                                 # on held-out frames, not only the training ones

def test_cli_rejects_bad_input_with_exit_code_2(capsys, tmp_path):
    cases = [(['--students', 'resnet50'], "unknown student 'resnet50'"), (['--set', 'stepz=3'], "did you mean 'steps'"),
             (['--data', str(tmp_path / 'nope')], 'folder not found'), (['--data', str(tmp_path)], 'no transforms.json'),
             (['--steps', 'ten'], 'expected an integer'), (['--students', 'dinov2_vits14'], '--dinov2_weights'),
             (['--reconstructor', str(tmp_path)], 'no model.safetensors'), (['--holdout', 'random'], "'every' or 'segment'"),
             (['--set', 'steps'], 'KEY=VALUE'), (['--device', 'tpu'], 'choose cpu, cuda')]
    for argv, msg in cases:
        with pytest.raises(SystemExit) as e: snd_reconkd(['--print_config', *argv])
        assert e.value.code == 2, argv
        err = capsys.readouterr().err
        assert err.startswith('snd_reconkd: error:') and msg in err, (argv, err)
    with pytest.raises(SystemExit) as e: snd_reconkd(['--students', 'resnet50', '--out', str(tmp_path / 'run')])   # a real run, not --print_config
    assert e.value.code == 2 and not (tmp_path / 'run').exists(), 'nothing may be written for bad input'
    run = tmp_path / 'old'; run.mkdir()                                        # a run folder made with another recipe
    (run / 'config.json').write_text(json.dumps(dict(vars(tiny()), steps=99))); (run / 'runs.jsonl').write_text('')
    with pytest.raises(SystemExit) as e: snd_reconkd(['--preset', 'tiny', '--out', str(run)])            # not without --resume
    assert e.value.code == 2 and '--resume to continue it' in capsys.readouterr().err
    with pytest.raises(SystemExit) as e: snd_reconkd(['--preset', 'tiny', '--out', str(run), '--resume'])
    assert e.value.code == 2 and 'steps: 99 -> 20' in capsys.readouterr().err
    cfg = snd_reconkd(['--print_config', '--preset', 'tiny', '--steps', '7', '--set', 'alpha=0.1', '--out', str(tmp_path / 'x')])['config']
    assert (cfg['steps'], cfg['alpha'], cfg['size']) == (7, 0.1, 32)

def test_committed_results_are_the_chapters_table():
    "The table in the chapter's markdown is `results_table` of the committed results.json, and the run has >= 3 seeds x >= 3 scenes."
    res = json.loads((ROOT / 'nbs' / 'results' / 'reconkd' / 'results.json').read_text())
    assert res['config']['seeds'] >= 3 and res['config']['scenes'] >= 3
    assert all(r['gt_median_cm']['n'] >= 9 for r in res['summary'][1:])
    nb = json.loads((ROOT / 'nbs' / '13_reconkd.ipynb').read_text())
    md = '\n'.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown')
    assert results_table(res) in md and comparisons_table(res) in md, \
        'the chapter shows stale tables: paste results_table(results.json) and comparisons_table(results.json) into its Results section'

def test_runs_on_a_transforms_json_folder(tmp_path):
    "The CLI on a posed capture folder (ours written with write_scene): same outputs as on procedural scenes."
    from splat_and_distill.scene_io import write_scene
    write_scene(load_or_make_scene(scene_seeds('test', 1)[0], n_views=20, size=32), tmp_path / 'capture' / 'room')
    res = snd_reconkd(['--preset', 'tiny', '--data', str(tmp_path / 'capture'), '--out', str(tmp_path / 'run'),
                       '--students', 'vit_scratch', '--steps', '5'])
    assert [r['scene'] for r in res['teacher']] == ['room'] and len(res['runs']) == 2
    assert all(r['n_frames'] == 4 and r['gt_median_cm'] > 0 for r in res['runs'])
    assert {'results.json', 'table.md', 'figure.png', 'teacher.png'} <= {p.name for p in (tmp_path / 'run').iterdir()}
