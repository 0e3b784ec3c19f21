"""DINO / iBOT / KoLeo losses against plain references; centering and Sinkhorn-Knopp."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from mscg_lightning.stages.dino_rq.heads import DINOHead
from mscg_lightning.stages.dino_rq.losses import (
    DINOLoss,
    IBOTPatchLoss,
    koleo_loss,
    sinkhorn_knopp,
)


def test_dino_loss_is_the_mean_cross_entropy_over_distinct_view_pairs():
    torch.manual_seed(0)
    g, lc, b, k = 2, 3, 5, 7
    s_global, s_local = torch.randn(g, b, k), torch.randn(lc, b, k)
    t_probs = torch.softmax(torch.randn(g, b, k), -1)
    loss = DINOLoss(k, student_temp=0.1)(s_global, s_local, t_probs)
    # reference: soft-target cross-entropy of every student view vs every *other* teacher view
    pairs = [(s_global[i], t_probs[j]) for i in range(g) for j in range(g) if i != j]
    pairs += [(s_local[i], t_probs[j]) for i in range(lc) for j in range(g)]
    ref = torch.stack([F.cross_entropy(s / 0.1, t) for s, t in pairs]).mean()
    assert len(pairs) == g * (g - 1) + lc * g
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_dino_loss_of_uniform_distributions_is_log_k():
    k = 16
    loss = DINOLoss(k)(torch.zeros(2, 3, k), None, torch.full((2, 3, k), 1 / k))
    assert loss.item() == pytest.approx(math.log(k), rel=1e-6)


def test_centering_uses_the_center_then_updates_it_by_ema():
    torch.manual_seed(1)
    k = 6
    loss = DINOLoss(k, center_momentum=0.9)
    logits = torch.randn(8, k)
    probs = loss.teacher_probs(logits, temp=0.04)
    assert torch.allclose(probs, torch.softmax(logits / 0.04, -1), atol=1e-6)  # centre was 0
    assert torch.allclose(loss.center, 0.1 * logits.mean(0, keepdim=True), atol=1e-6)
    probs2 = loss.teacher_probs(logits, temp=0.04, update_center=False)
    assert torch.allclose(probs2, torch.softmax((logits - loss.center) / 0.04, -1), atol=1e-6)
    assert torch.allclose(loss.center, 0.1 * logits.mean(0, keepdim=True), atol=1e-6)


def test_sinkhorn_knopp_single_process_gives_balanced_assignments():
    assert not dist.is_initialized()  # the single-process path DINOv2's own code crashes on
    torch.manual_seed(2)
    n, k = 12, 4
    logits = torch.randn(n, k) * 3
    q = sinkhorn_knopp(logits, temp=0.5, n_iterations=3)
    assert q.shape == (n, k)
    assert torch.allclose(q.sum(1), torch.ones(n), atol=1e-5)  # each sample is a distribution
    q = sinkhorn_knopp(logits, temp=0.5, n_iterations=200)
    assert torch.allclose(q.sum(0), torch.full((k,), n / k), atol=1e-3)  # balanced prototypes
    # large logits at a sharp temperature: neither overflow nor 0/0 (DINOv2's version gives NaN)
    q = sinkhorn_knopp(logits * 100, temp=0.04)
    assert torch.isfinite(q).all()
    assert bool(((q.sum(1) - 1).abs() < 1e-4).any())


def test_collectives_with_a_one_rank_process_group_match_single_process(tmp_path):
    torch.manual_seed(3)
    logits = torch.randn(10, 5)
    expected_q = sinkhorn_knopp(logits, 0.1)
    expected = DINOLoss(5)
    expected.teacher_probs(logits, 0.1)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        assert torch.allclose(sinkhorn_knopp(logits, 0.1), expected_q, atol=1e-6)
        loss = DINOLoss(5)
        loss.teacher_probs(logits, 0.1)
        assert torch.allclose(loss.center, expected.center, atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_ibot_loss_averages_patches_per_image_over_all_images():
    torch.manual_seed(4)
    n, p, k = 3, 5, 6
    masks = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0]], dtype=torch.bool)
    m = int(masks.sum())
    s, t = torch.randn(m, k), torch.softmax(torch.randn(m, k), -1)
    loss = IBOTPatchLoss(k, student_temp=0.1)(s, t, masks)
    ce = F.cross_entropy(s / 0.1, t, reduction="none")
    ref = (ce[:3].mean() + ce[3:].mean()) / n  # image 1 has no masked patch but counts in N
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert p == masks.shape[1]


def test_ibot_center_ignores_an_empty_batch_of_patches():
    loss = IBOTPatchLoss(4)
    loss.teacher_probs(torch.zeros(0, 4), 0.07)
    assert torch.equal(loss.center, torch.zeros(1, 4))


def test_koleo_matches_a_cdist_reference_and_survives_duplicates():
    torch.manual_seed(5)
    x = torch.randn(9, 4)
    xn = F.normalize(x, dim=-1)
    d = torch.cdist(xn, xn)
    d.fill_diagonal_(float("inf"))
    ref = -torch.log(d.min(1).values).mean()
    assert koleo_loss(x).item() == pytest.approx(ref.item(), rel=1e-4)
    # exact duplicates (what quantized embeddings would be) give a huge but finite loss
    dup = torch.cat([x[:1], x[:1], x[1:3]]).requires_grad_(True)
    value = koleo_loss(dup)
    value.backward()
    assert torch.isfinite(value) and value.item() > koleo_loss(x[:4]).item() + 5
    assert torch.isfinite(dup.grad).all()
    assert koleo_loss(torch.randn(1, 4)).item() == 0.0


def test_dino_head_shapes_and_weight_normalised_prototypes():
    torch.manual_seed(6)
    head = DINOHead(8, 10, hidden_dim=16, bottleneck_dim=4, nlayers=3)
    x = torch.randn(5, 8)
    out = head(x)
    assert out.shape == (5, 10)
    assert len([m for m in head.mlp if isinstance(m, torch.nn.Linear)]) == 3
    # logits are cosines with unit-norm prototypes at init
    assert torch.allclose(head.prototypes().norm(dim=1), torch.ones(10), atol=1e-6)
    assert bool((out.abs() <= 1 + 1e-5).all())
    # weight norm: scaling the direction parameters leaves the logits unchanged ...
    with torch.no_grad():
        head.weight_v.mul_(3.0)
    assert torch.allclose(head(x), out, atol=1e-6)
    # ... while the norm parameter scales them
    with torch.no_grad():
        head.weight_g.fill_(2.0)
    assert torch.allclose(head(x), 2 * out, atol=1e-6)
