"""Constrained loss (paper Eq. 6) against hand-computed values."""

import math

import torch

from mscg_lightning.stages.genrec.losses import (
    generative_loss,
    masked_log_softmax,
    target_log_probs,
)


def test_constrained_and_full_loss_by_hand() -> None:
    # one item, two levels, vocabulary 4
    logits = torch.tensor([[[2.0, 1.0, 0.0, -1.0], [0.5, 0.5, 3.0, 0.0]]])
    targets = torch.tensor([[0, 1]])
    allowed = torch.tensor([[[True, False, True, False], [True, True, False, False]]])
    level0 = -2.0 + math.log(math.exp(2.0) + math.exp(0.0))  # children {0, 2}
    level1 = -0.5 + math.log(2 * math.exp(0.5))  # children {0, 1}: log 2
    got = generative_loss(logits, targets, allowed, reduction="none")
    assert torch.allclose(got, torch.tensor([[level0, level1]]), atol=1e-6)
    full0 = -2.0 + math.log(sum(math.exp(z) for z in (2.0, 1.0, 0.0, -1.0)))
    full1 = -0.5 + math.log(sum(math.exp(z) for z in (0.5, 0.5, 3.0, 0.0)))
    full = generative_loss(logits, targets, None, reduction="none")
    assert torch.allclose(full, torch.tensor([[full0, full1]]), atol=1e-6)
    assert torch.allclose(generative_loss(logits, targets, allowed), got.mean())
    assert torch.allclose(generative_loss(logits, targets, allowed, reduction="sum"), got.sum())
    # the constrained loss is never larger: it drops impermissible codes from the normaliser
    assert (got <= full).all()
    assert torch.allclose(target_log_probs(logits, targets, allowed), -got)


def test_no_gradient_to_impermissible_codes_and_no_nan() -> None:
    logits = torch.randn(3, 2, 5, requires_grad=True)
    allowed = torch.rand(3, 2, 5) < 0.5
    allowed[..., 1] = True
    allowed[2, 1] = False  # a row with nothing allowed: -inf, never NaN
    targets = torch.ones(3, 2, dtype=torch.long)
    logp = masked_log_softmax(logits, allowed)
    assert torch.isneginf(logp[2, 1]).all()
    assert not torch.isnan(logp).any()
    generative_loss(logits[:2], targets[:2], allowed[:2]).backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[:2][~allowed[:2]] == 0).all()
    assert (logits.grad[:2][allowed[:2]] != 0).any()
