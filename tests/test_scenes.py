"Procedural scenes, datasets (scenes) and the transforms.json reader/writer (scene_io); fast: small images."
import json, sys
from pathlib import Path
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from splat_and_distill.cameras import check_pose, relative_rotation_deg, opencv_to_opengl
from splat_and_distill.scenes import (CLASS_NAMES, NUM_CLASSES, Scene, make_scene, make_spec, trajectory,
    surface_clearance, depth_reprojection, reprojection_benchmark, load_or_make_scene, scene_cache_path, scene_seeds,
    TripletDataset, ViewDataset, PairDataset)
from splat_and_distill.scene_io import write_scene, read_scene, make_fit3d_style_folder, snd_scenes

@pytest.fixture(scope='module')
def scene():
    return make_scene(7, n_views=12, size=(40, 48))

def test_deterministic_from_seed(scene):
    again = make_scene(7, n_views=12, size=(40, 48))
    for k in Scene._TENSORS: assert torch.equal(getattr(scene, k), getattr(again, k)), k
    assert not torch.equal(make_scene(8, 2, 16).rgb, make_scene(7, 2, 16).rgb)
    # the room does not depend on the number of views: a longer trajectory extends a shorter one
    assert torch.equal(make_scene(7, 4, (40, 48)).rgb, scene.rgb[:4])

def test_shapes_dtypes_ranges(scene):
    v, h, w = 12, 40, 48
    assert scene.rgb.shape == (v, 3, h, w) and scene.rgb.dtype == torch.float32
    assert scene.depth.shape == (v, h, w) and scene.normals.shape == (v, 3, h, w)
    assert scene.semantic.shape == scene.instance.shape == (v, h, w)
    assert scene.semantic.dtype == scene.instance.dtype == torch.long
    assert scene.K.shape == (v, 3, 3) and scene.c2w.shape == (v, 4, 4)
    assert 0 <= scene.rgb.min() and scene.rgb.max() <= 1
    assert torch.equal(scene.rgb, (scene.rgb * 255).round() / 255)          # 8-bit quantised
    assert 0.3 <= scene.depth.min() and scene.depth.max() < 12
    assert scene.semantic.min() >= 0 and scene.semantic.max() < NUM_CLASSES
    assert (len(scene), scene.height, scene.width) == (v, h, w)
    check_pose(scene.c2w)

def test_depth_range_over_many_scenes():
    for s in range(15):
        sc = make_scene(s, 24, 20)
        assert 0.3 <= sc.depth.min() and sc.depth.max() < 12, (s, sc.depth.min(), sc.depth.max())

def test_normals_unit_and_facing_camera(scene):
    torch.testing.assert_close(scene.normals.norm(dim=1), torch.ones(12, 40, 48), atol=1e-5, rtol=0)
    from splat_and_distill.cameras import pixel_rays
    _, d = pixel_rays(scene.K, scene.c2w, 40, 48)                         # (v, h, w, 3)
    assert ((scene.normals.permute(0, 2, 3, 1) * d).sum(-1) < 0).all()    # we always see the front side

def test_classes_objects_instances():
    assert NUM_CLASSES == len(CLASS_NAMES) >= 8
    kinds = set()
    for s in range(40):
        spec = make_spec(s)
        objs = spec['objects']
        assert 6 <= len(objs) <= 14, (s, len(objs))
        ids = [o['instance'] for o in objs]
        assert len(set(ids)) == len(ids) and min(ids) == 6                 # every object its own instance; room uses 0-5
        kinds |= {o['kind'] for o in objs}
    assert kinds == {'table', 'cabinet', 'box', 'ball', 'pillar', 'barrel'}

def test_cameras_never_inside_or_near_objects():
    for s in range(60):
        spec = make_spec(s)
        eye, _ = trajectory(spec, 120)
        assert surface_clearance(spec, eye).min() > 0.4, s

def test_baselines_small_but_overlapping():
    sc = make_scene(3, 24, 16)
    steps = (sc.c2w[1:, :3, 3] - sc.c2w[:-1, :3, 3]).norm(dim=-1)
    assert steps.max() < 0.1
    assert relative_rotation_deg(sc.c2w[:-8], sc.c2w[8:]).max() < 45

def test_datasets_collate_and_target_between(scene):
    tri = TripletDataset([scene, make_scene(9, 10, (40, 48))], gap=4)
    assert len(tri) == (12 - 4) + (10 - 4)
    b = next(iter(DataLoader(tri, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(0))))
    assert b['context_rgb'].shape == (5, 2, 3, 40, 48) and b['target_depth'].shape == (5, 40, 48)
    assert b['context_K'].shape == (5, 2, 3, 3) and b['target_c2w'].shape == (5, 4, 4)
    for i in range(len(tri)):
        c0, c1, t = tri[i]['view_indices'].tolist()
        assert c0 < t < c1 and c1 - c0 == 4
    mid = TripletDataset(scene, gap=8, target='middle')[0]
    assert mid['view_indices'].tolist() == [0, 8, 4]
    assert torch.equal(mid['target_rgb'], scene.rgb[4]) and torch.equal(mid['context_c2w'][1], scene.c2w[8])
    with pytest.raises(ValueError, match='gap must be >= 2'): TripletDataset(scene, gap=1)
    v = next(iter(DataLoader(ViewDataset(scene), batch_size=4)))
    assert v['rgb'].shape == (4, 3, 40, 48) and v['semantic'].dtype == torch.long
    p = next(iter(DataLoader(PairDataset(scene, gap=3), batch_size=2)))
    assert p['a_rgb'].shape == p['b_rgb'].shape == (2, 3, 40, 48) and p['view_indices'].tolist() == [[0, 3], [1, 4]]

def test_splits_disjoint():
    tr, va, te = (set(scene_seeds(s, 5000)) for s in ('train', 'val', 'test'))
    assert not (tr & va or tr & te or va & te)
    with pytest.raises(ValueError, match='split must be one of'): scene_seeds('dev', 1)

def test_cache(tmp_path):
    a = load_or_make_scene(11, 3, 24, cache_dir=tmp_path)
    p = scene_cache_path(11, 3, 24, tmp_path)
    assert p.is_file() and not list(p.parent.glob('*.tmp'))
    b = load_or_make_scene(11, 3, 24, cache_dir=tmp_path)
    assert torch.equal(a.rgb, b.rgb) and a.meta == b.meta
    p.write_bytes(b'garbage')                                            # a broken cache file is regenerated
    assert torch.equal(load_or_make_scene(11, 3, 24, cache_dir=tmp_path).depth, a.depth)

def test_disk_round_trip(scene, tmp_path):
    write_scene(scene, tmp_path / 's')
    js = json.loads((tmp_path / 's' / 'transforms.json').read_text())
    for k in ('fl_x', 'fl_y', 'cx', 'cy', 'w', 'h', 'frames'): assert k in js
    assert js['frames'][0]['file_path'] == 'images/frame_00000.png'
    # transform_matrix is OpenGL camera-to-world: its z column points backwards, opposite to our forward axis
    T = torch.tensor(js['frames'][0]['transform_matrix'])
    torch.testing.assert_close(T[:3, 2], -scene.c2w[0, :3, 2], atol=1e-6, rtol=0)
    back = read_scene(tmp_path / 's')
    assert torch.equal(back.rgb, scene.rgb)
    assert (back.depth - scene.depth).abs().max() <= 0.0005 + 1e-6       # 1 mm PNG units, rounded
    assert torch.equal(back.semantic, scene.semantic) and torch.equal(back.instance, scene.instance)
    assert torch.equal(back.normals, scene.normals)
    torch.testing.assert_close(back.c2w, scene.c2w, atol=1e-5, rtol=0)
    torch.testing.assert_close(back.K, scene.K, atol=1e-5, rtol=0)
    assert back.meta['spec'] == scene.meta['spec']
    small = read_scene(tmp_path / 's', size=(20, 24))
    assert small.rgb.shape == (12, 3, 20, 24)
    torch.testing.assert_close(small.K[0, 0, 0], scene.K[0, 0, 0] / 2)

def test_reads_fit3d_scannetpp_layout(scene, tmp_path):
    folder = make_fit3d_style_folder(tmp_path / '0a5c013435', scene.select(range(6)), n_test=2)
    assert (folder / 'transforms_train.json').is_file() and not (folder / 'transforms.json').exists()
    tr = read_scene(folder)
    assert tr.n_views == 4                                               # bad frame skipped, 2 test frames elsewhere
    assert (tr.depth == 0).all() and (tr.semantic == -1).all() and (tr.normals == 0).all()
    assert torch.equal(tr.instance, scene.instance[:4])
    torch.testing.assert_close(tr.c2w, scene.c2w[:4], atol=1e-5, rtol=0)
    assert (tr.rgb - scene.rgb[:4]).abs().mean() < 0.04                  # JPEG at a tiny size
    assert read_scene(folder, split='test').n_views == 2 and read_scene(folder, split='all').n_views == 6
    assert read_scene(folder, size=16).rgb.shape == (4, 3, 16, 16)
    batch = next(iter(DataLoader(TripletDataset(tr, gap=2), batch_size=2)))   # real data goes through the same datasets
    assert batch['context_depth'].shape == (2, 2, 40, 48)

def _broken_folder(scene, tmp_path, edit):
    f = write_scene(scene.select([0, 1]), tmp_path / 'bad', normals=False)
    js = json.loads((f / 'transforms.json').read_text()); edit(js, f)
    (f / 'transforms.json').write_text(json.dumps(js))
    return f

@pytest.mark.parametrize('edit,exc,msg', [
    (lambda js, f: js.pop('frames'), ValueError, 'missing the "frames" list'),
    (lambda js, f: js['frames'][1].pop('file_path'), ValueError, 'frames[1] lacks "file_path"'),
    (lambda js, f: js['frames'][0].pop('transform_matrix'), ValueError, 'lacks "transform_matrix"'),
    (lambda js, f: [js.pop(k) for k in ('fl_x', 'fl_y')], ValueError, 'no focal length'),
    (lambda js, f: (f / 'images' / 'frame_00001.png').unlink(), FileNotFoundError, 'frame_00001.png" not found'),
    (lambda js, f: (f / 'depth' / 'frame_00000.png').unlink(), FileNotFoundError, 'depth_file_path "depth/frame_00000.png" not found'),
    (lambda js, f: js['frames'][0]['transform_matrix'][1].__setitem__(3, float('inf')), ValueError, 'NaN or inf'),
    (lambda js, f: js['frames'][1]['transform_matrix'][0].__setitem__(1, 0.7), ValueError, 'not orthonormal'),
    (lambda js, f: js['frames'][0].__setitem__('transform_matrix', [[1, 0], [0, 1]]), ValueError, '[..., 4, 4]'),
    (lambda js, f: js.update(h=99), ValueError, 'declares w=48, h=99'),
    # issue 11 item 8: numbers, types and ranges, each naming the file and the frame
    (lambda js, f: js.update(fl_x=0), ValueError, 'frames[0]: "fl_x" is 0'),
    (lambda js, f: js['frames'][1].update(fl_y=-50.0), ValueError, 'frames[1]: "fl_y" is -50.0'),
    (lambda js, f: js.update(fl_x=float('nan')), ValueError, '"fl_x" is nan'),
    (lambda js, f: js.update(cx=float('inf')), ValueError, '"cx" is inf'),
    (lambda js, f: js.update(cy=-3), ValueError, 'principal point'),
    (lambda js, f: [js.pop('fl_x'), js.pop('fl_y'), js.update(camera_angle_x=0)], ValueError, '"camera_angle_x" is 0'),
    (lambda js, f: [js.pop('fl_x'), js.pop('fl_y'), js.update(camera_angle_x=4.0)], ValueError, 'in (0, pi)'),
    (lambda js, f: js.update(depth_unit_scale_factor=-0.001), ValueError, '"depth_unit_scale_factor" is -0.001'),
    (lambda js, f: js.update(depth_unit_scale_factor='0.001'), ValueError, '"depth_unit_scale_factor" must be a number'),
    (lambda js, f: js.update(depth_unit_scale_factor=1.0), ValueError, 'is depth_unit_scale_factor right?'),
    (lambda js, f: js.update(w='48'), ValueError, '"w" must be a number'),
    (lambda js, f: js.update(h=40.5), ValueError, '"h" is 40.5'),
    (lambda js, f: js['frames'][0].update(file_path=7), ValueError, 'frames[0]: "file_path" must be a non-empty string'),
    (lambda js, f: js['frames'][0].update(depth_file_path=['depth/frame_00000.png']), ValueError, '"depth_file_path" must be a non-empty string'),
    (lambda js, f: js['frames'][1].update(file_path='depth/frame_00001.png'), ValueError, 'Does file_path point at a depth map?'),
])
def test_bad_input_errors(scene, tmp_path, edit, exc, msg):
    f = _broken_folder(scene, tmp_path, edit)
    with pytest.raises(exc) as e: read_scene(f)
    assert msg in str(e.value) and 'bad' in str(e.value), str(e.value)        # names the file / folder and the problem

def test_bad_input_files(scene, tmp_path):
    with pytest.raises(FileNotFoundError, match='no such folder'): read_scene(tmp_path / 'nope')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='no transforms.json or transforms_train.json'): read_scene(tmp_path / 'empty')
    f = _broken_folder(scene, tmp_path, lambda js, f: None)
    (f / 'transforms.json').write_text('{"frames": [')
    with pytest.raises(ValueError, match='not valid JSON'): read_scene(f)
    # mismatched image sizes without declared w/h
    f2 = _broken_folder(scene, tmp_path / 'two', lambda js, f: [js.pop('w'), js.pop('h')])
    from PIL import Image
    Image.new('RGB', (10, 10)).save(f2 / 'images' / 'frame_00001.png')
    with pytest.raises(ValueError, match='same size'): read_scene(f2)
    (f2 / 'images' / 'frame_00001.png').write_bytes(b'not a png')
    with pytest.raises(ValueError, match='frame_00001.png: not a readable image'): read_scene(f2)

def test_reprojection_median_below_1e4():
    res = reprojection_benchmark(n_pairs=10, n_views=16, size=64, seed=1)
    meds = [r['median'] for r in res]
    assert all(m < 1e-4 for m in meds), meds
    assert min(r['covisible_fraction'] for r in res) > 0.3

def test_cli(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, 'argv', ['snd_scenes', '--n-scenes', '2', '--n-views', '3', '--size=32', '--out', str(tmp_path)])
    assert snd_scenes() is None                                          # run as a console script: exit code 0
    assert (tmp_path / 'scene_000001_preview.png').is_file()
    assert read_scene(tmp_path / 'scene_000000').rgb.shape == (3, 3, 32, 32)

# issue 11 item 3: depth in the wrong format is refused, naming the file and saying what was expected
def test_depth_wrong_format_refused(scene, tmp_path):
    from PIL import Image
    f = write_scene(scene.select([0, 1]), tmp_path / 's8', normals=False)
    d = np.array(Image.open(f / 'depth' / 'frame_00001.png')).astype(np.float64)
    Image.fromarray((d / d.max() * 255).astype(np.uint8)).save(f / 'depth' / 'frame_00001.png')   # an 8-bit visualisation
    with pytest.raises(ValueError, match=r'frame_00001.png.*16-bit'): read_scene(f)

def test_depth_float_tiff_refused(scene, tmp_path):
    from PIL import Image
    g = write_scene(scene.select([0, 1]), tmp_path / 'sf', normals=False)
    Image.fromarray(scene.depth[0].numpy().astype(np.float32)).save(g / 'depth' / 'frame_00000.tiff')   # float metres
    js = json.loads((g / 'transforms.json').read_text()); js['frames'][0]['depth_file_path'] = 'depth/frame_00000.tiff'
    (g / 'transforms.json').write_text(json.dumps(js))
    with pytest.raises(ValueError, match=r'frame_00000.tiff.*float'): read_scene(g)


def test_paths_leaving_the_scene_folder_are_refused(scene, tmp_path):
    "Issue 11 item 8: '../', absolute paths and symbolic links out of the scene folder, unless explicitly allowed."
    import shutil, os
    f = write_scene(scene.select([0, 1]), tmp_path / 's', normals=False)
    good = json.loads((f / 'transforms.json').read_text())
    shutil.copy(f / 'depth' / 'frame_00001.png', tmp_path / 'outside.png')
    for rel in ('../outside.png', str(tmp_path / 'outside.png')):
        js = json.loads(json.dumps(good)); js['frames'][1]['depth_file_path'] = rel
        (f / 'transforms.json').write_text(json.dumps(js))
        with pytest.raises(ValueError, match=r'frames\[1\]: depth_file_path leads to .*outside the scene folder'): read_scene(f)
        assert read_scene(f, allow_outside=True).n_views == 2
    (f / 'transforms.json').write_text(json.dumps(good))
    shutil.move(f / 'images' / 'frame_00000.png', tmp_path / 'photo.png')
    os.symlink(tmp_path / 'photo.png', f / 'images' / 'frame_00000.png')
    with pytest.raises(ValueError, match=r'frames\[0\]: file_path leads to'): read_scene(f)
    assert torch.equal(read_scene(f, allow_outside=True).rgb, read_scene(f, allow_outside=True).rgb)

def test_sixteen_bit_greyscale_photo_refused(scene, tmp_path):
    "Issue 11 item 8: a 16-bit greyscale image as the photo used to turn white; now it is an error naming the frame."
    from PIL import Image
    f = write_scene(scene.select([0, 1]), tmp_path / 's', normals=False)
    Image.fromarray((scene.rgb[0].mean(0).numpy() * 65535).astype(np.uint16)).save(f / 'images' / 'frame_00000.png')
    with pytest.raises(ValueError, match=r'frames\[0\]: image .*frame_00000.png is a 16- or 32-bit integer single-channel image'): read_scene(f)
    Image.fromarray((scene.rgb[0].mean(0).numpy() * 255).astype(np.uint8)).save(f / 'images' / 'frame_00000.png')   # 8-bit grey is a photo
    grey = read_scene(f).rgb[0]
    assert torch.equal(grey[0], grey[1]) and 0.05 < grey.mean() < 0.95
