"DINO head, masked distillation loss (both recipes), EMA teacher and one distillation step."
import math
import pytest
import torch
import torch.nn.functional as F
from splat_and_distill.core import set_seed
from splat_and_distill.backbones import make_backbone, make_student
from splat_and_distill.distill import (DINOHead, head_tokens, DistillLoss, DistillModel, make_ema_teacher, ema_update,
                                       ema_due, distill_stats, distill_step, teacher_temperature, RECIPES)

def tiny_models(K=128, seed=0):
    set_seed(seed)
    base = make_backbone('tiny_vit', dim=32, depth=1, heads=2, patch_size=8)
    student = DistillModel(make_student(base, 'lora', lora_rank=2), DINOHead(base.dim, K, hidden_dim=64, bottleneck_dim=16))
    return base, student, make_ema_teacher(student)

def test_head_shapes_and_weight_norm():
    head = DINOHead(16, 100, hidden_dim=32, bottleneck_dim=8)
    out = head_tokens(head, torch.randn(3, 16, 2, 5))
    assert out.shape == (3, 10, 100)
    assert out.abs().max() <= 1 + 1e-5  # unit-gain prototypes: logits are cosines
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad and torch.all(g == 1)
    assert len([m for m in head.mlp if isinstance(m, torch.nn.Linear)]) == 3

def test_loss_ignores_holes_and_matches_definition():
    set_seed(0)
    s, t = torch.randn(2, 5, 64), torch.randn(2, 5, 64)
    valid = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 1, 1, 1]]).bool()
    crit = DistillLoss(64, 'dino')
    loss = crit(s, t, valid, update_center=False)
    pt = F.softmax(t / 0.07, -1)  # center 0, no warm-up
    ce = -(pt * F.log_softmax(s / 0.1, -1)).sum(-1)
    torch.testing.assert_close(loss, ce[valid].mean())
    s2 = s.clone(); s2[~valid] = torch.randn_like(s2[~valid]) * 50
    torch.testing.assert_close(crit(s2, t, valid, update_center=False), loss)
    # gradients reach valid tokens only
    sg = s.clone().requires_grad_(True)
    crit(sg, t, valid, update_center=False).backward()
    assert sg.grad[~valid].abs().max() == 0 and sg.grad[valid].abs().max() > 0
    # no valid token at all: zero loss, no NaN
    assert crit(s, t, torch.zeros_like(valid), update_center=False) == 0

def test_recipes_and_centering():
    t = torch.randn(2, 4, 32) + 3
    auth = DistillLoss(32, 'authors')
    assert auth.hparams()['recipe'] == 'authors' and auth.student_temp == auth.teacher_temp == 1.0
    auth(torch.randn(2, 4, 32), t); assert auth.center.abs().sum() == 0
    dino = DistillLoss(32, 'dino', warmup_steps=10)
    dino(torch.randn(2, 4, 32), t)
    torch.testing.assert_close(dino.center[0, 0], 0.1 * t.reshape(-1, 32).mean(0))
    dino.eval(); c = dino.center.clone(); dino(torch.randn(2, 4, 32), t); assert torch.equal(c, dino.center)  # eval: frozen
    assert teacher_temperature(0, 0.04, 0.07, 10) == 0.04 and teacher_temperature(10, 0.04, 0.07, 10) == 0.07
    assert DistillLoss(32, 'dino', student_temp=0.2).student_temp == 0.2
    assert DistillLoss(32, 'dino', student_temp=None).student_temp == RECIPES['dino']['student_temp']
    with pytest.raises(ValueError, match='unknown recipe'): DistillLoss(32, 'nope')
    with pytest.raises(ValueError, match='unknown DistillLoss options'): DistillLoss(32, 'dino', tau=1)

def test_ema_touches_only_trainable_tensors():
    base, student, teacher = tiny_models()
    names = [n for n, p in student.named_parameters() if p.requires_grad]
    assert names and all('lora_' in n or n.startswith('head.') for n in names)
    with torch.no_grad():
        for p in student.parameters():
            if p.requires_grad: p.add_(1.0)
    before = {n: p.clone() for n, p in teacher.named_parameters()}
    assert ema_update(teacher, student, 0.999) == len(names)
    sp = dict(student.named_parameters())
    for n, p in teacher.named_parameters():
        if n in names: torch.testing.assert_close(p, 0.999 * before[n] + 0.001 * sp[n])
        else: assert torch.equal(p, before[n]) and torch.equal(p, sp[n])  # frozen base shared and equal
    assert [ema_due(s, 10) for s in (0, 5, 10, 11, 30)] == [True, False, True, False, True]

def test_distill_step_learns_and_ema_follows():
    base, student, teacher = tiny_models()
    crit = DistillLoss(128, 'dino')
    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=3e-3)
    set_seed(1)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad(): target = F.avg_pool2d(teacher.tokens(x), 3, 1, 1)  # a fixed, different target map
    valid = torch.rand(4, 4, 4) > 0.3
    t0 = {n: p.clone() for n, p in teacher.named_parameters()}
    hist = [distill_step(student, teacher, crit, opt, x, target, valid, step, ema_every=5) for step in range(12)]
    assert hist[-1]['loss'] < hist[0]['loss']
    assert 0 <= hist[-1]['agreement'] <= 1 and hist[-1]['teacher_mean_entropy'] > 0
    moved = [n for n, p in teacher.named_parameters() if not torch.equal(p, t0[n])]
    assert moved and all('lora_' in n or n.startswith('head.') for n in moved)
    with pytest.raises(ValueError, match='token grid'):
        distill_step(student, teacher, crit, opt, x, target[..., :2], valid[..., :2], 0)
    before = {n: p.clone() for n, p in student.named_parameters()}
    bad = target.clone(); bad[0, 0, 0, 0] = float('nan')                        # a diverged teacher: the loss is NaN
    for objective in ('dino', 'cosine'):
        with pytest.raises(FloatingPointError, match='the loss is nan at step 12 .*nothing was updated'):
            distill_step(student, teacher, crit, opt, x, bad, valid | True, 12, objective=objective)
    assert all(torch.equal(p, before[n]) for n, p in student.named_parameters())

def test_distill_stats_extremes():
    K = 16
    one = F.one_hot(torch.zeros(1, 6, dtype=torch.long), K).float()
    st = distill_stats(one, one)
    assert st['agreement'] == 1 and abs(st['teacher_mean_entropy']) < 1e-5
    uni = torch.full((1, 6, K), 1 / K)
    assert abs(distill_stats(uni, uni)['teacher_token_entropy'] - math.log(K)) < 1e-4

def test_feature_objectives_report_the_valid_fraction():
    "Every objective reports the fraction of valid target tokens (training stops when it is too small)."
    import torch
    from splat_and_distill.backbones import make_backbone, make_student
    from splat_and_distill.distill import DINOHead, DistillModel, DistillLoss, make_ema_teacher, distill_step
    torch.manual_seed(0)
    base = make_backbone('tiny_vit', dim=16, depth=1, heads=2, patch_size=8)
    for objective in ('dino', 'cosine', 'l1'):
        student = DistillModel(make_student(base, 'lora', lora_rank=2), DINOHead(base.dim, 32, hidden_dim=16, bottleneck_dim=8))
        teacher = make_ema_teacher(student)
        opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=1e-3)
        x = torch.rand(2, 3, 32, 32); target = teacher.tokens(x).detach()
        valid = torch.ones(2, 4, 4, dtype=torch.bool); valid[0, :2] = False
        stats = distill_step(student, teacher, DistillLoss(32), opt, x, target, valid, 0, objective=objective)
        assert abs(stats['valid_fraction'] - 0.75) < 1e-6 and 'cosine' in stats, (objective, stats)
