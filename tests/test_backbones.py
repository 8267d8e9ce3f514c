"Backbones: DINOv2 and DINOv3 loader round trips, real EfficientNet-Lite0 weights, token shapes, LoRA merge, student policies."
import re
import pytest
import torch
import torch.nn.functional as F
from splat_and_distill.backbones import (Backbone, make_backbone, dinov2, efficientnet_lite0, tiny_vit, classify, apply_lora,
                                         merge_lora, make_student, frozen_copy, trainable_parameters, LoRALinear,
                                         dinov3, timm_to_dinov3_state_dict, DINOV3_ENV)


@pytest.fixture(scope='module')
def vits_ref():
    torch.manual_seed(0)
    return dinov2('dinov2_vits14', pretrained=False)


def _original_dinov2_keys(sd, chunks=0):
    "timm names -> facebookresearch/dinov2 names (+ mask_token; optionally chunked blocks as with block_chunks>0)."
    out = {}
    for k, v in sd.items():
        m = re.match(r'^blocks\.(\d+)\.(.*)$', k)
        if chunks and m:
            i = int(m.group(1)); per = 12 // chunks
            k = f'blocks.{i // per}.{i}.{m.group(2)}'
        out[k] = v.clone()
    out['mask_token'] = torch.zeros(1, sd['cls_token'].shape[-1])
    return out


@pytest.mark.parametrize('chunks,fmt', [(0, 'pth'), (4, 'pth'), (0, 'safetensors')])
def test_dinov2_loader_round_trip(tmp_path, vits_ref, chunks, fmt):
    sd = _original_dinov2_keys(vits_ref.model.state_dict(), chunks)
    path = tmp_path / f'ckpt.{fmt}'
    if fmt == 'safetensors':
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else: torch.save({'teacher': {f'backbone.{k}': v for k, v in sd.items()}}, path)
    bb = dinov2('dinov2_vits14', weights=path)
    for k, v in vits_ref.model.state_dict().items(): assert torch.equal(bb.model.state_dict()[k], v), k
    x = torch.rand(1, 3, 56, 70)
    with torch.no_grad(): assert torch.allclose(bb(x), vits_ref(x), atol=1e-5)


def test_dinov2_env_var_and_pos_embed_resample(tmp_path, vits_ref, monkeypatch):
    from timm.layers import resample_abs_pos_embed
    sd = _original_dinov2_keys(vits_ref.model.state_dict())
    sd['pos_embed'] = resample_abs_pos_embed(sd['pos_embed'], (16, 16), num_prefix_tokens=1)  # a 224 px checkpoint
    torch.save(sd, tmp_path / 's.pth')
    monkeypatch.setenv('SND_DINOV2_VITS14', str(tmp_path / 's.pth'))
    bb = make_backbone('auto')
    assert bb.name == 'dinov2_vits14' and bb.dim == 384 and bb.stride == 14
    assert bb.model.pos_embed.shape == vits_ref.model.pos_embed.shape
    assert bb(torch.rand(1, 3, 128, 128)).shape == (1, 384, 9, 9)


def test_dinov2_errors(tmp_path, vits_ref, monkeypatch):
    monkeypatch.delenv('SND_DINOV2_VITS14', raising=False)
    with pytest.raises(FileNotFoundError, match='missing.pth'): dinov2('dinov2_vits14', weights=tmp_path / 'missing.pth')
    with pytest.raises(FileNotFoundError, match='SND_DINOV2_VITS14'): dinov2('dinov2_vits14')
    sd = _original_dinov2_keys(vits_ref.model.state_dict())
    del sd['blocks.3.attn.qkv.weight']; sd['head.weight'] = torch.zeros(3)
    torch.save(sd, tmp_path / 'bad.pth')
    with pytest.raises(ValueError, match=r'bad\.pth.*blocks\.3\.attn\.qkv\.weight.*head\.weight'): dinov2('dinov2_vits14', weights=tmp_path / 'bad.pth')
    # a ViT-S checkpoint given for ViT-B: shape mismatches are named
    with pytest.raises(ValueError, match='shape mismatches'): load_b(tmp_path, vits_ref)


def load_b(tmp_path, vits_ref):
    torch.save(vits_ref.model.state_dict(), tmp_path / 'small.pth')
    return dinov2('dinov2_vitb14', weights=tmp_path / 'small.pth')


def test_efficientnet_lite0_is_pretrained():
    import skimage.data
    bb = make_backbone('efficientnet_lite0')
    img = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1).float()[None] / 255
    img = F.interpolate(img, size=(224, 224), mode='bilinear', align_corners=False, antialias=True)
    with torch.no_grad(): p = classify(bb, img)[0]
    assert int(p.argmax()) == 285, p.topk(3)  # Egyptian cat
    assert p[285] > 0.5
    with torch.no_grad():
        assert bb(torch.rand(2, 3, 128, 128)).shape == (2, 112, 8, 8)
        assert bb(torch.rand(1, 3, 100, 120)).shape == (1, 112, 7, 8)
    assert bb.dim == 112 and bb.stride == 16 and bb.forward_features(torch.rand(1, 3, 32, 32))['cls'] is None


def test_tiny_vit_shapes_and_size_policy():
    bb = tiny_vit()
    out = bb.forward_features(torch.rand(2, 3, 60, 90))
    assert out['tokens'].shape == (2, 64, 8, 11) and out['cls'].shape == (2, 64)
    assert bb.token_grid(60, 90) == (8, 11)
    with pytest.raises(ValueError, match=r'\[b, 3, h, w\]'): bb(torch.rand(1, 4, 32, 32))
    assert bb(torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8)).shape == (1, 64, 4, 4)


def test_lora_merge_identical_outputs():
    torch.manual_seed(0)
    bb = tiny_vit()
    apply_lora(bb, rank=8, alpha=16)
    assert sum(isinstance(m, LoRALinear) for m in bb.modules()) == 4
    with torch.no_grad():
        for n, p in trainable_parameters(bb).items(): p.normal_(0, 0.05)
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        y = bb(x); merge_lora(bb); ym = bb(x)
    assert torch.allclose(y, ym, atol=1e-5)
    assert not any(isinstance(m, LoRALinear) for m in bb.modules())
    assert set(dict(bb.named_parameters())) == set(dict(tiny_vit().named_parameters()))


def test_student_policies():
    t = tiny_vit()
    s = make_student(t)
    assert s.policy == 'lora' and all('lora_' in n for n in trainable_parameters(s))
    ema = frozen_copy(s)
    assert set(trainable_parameters(s)) <= set(dict(ema.named_parameters())) and not trainable_parameters(ema)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad(): assert torch.allclose(s(x), t(x), atol=1e-6)
    c = make_student(efficientnet_lite0(pretrained=False))
    assert c.policy == 'last_stages' and trainable_parameters(c)
    assert all(n.startswith('model.blocks.4.') for n in trainable_parameters(c))
    assert len(trainable_parameters(make_student(t, policy='full'))) == len(list(t.parameters()))
    with pytest.raises(ValueError, match='unknown policy'): make_student(t, policy='bogus')

def test_pre_norm_tokens_are_the_last_block_before_the_final_norm():
    bb = tiny_vit()
    x = torch.rand(2, 3, 32, 48)
    post, pre = bb.forward_features(x), bb.forward_features(x, pre_norm=True)
    assert not torch.allclose(pre['tokens'], post['tokens'])
    renorm = bb.model.norm(pre['tokens'].flatten(2).transpose(1, 2)).transpose(1, 2).reshape(post['tokens'].shape)
    assert torch.allclose(renorm, post['tokens'], atol=1e-5)
    assert torch.allclose(bb.model.norm(pre['cls']), post['cls'], atol=1e-5)
    cnn = make_backbone('efficientnet_lite0', pretrained=False)
    assert torch.equal(cnn.forward_features(x, pre_norm=True)['tokens'], cnn.forward_features(x)['tokens'])  # no final norm in a CNN


# ---------------------------------------------------------------- DINOv3 (timm's Eva) from local files
META_TOP = {'cls_token', 'storage_tokens', 'mask_token', 'patch_embed.proj.weight', 'patch_embed.proj.bias', 'rope_embed.periods',
            'norm.weight', 'norm.bias'}                              # Meta's dinov3_vit*16_pretrain_lvd1689m-*.pth layout
META_BLOCK = {'norm1.weight', 'norm1.bias', 'attn.qkv.weight', 'attn.qkv.bias', 'attn.qkv.bias_mask', 'attn.proj.weight',
              'attn.proj.bias', 'ls1.gamma', 'norm2.weight', 'norm2.bias', 'mlp.fc1.weight', 'mlp.fc1.bias', 'mlp.fc2.weight',
              'mlp.fc2.bias', 'ls2.gamma'}


@pytest.fixture(scope='module', params=['dinov3_vits16', 'dinov3_vitb16'])
def v3_ref(request):
    torch.manual_seed(0)
    return dinov3(request.param, pretrained=False)


def _meta_file(ref, path, wrap=''):
    sd = timm_to_dinov3_state_dict(ref.model.state_dict())
    d = ref.dim
    assert {k for k in sd if not k.startswith('blocks.')} == META_TOP
    assert {k[len('blocks.0.'):] for k in sd if k.startswith('blocks.0.')} == META_BLOCK and len({k.split('.')[1] for k in sd if k.startswith('blocks.')}) == 12
    assert sd['storage_tokens'].shape == (1, 4, d) and sd['mask_token'].shape == (1, d) and sd['rope_embed.periods'].shape == (16,)
    assert sd['blocks.0.attn.qkv.bias'].shape == (3 * d,) and sd['blocks.0.attn.qkv.bias_mask'][d:2 * d].sum() == 0
    sd = {wrap + k: v for k, v in sd.items()}
    from safetensors.torch import save_file
    if str(path).endswith('.safetensors'): save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else: torch.save(sd, path)
    return path


@pytest.mark.parametrize('fmt', ['pth', 'safetensors'])
def test_dinov3_loads_meta_and_timm_names(tmp_path, v3_ref, fmt, monkeypatch):
    name, x = v3_ref.name, torch.rand(1, 3, 64, 80)
    meta = _meta_file(v3_ref, tmp_path / f'meta.{fmt}', wrap='student.backbone.' if fmt == 'pth' else '')
    torch.save(v3_ref.model.state_dict(), tmp_path / 'timm.pth')
    monkeypatch.setenv(DINOV3_ENV[name], str(meta))
    with torch.no_grad():
        ref = v3_ref.forward_features(x)
        for bb in (dinov3(name, weights=meta), dinov3(name, weights=tmp_path / 'timm.pth'), make_backbone(name)):   # the last: $SND_DINOV3_*
            assert (bb.dim, bb.stride, bb.model.num_prefix_tokens) == (v3_ref.dim, 16, 5)
            out = bb.forward_features(x)
            torch.testing.assert_close(out['tokens'], ref['tokens']); torch.testing.assert_close(out['cls'], ref['cls'])
        pre = v3_ref.forward_features(x, pre_norm=True)['tokens']          # the probes' tokens: the last block, before the norm
    assert ref['tokens'].shape == pre.shape == (1, v3_ref.dim, 4, 5)
    torch.testing.assert_close(v3_ref.model.norm(pre.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(pre.shape), ref['tokens'])
    assert not torch.allclose(pre, ref['tokens'])


def test_dinov3_errors(tmp_path, monkeypatch):
    monkeypatch.delenv('SND_DINOV3_VITS16', raising=False)
    with pytest.raises(FileNotFoundError, match='SND_DINOV3_VITS16'): dinov3('dinov3_vits16')
    torch.manual_seed(0)
    ref = dinov3('dinov3_vits16', pretrained=False)
    sd = timm_to_dinov3_state_dict(ref.model.state_dict())
    sd['blocks.2.attn.qkv.bias'][:5] = 0.1                                    # a real query bias: not droppable
    torch.save(sd, tmp_path / 'biased.pth')
    with pytest.raises(ValueError, match=r'biased\.pth.*blocks\.2\.attn\.qkv\.bias is not zero'): dinov3('dinov3_vits16', weights=tmp_path / 'biased.pth')
    sd['blocks.2.attn.qkv.bias'][:5] = 0
    sd['blocks.2.attn.qkv.bias'][384:390] = 0.1                               # the key third is masked: fine
    del sd['blocks.3.ls1.gamma']
    torch.save(sd, tmp_path / 'bad.pth')
    with pytest.raises(ValueError, match=r'missing keys: \[blocks\.3\.gamma_1\]'): dinov3('dinov3_vits16', weights=tmp_path / 'bad.pth')
    with pytest.raises(ValueError, match='unknown DINOv3'): dinov3('dinov3_vitl16', pretrained=False)


def test_dinov3_lora_student_trains_and_exports_both_namings(tmp_path, v3_ref):
    "The paper preset's LoRA student (rank 8) on a DINOv3 teacher from a Meta-named file: a few CPU steps, then both exports."
    from safetensors.torch import load_file
    from splat_and_distill.train import make_config, train
    name = v3_ref.name
    meta = _meta_file(v3_ref, tmp_path / 'meta.pth')
    cfg = make_config('paper_vits14', dict(backbone=name, weights=str(meta), data='procedural', geometry='gt', height=32, width=48,
                                           steps=2, out_dim=256, head_hidden=64, head_bottleneck=32, train_scenes=2, val_scenes=1,
                                           val_pairs=2, log_every=1, val_every=0, ckpt_every=0, progress=False, threads=1,
                                           device='cpu', out=str(tmp_path / 'run')))
    assert cfg.lora_rank == 8
    r = train(cfg)
    paths = r['paths']
    assert set(paths) >= {'student_timm', 'student_dinov3'} and 'student_dinov2' not in paths
    tm, mt = load_file(paths['student_timm']), load_file(paths['student_dinov3'])
    assert not any('lora' in k for k in tm) and {k for k in mt if not k.startswith('blocks.')} == META_TOP
    changed = [k for k in tm if 'attn' in k and not torch.equal(tm[k], v3_ref.model.state_dict()[k])]
    assert changed and all(k.endswith(('qkv.weight', 'proj.weight')) for k in changed)   # LoRA moved only the attention weights
    x = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        a, b = dinov3(name, weights=paths['student_timm'])(x), dinov3(name, weights=paths['student_dinov3'])(x)
    torch.testing.assert_close(a, b)


# ---- trained parts: a student stored as the tensors that differ from its pretrained base (chapter 03) ----
import hashlib, json
from pathlib import Path
from safetensors import safe_open
from safetensors.torch import save_file, load_file
from splat_and_distill.backbones import save_trained_part, trained_part_base, load_probe_backbone

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT/'nbs'/'results'/'student'/'efficientnet_lite0_snd_default_seed0.safetensors'
PART_META = {'format': 'snd-trained-part', 'base': 'efficientnet_lite0'}


def _rel(a, b): return float((a - b).norm() / b.norm())


@pytest.fixture(scope='module')
def eff_teacher():
    return make_backbone('efficientnet_lite0')


@pytest.fixture(scope='module')
def perturbed(tmp_path_factory):
    "A full student file (as snd_train writes it) whose last block is randomly perturbed, and its model."
    torch.manual_seed(0)
    model = make_backbone('efficientnet_lite0')
    with torch.no_grad():
        for k, p in model.model.named_parameters():
            if k.startswith('blocks.4.'): p.mul_(1 + 0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp('student')/'student_timm.safetensors'
    save_file(model.model.state_dict(), str(path))
    return path, model


def test_trained_part_round_trip(tmp_path, perturbed, eff_teacher):
    full, model = perturbed
    out = tmp_path/'part.safetensors'
    part = save_trained_part(full, 'efficientnet_lite0', out)
    stored = load_file(str(out))
    with safe_open(str(out), 'pt') as f: assert {k: f.metadata()[k] for k in PART_META} == PART_META
    base = eff_teacher.model.state_dict()
    changed = {k for k, v in model.model.state_dict().items() if not torch.equal(v, base[k])}
    assert set(stored) == set(part) == changed and all(k.startswith('blocks.4.') for k in stored)   # unchanged tensors are not stored
    assert all(v.dtype == torch.float16 for v in stored.values()) and out.stat().st_size < full.stat().st_size / 10
    back = load_probe_backbone(f'efficientnet_lite0:{out}')
    sd = back.model.state_dict()
    for k, v in base.items():                         # the base where nothing is stored, the stored tensor cast back elsewhere
        assert torch.equal(sd[k], stored[k].float() if k in stored else v), k
    torch.manual_seed(1)
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad(): f_back, f_full, f_base = back(x), model(x), eff_teacher(x)
    assert _rel(f_back, f_full) < 5e-3 < 0.05 < _rel(f_base, f_full)       # fp16 precision, far from the teacher


def test_trained_part_errors(tmp_path, perturbed):
    full, _ = perturbed
    out = tmp_path/'part.safetensors'
    save_trained_part(full, 'efficientnet_lite0', out)
    with pytest.raises(ValueError, match=r"part\.safetensors: a trained part of 'efficientnet_lite0', but the spec names 'tiny_vit'"):
        load_probe_backbone(f'tiny_vit:{out}')
    bad = tmp_path/'bad_key.safetensors'
    save_file({'blocks.9.conv.weight': torch.zeros(3, dtype=torch.float16)}, str(bad), metadata=PART_META)
    with pytest.raises(ValueError, match=r'bad_key\.safetensors: trained part does not fit .*blocks\.9\.conv\.weight'):
        load_probe_backbone(f'efficientnet_lite0:{bad}')
    shape = tmp_path/'bad_shape.safetensors'
    save_file({'blocks.4.0.bn1.bias': torch.zeros(7, dtype=torch.float16)}, str(shape), metadata=PART_META)
    with pytest.raises(ValueError, match=r'bad_shape\.safetensors: .*blocks\.4\.0\.bn1\.bias: file \(7,\) vs model'):
        load_probe_backbone(f'efficientnet_lite0:{shape}')
    same = tmp_path/'pretrained.safetensors'
    save_file(make_backbone('efficientnet_lite0').model.state_dict(), str(same))
    with pytest.raises(ValueError, match='nothing was trained'): save_trained_part(same, 'efficientnet_lite0', tmp_path/'x.safetensors')


def test_full_weights_file_still_loads(perturbed):
    full, model = perturbed
    assert trained_part_base(full) is None
    back = load_probe_backbone(f'efficientnet_lite0:{full}')
    for k, v in model.model.state_dict().items(): assert torch.equal(back.model.state_dict()[k], v), k


def test_committed_student(eff_teacher):
    "The student chapter 16 shows: small, a trained part of the teacher, not the teacher, and the evidence study's student."
    assert COMMITTED.is_file() and COMMITTED.stat().st_size < 2e6, COMMITTED
    about = json.loads(COMMITTED.with_suffix('.json').read_text())
    assert trained_part_base(COMMITTED) == about['base'] == 'efficientnet_lite0'
    assert {k: about[k] for k in ('study', 'variant', 'seed', 'steps')} == dict(study='evidence', variant='default', seed=0, steps=300)
    student = load_probe_backbone(f'efficientnet_lite0:{COMMITTED}')
    torch.manual_seed(0)
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad(): f_student, f_teacher = student(x), eff_teacher(x)
    assert F.cosine_similarity(f_student, f_teacher, dim=1).min() < 0.999, 'the committed student has the teacher\'s features'
    full = ROOT/about['source']
    if not full.is_file(): pytest.skip(f'{about["source"]} is not here (runs/ is not committed): fp32 comparison skipped')
    if hashlib.sha256(full.read_bytes()).hexdigest() != about['source_sha256']:
        pytest.skip(f'{about["source"]} is another training run than the committed student was cut from')
    with torch.no_grad(): f_full = load_probe_backbone(f'efficientnet_lite0:{full}')(x)
    assert _rel(f_student, f_full) < 5e-3
