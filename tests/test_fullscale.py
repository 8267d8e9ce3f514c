"Full-scale paths on tiny data: the authors' ScanNet++ layout streamed from disk, paper preset end to end, RGB-only reconstructor, depth geometry, memory, interop, real-benchmark probe readers."
import gzip, json, math, pickle, tracemalloc, warnings
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image
from splat_and_distill.scenes import make_scene
from splat_and_distill.scene_io import (make_snd_scannetpp_folder, scene_folders, FolderTripletDataset, write_scene,
    frame_records, resize_scene)
from splat_and_distill.cameras import opencv_to_opengl

@pytest.fixture(scope='module')
def scenes():
    return [make_scene(s, 12, (56, 84)) for s in (0, 1)]

def test_authors_layout_is_read_exactly(tmp_path, scenes):
    "JPEGs under images/, one shared intrinsics block, OpenGL poses, masks named <file_path>.png, is_bad skipped, frame gaps respected."
    root = make_snd_scannetpp_folder(tmp_path / 'snd', scenes, skip_frames=(5,))
    (root / 'scenes' / 'zz_nomask' / 'images').mkdir(parents=True)          # a scene without instance_segmentation/: not used
    (root / 'scenes' / 'zz_nomask' / 'transforms_train.json').write_text((root / 'scenes' / '00snd0000' / 'transforms_train.json').read_text())
    with pytest.warns(UserWarning, match='without an instance_segmentation'): folders = scene_folders(root)
    assert [f.name for f in folders] == ['00snd0000', '01snd0001']
    js = json.loads((folders[0] / 'transforms_train.json').read_text())
    assert 'fl_x' in js and 'fl_x' not in js['frames'][0] and any(f['is_bad'] for f in js['frames'])
    assert (folders[0] / 'instance_segmentation' / 'DSC01000.JPG.png').is_file()
    recs = frame_records(folders[0])
    assert len(recs) == 12 and [r['frame'] for r in recs[:7]] == [1000, 1001, 1002, 1003, 1004, 1006, 1007]
    ds = FolderTripletDataset(folders, gap=4, size=(28, 42), target='middle')
    starts = [i for si, i in ds.items if si == 0]
    assert starts == [0, 5, 6, 7]                     # (1, 5) .. (4, 8) would span the missing frame 1005
    it = ds[1]
    ref = resize_scene(scenes[0].select([5, 9, 7]), (28, 42))
    assert torch.equal(it['context_instance'], ref.instance[:2]) and torch.equal(it['target_instance'], ref.instance[2])
    assert torch.allclose(it['context_c2w'], ref.c2w[:2], atol=1e-5)            # OpenGL in the file, OpenCV in memory
    assert torch.allclose(it['target_K'], ref.K[2], atol=1e-4)
    assert it['context_rgb'].shape == (2, 3, 28, 42) and (it['context_rgb'] - ref.rgb[:2]).abs().mean() < 0.03

def test_missing_masks_warn_or_fail(tmp_path, scenes):
    root = make_snd_scannetpp_folder(tmp_path / 'm', scenes[:1], masks=False)
    folder = root / 'scenes' / '00snd0000'
    with pytest.warns(UserWarning, match='plain bilinear and semantic blending is off'): ds = FolderTripletDataset([folder], gap=4)
    assert int(ds[0]['context_instance'].max()) == -1
    with pytest.raises(FileNotFoundError, match=r'instance_segmentation/DSC01000.JPG.png.*require_masks'):
        FolderTripletDataset([folder], gap=4, require_masks=True)

def _tiny_recon(path):
    from splat_and_distill.reconstruct import Reconstructor, tiny, save_reconstructor
    torch.manual_seed(0); save_reconstructor(path, Reconstructor(tiny(size=32)))
    return path

def test_paper_preset_runs_end_to_end_on_the_authors_layout(tmp_path, scenes, monkeypatch):
    "The done-when run: snd_train --preset paper_vits14, random ViT-S/14, reduced size, a few steps on CPU."
    import splat_and_distill.lift as L
    from splat_and_distill.train import snd_train
    seen, blend = [], L.semantic_blend
    monkeypatch.setattr(L, 'semantic_blend', lambda f, labels, blend_alpha=1.0, valid=None: seen.append(labels.clone()) or blend(f, labels, blend_alpha, valid))
    root = make_snd_scannetpp_folder(tmp_path / 'snd', scenes)
    out = snd_train(['--preset', 'paper_vits14', '--data', str(root), '--backbone', 'dinov2_vits14:random', '--reconstructor', str(_tiny_recon(tmp_path / 'recon')),
                     '--height', '56', '--width', '84', '--gap', '4', '--steps', '3', '--val_scenes', '1', '--val_pairs', '2', '--log_every', '1',
                     '--val_every', '0', '--ckpt_every', '0', '--out', str(tmp_path / 'run'), '--device', 'cpu', '--no-progress',
                     '--require_masks', '--workers', '1'])
    cfg = out['config']
    assert (cfg['batch_size'], cfg['out_dim'], cfg['lora_rank'], cfg['geometry']) == (1, 65536, 8, 'reconstructor')
    # real instance labels reached the blend: the mask ids that were written, not the all-unknown -1
    ids = set(torch.cat([s.flatten() for s in seen]).unique().tolist())
    assert seen and -1 not in ids and len(ids) > 3 and ids <= set(torch.cat([s.instance.flatten() for s in scenes]).unique().tolist())
    rows = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    nums = [(k, v) for r in rows for k, v in r.items() if isinstance(v, float)]
    assert nums and all(math.isfinite(v) for _, v in nums), [kv for kv in nums if not math.isfinite(kv[1])]
    assert any('val_consistency' in r for r in rows)        # measured with the reconstructor's depth (no depth maps in the data)
    assert (tmp_path / 'run' / 'student_timm.safetensors').is_file() and (tmp_path / 'run' / 'student_dinov2.safetensors').is_file()

def test_real_data_without_geometry_skips_consistency_in_one_line(tmp_path, scenes, capsys):
    "geometry=depth needs depth maps; without them (and without a reconstructor) validation says so and logs no NaN."
    from splat_and_distill.train import make_config, train
    root = tmp_path / 'ours'
    for i, s in enumerate(scenes): write_scene(s, root / f's{i}', normals=False)
    kw = dict(data=str(root), backbone='tiny_vit', out_dim=64, head_hidden=32, head_bottleneck=16, height=28, width=42, gap=4, steps=2,
              val_scenes=1, val_pairs=2, log_every=1, val_every=0, ckpt_every=0, progress=False, device='cpu', threads=1)
    r = train(make_config('cpu_demo', dict(kw, geometry='depth', out=str(tmp_path / 'a'))))     # depth maps from depth_file_path
    assert r['results']['val_consistency'] > r['results']['val_consistency_chance']
    for f in (root / 's1' / 'depth').iterdir(): f.unlink()
    tf = root / 's1' / 'transforms.json'; js = json.loads(tf.read_text())
    for fr in js['frames']: fr.pop('depth_file_path')
    tf.write_text(json.dumps(js))
    with pytest.raises(FileNotFoundError, match='geometry=depth needs a depth map'):
        train(make_config('cpu_demo', dict(kw, geometry='depth', out=str(tmp_path / 'b'))))
    with pytest.raises(ValueError, match="'gt' is for procedural"): train(make_config('cpu_demo', dict(kw, out=str(tmp_path / 'c'))))

def test_reconstructor_trains_from_rgb_alone(tmp_path, scenes):
    from splat_and_distill.reconstruct import tiny, train_reconstructor, evaluate_reconstructor, depth_metrics, average_metrics
    from splat_and_distill.scenes import fixed_items
    assert average_metrics(depth_metrics(torch.ones(2, 4, 4), torch.zeros(2, 4, 4)))['valid_images'] == 0   # no depth at all: no error
    root = make_snd_scannetpp_folder(tmp_path / 'snd', scenes)
    tr, va = (FolderTripletDataset([f], gap=4, size=(32, 48)) for f in scene_folders(root))
    model, hist = train_reconstructor(tiny(gap=4, eval_every=2), scenes=tr, val_scenes=va, steps=2, progress=False)
    assert hist and all('train_delta1' not in h and math.isfinite(h['loss']) for h in hist)
    res = evaluate_reconstructor(model, fixed_items(va, 2))
    assert set(res) == {'psnr', 'ssim', 'n'} and all(math.isfinite(v) for v in res.values())

def test_lift_scale_sizes_are_multiples_of_4():
    from splat_and_distill.lift import downscale_batch, lift_scale
    from splat_and_distill.train import make_config
    batch = dict(target_rgb=torch.zeros(1, 3, 576, 880), target_K=torch.eye(3)[None], context_K=torch.eye(3).expand(1, 2, 3, 3))
    class R: config = type('C', (), dict(size=256))
    s = lift_scale(make_config('cpu_demo', render_scale=None), (576, 880), (41, 63), R())
    h, w = downscale_batch(batch, s)['target_rgb'].shape[-2:]
    assert (h % 4, w % 4) == (0, 0) and h == 256 and abs(w - 880 * 256 / 576) <= 2   # 391.1 used to stay 391

def test_channel_chunks_give_the_same_targets(scenes):
    from splat_and_distill.lift import lift_and_splat_details
    from splat_and_distill.backbones import tiny_vit
    s, t = scenes[0], tiny_vit()
    c, g = s.select([0, 4]), s.select([2])
    args = (t, c.rgb[None], c.instance[None], c.K[None], c.c2w[None], g.K, g.c2w, g.instance)
    kw = dict(context_depth=c.depth[None], blend_alpha=0.5)                    # blending too: it is per channel as well
    a, b = lift_and_splat_details(*args, **kw), lift_and_splat_details(*args, **kw, channel_chunk=5)
    assert torch.allclose(a['tokens'], b['tokens'], atol=1e-5) and torch.equal(a['valid'], b['valid'])

def test_data_memory_is_flat_in_the_number_of_scenes(tmp_path):
    "Peak Python-heap memory while reading 8 batches: 10 scenes vs 100 (the in-memory loader grows 10x)."
    base = make_scene(0, 10, (32, 48))
    def peak(n):
        root = make_snd_scannetpp_folder(tmp_path / f'n{n}', [base] * n, skip_frames=())
        ds = FolderTripletDataset(scene_folders(root), gap=4, size=(32, 48))
        tracemalloc.start()
        for i in range(8): ds[(i * 37) % len(ds)]
        _, p = tracemalloc.get_traced_memory(); tracemalloc.stop()
        return p, len(pickle.dumps(ds))
    (p10, s10), (p100, s100) = peak(10), peak(100)
    print(f'peak while reading: {p10 / 1e3:.0f} kB (10 scenes) vs {p100 / 1e3:.0f} kB (100); dataset object {s10 / 1e3:.0f} kB vs {s100 / 1e3:.0f} kB')
    assert p100 < 1.3 * p10 + 50_000
    assert s100 / 100 < 40_000                          # the index: a few kB per scene of 10 frames, no pixels

def test_student_exports_round_trip_with_timm_and_dinov2_names(tmp_path):
    import timm
    from safetensors.torch import load_file
    from splat_and_distill.backbones import make_backbone, make_student, load_state_dict_file, convert_dinov2_state_dict
    from splat_and_distill.distill import DistillModel, DINOHead
    from splat_and_distill.train import export_student
    torch.manual_seed(0)
    base = make_backbone('dinov2_vits14', pretrained=False)
    stu = make_student(base, 'lora', lora_rank=4)
    for n, p in stu.named_parameters():
        if 'lora_B' in n: torch.nn.init.normal_(p, std=0.02)                      # a student that differs from its teacher
    model = DistillModel(stu, DINOHead(base.dim, 64, 32, 16))
    x = torch.rand(1, 3, 56, 70)
    want = stu(x)
    pt, po = export_student(model, tmp_path / 't.safetensors'), export_student(model, tmp_path / 'o.safetensors', names='dinov2')
    sd_o = load_file(str(po))
    hub = ({'cls_token', 'pos_embed', 'mask_token', 'patch_embed.proj.weight', 'patch_embed.proj.bias', 'norm.weight', 'norm.bias'}
           | {f'blocks.{i}.{m}' for i in range(12) for m in ('norm1.weight', 'norm1.bias', 'attn.qkv.weight', 'attn.qkv.bias', 'attn.proj.weight',
              'attn.proj.bias', 'ls1.gamma', 'norm2.weight', 'norm2.bias', 'mlp.fc1.weight', 'mlp.fc1.bias', 'mlp.fc2.weight', 'mlp.fc2.bias', 'ls2.gamma')})
    assert set(sd_o) == hub and sd_o['pos_embed'].shape == (1, 1370, 384) and sd_o['mask_token'].shape == (1, 384)
    plain = timm.create_model('vit_small_patch14_dinov2', pretrained=False, num_classes=0, dynamic_img_size=True)
    plain.load_state_dict(load_file(str(pt)))                                     # strict: a plain timm file
    for p in (pt, po):
        back = make_backbone('dinov2_vits14', weights=p)
        assert torch.allclose(back(x), want, atol=1e-4), p

def test_released_student_checkpoints_load_from_local_files(tmp_path):
    "FiT3D releases plain timm state dicts (.pth); an SnD-style file wraps the student, its DINO head and unmerged LoRA: both load."
    from splat_and_distill.backbones import make_backbone, make_student, merge_lora
    from splat_and_distill.distill import DistillModel, DINOHead
    torch.manual_seed(1)
    base = make_backbone('dinov2_vits14', pretrained=False)
    x = torch.rand(1, 3, 42, 56)
    torch.save(base.model.state_dict(), tmp_path / 'dinov2_small_finetuned.pth')      # FiT3D's format
    assert torch.allclose(make_backbone('dinov2_vits14', weights=tmp_path / 'dinov2_small_finetuned.pth')(x), base(x), atol=1e-5)
    stu = make_student(base, 'lora', lora_rank=4)
    for n, p in stu.named_parameters():
        if 'lora_B' in n: torch.nn.init.normal_(p, std=0.02)
    model = DistillModel(stu, DINOHead(base.dim, 64, 32, 16))
    torch.save({'student': model.state_dict(), 'step': 10}, tmp_path / 'snd_student.pth')
    want = merge_lora(stu)(x)
    assert torch.allclose(make_backbone('dinov2_vits14', weights=tmp_path / 'snd_student.pth')(x), want, atol=1e-4)

# ---- real-benchmark probe readers, each on a tiny folder written in the published layout ----
def _write_nyu(root: Path, n=6, h=24, w=32):
    import h5py
    from scipy.io import savemat
    root.mkdir(parents=True)
    g = np.random.default_rng(0)
    with h5py.File(root / 'nyu_depth_v2_labeled.mat', 'w') as f:            # MATLAB v7.3 stores arrays transposed: [n, 3, w, h]
        f['images'] = g.integers(0, 255, (n, 3, w, h), dtype=np.uint8)
        f['depths'] = g.uniform(0.5, 9, (n, w, h)).astype(np.float32)
        f['rawDepths'] = np.where(g.uniform(size=(n, w, h)) < 0.1, 0, f['depths'][()]).astype(np.float32)
        f['labels'] = g.integers(0, 895, (n, w, h)).astype(np.uint16)
    savemat(root / 'splits.mat', dict(trainNdxs=np.array([[1], [2], [3], [4]]), testNdxs=np.array([[5], [6]])))
    savemat(root / 'classMapping40.mat', dict(mapClass=g.integers(1, 41, (1, 894)).astype(np.float64),
                                              className=np.array([[f'class{i}' for i in range(40)]], dtype=object)))
    nrm = g.normal(size=(n, h, w, 3)).astype(np.float32); nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True)
    with gzip.open(root / 'all_normals.pklz', 'wb') as fh: pickle.dump({'all_normals': nrm}, fh)
    return root

def test_nyu_reader_and_snd_probe_table(tmp_path, capsys):
    from splat_and_distill.probe_runs import read_nyu, snd_probe
    root = _write_nyu(tmp_path / 'nyuv2')
    d = read_nyu(root, image_size=24)
    tr, te = d['tasks']['depth']
    assert (len(tr), len(te), d['n_classes']) == (4, 2, 40) and set(d['tasks']) == {'depth', 'seg', 'normals'}
    import h5py
    with h5py.File(root / 'nyu_depth_v2_labeled.mat', 'r') as f: raw = f['rawDepths'][4].T
    assert torch.allclose(te.depth[0], torch.from_numpy(raw))                  # test image 1 = index 5 (1-based), transposed back
    from scipy.io import loadmat
    with h5py.File(root / 'nyu_depth_v2_labeled.mat', 'r') as f: lab = f['labels'][0].T.astype(np.int64)   # train image 1
    mapc = loadmat(str(root / 'classMapping40.mat'))['mapClass'].ravel().astype(np.int64)
    assert torch.equal(tr.semantic[0], torch.from_numpy(np.where(lab > 0, mapc[lab - 1] - 1, -1)))      # 894 raw ids -> 40 classes, 0 -> ignored
    snd_probe(['--backbone', 'efficientnet_lite0:random', '--preset', 'tiny', '--data', f'nyu:{root}', '--out', str(tmp_path / 'res'),
               '--no-progress', '--set', 'epochs=2', '--set', 'image_size=24', '--threads', '1'])
    text = capsys.readouterr().out
    assert '| model |' in text and 'depth AbsRel' in text and 'seg mIoU' in text and 'normals RMSE' in text
    (root / 'splits.mat').unlink()
    with pytest.raises(FileNotFoundError, match=r'splits.mat: not found; expected the official split'): read_nyu(root)

def test_scannetpp_probe_reader(tmp_path):
    from splat_and_distill.probe_runs import read_scannetpp_probe
    root = tmp_path / 'scannetpp'
    g = np.random.default_rng(0)
    lines = {'scannetpp_train.txt': [], 'scannetpp_val.txt': []}
    for k, name in enumerate(['a', 'a', 'b', 'b']):
        (root / name / 'dslr').mkdir(parents=True, exist_ok=True)
        Image.fromarray(g.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(root / name / 'dslr' / f'DSC{k}.JPG')
        Image.fromarray((g.uniform(0.2, 25, (20, 30)) * 1000).astype(np.uint16)).save(root / name / 'dslr' / f'DSC{k}.png')
        lines['scannetpp_train.txt' if name == 'a' else 'scannetpp_val.txt'].append(f'/{name}/dslr/DSC{k}.JPG /{name}/dslr/DSC{k}.png 1000.0')
    lines['scannetpp_val.txt'].append('/b/dslr/DSC9.JPG None')
    for f, ls in lines.items(): (root / f).write_text('\n'.join(ls) + '\n')
    for sub in ('training', 'validation'):
        (root / 'images' / sub).mkdir(parents=True); (root / 'annotations' / sub).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(g.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(root / 'images' / sub / f'{sub}{k}.JPG')
            Image.fromarray(g.integers(0, 101, (20, 30), dtype=np.uint8)).save(root / 'annotations' / sub / f'{sub}{k}.png')
    d = read_scannetpp_probe(root, image_size=20)
    (dt, dv), (st, sv) = d['tasks']['depth'], d['tasks']['seg']
    assert (len(dt), len(dv), len(st), len(sv), d['n_classes'], d['max_depth']) == (2, 2, 2, 2, 100, 20.)
    assert dt.depth.max() < 20 and (dt.depth == 0).any()                     # beyond 20 m is invalid, as in FiT3D
    a = np.array(Image.open(root / 'annotations' / 'training' / 'training0.png')).astype(np.int64) - 1
    assert torch.equal(st.semantic[0], torch.from_numpy(a))
    (root / 'annotations' / 'validation' / 'validation1.png').unlink()
    with pytest.raises(FileNotFoundError, match='validation1.png: not found; expected the 8-bit label PNG'): read_scannetpp_probe(root)

def test_scannet1500_reader_and_correspondence(tmp_path):
    from splat_and_distill.probe_runs import read_scannet1500, probe_real
    from splat_and_distill.probes import probe_config
    from splat_and_distill.backbones import load_probe_backbone
    from splat_and_distill.cameras import scale_intrinsics
    sc, root = make_scene(3, 12, (48, 64)), tmp_path / 'scannet_test_1500'
    for sub in ('color', 'depth', 'pose'): (root / 'scene0010_01' / sub).mkdir(parents=True)
    for i in range(4):
        Image.fromarray((sc.rgb[2 * i].permute(1, 2, 0) * 255).byte().numpy()).resize((128, 96)).save(root / 'scene0010_01' / 'color' / f'{i * 20}.jpg')
        Image.fromarray((sc.depth[2 * i] * 1000).round().numpy().astype(np.uint16)).save(root / 'scene0010_01' / 'depth' / f'{i * 20}.png')
        np.savetxt(root / 'scene0010_01' / 'pose' / f'{i * 20}.txt', sc.c2w[2 * i].numpy())
    np.savez(root / 'test.npz', name=np.array([[10, 1, 0, 20], [10, 1, 40, 60]]))
    np.savez(root / 'intrinsics.npz', scene0010_01=scale_intrinsics(sc.K[0], 640 / 64, 480 / 48).numpy())
    d = read_scannet1500(root, image_size=48)
    te = d['tasks']['corr'][1]
    assert len(te) == 4 and d['pairs'].tolist() == [[0, 1], [2, 3]]
    assert torch.allclose(te.K[0], sc.K[0], atol=1e-4) and torch.allclose(te.c2w[3], sc.c2w[6], atol=1e-6)
    assert torch.allclose(te.depth[1], sc.depth[2], atol=6e-4)
    res = probe_real(load_probe_backbone('efficientnet_lite0'), d, probe_config('tiny', image_size=48, corr_grid_width=32))
    assert res['corr']['pairs'] == 2 and res['corr']['matches'] > 0 and res['corr']['recall_20px'] > 0
    (root / 'scene0010_01' / 'pose' / '40.txt').write_text('1 0 0\n0 1 0\n')
    with pytest.raises(ValueError, match=r'40.txt: expected a finite 4x4 camera-to-world'): read_scannet1500(root)
