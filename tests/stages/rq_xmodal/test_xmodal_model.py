"""Cross-modal tokenizer: gradient paths of L_con per level, InfoNCE vs a loop reference."""

import math

import pytest
import torch

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.rq_xmodal.contrastive import (
    info_nce,
    sample_positives,
    symmetric_info_nce,
)
from mscg_lightning.stages.rq_xmodal.model import CrossModalRQVAE, pseudo_labels


def _batch(n=32, dt=12, dv=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = {"text": torch.randn(n, dt, generator=g), "image": torch.randn(n, dv, generator=g)}
    # Few labels, so that every anchor has in-batch positives.
    labels = {"text": torch.arange(n) % 4, "image": torch.arange(n) % 5}
    return x, labels


def _model(**kw):
    torch.manual_seed(0)
    args = dict(latent_dim=8, hidden_dims=[16], levels=4, codebook_size=4, kmeans_iters=2)
    args.update(kw)
    return CrossModalRQVAE({"text": 12, "image": 10}, **args)


def _encoder_grad_of_level(model, level):
    """Norm of the text encoder's gradient from L_con at one level only."""
    x, labels = _batch()
    model.train()
    model.init_codebooks(x)
    weights = [0.0] * model.levels
    weights[level] = 1.0
    model.con_weights = weights
    model.align_weight = 0.0
    model.zero_grad()
    out = model(x, labels, generator=torch.Generator().manual_seed(1))
    out.losses[f"con_level{level}"].backward()
    return sum(p.grad.norm() for p in model.encoders["text"].parameters() if p.grad is not None)


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_con_loss_reaches_encoder_at_every_level(level):
    assert float(_encoder_grad_of_level(_model(), level)) > 1e-6


@pytest.mark.parametrize("level", [2, 3])
def test_official_residual_update_leaves_deep_levels_without_gradient(level):
    grad = _encoder_grad_of_level(_model(residual_update="official"), level)
    assert float(grad) == 0.0


def test_official_residual_update_keeps_level0_gradient():
    assert float(_encoder_grad_of_level(_model(residual_update="official"), 0)) > 1e-6


def test_residual_values_equal_under_both_updates():
    x, labels = _batch()
    a, b = _model(), _model(residual_update="official")
    b.load_state_dict(a.state_dict())
    a.init_codebooks(x)
    b.load_state_dict(a.state_dict())
    ra, rb = a(x, labels).levels["text"], b(x, labels).levels["text"]
    assert torch.equal(ra.codes, rb.codes)
    for u, v in zip(ra.residuals, rb.residuals):
        torch.testing.assert_close(u, v)


def test_align_trains_codebooks_in_paper_mode_and_encoder_only_in_official_mode():
    x, labels = _batch()
    for mode, books_move in (("codebooks", True), ("encoder", False)):
        model = _model(con_weights=[0.0] * 4, align_grad=mode)
        model.init_codebooks(x)
        model.zero_grad()
        model(x, labels).losses["align"].backward()
        grad = model.quantizers["text"].codebooks.grad
        moved = grad is not None and float(grad.abs().sum()) > 0
        assert moved == books_move
        enc = sum(
            float(p.grad.abs().sum())
            for p in model.encoders["text"].parameters()
            if p.grad is not None
        )
        assert (enc > 0) == (not books_move)


def test_total_loss_trains_and_codes_are_in_range():
    x, labels = _batch()
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        out = model(x, labels, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = float(out.loss.detach()) if first is None else first
    assert float(out.loss.detach()) < first
    codes = model.encode("image", x["image"])
    assert codes.shape == (32, 4) and int(codes.min()) >= 0 and int(codes.max()) < 4


def test_ema_mode_reuses_project_quantizer_and_refuses_codebook_align():
    with pytest.raises(MscgError):
        _model(codebook_update="ema")
    model = _model(codebook_update="ema", align_grad="encoder")
    x, labels = _batch()
    before = model.quantizers["text"].codebooks.clone()
    model.train()
    model(x, labels)
    assert not torch.equal(before, model.quantizers["text"].codebooks)


def _loop_info_nce(a, c, pos, tau):
    total, n = 0.0, 0
    for i in range(a.shape[0]):
        if pos[i] < 0:
            continue
        scores = [float(a[i] @ c[j]) / tau for j in range(c.shape[0])]
        log_den = math.log(sum(math.exp(s) for s in scores))
        total += -(scores[int(pos[i])] - log_den)
        n += 1
    return total / n


def test_info_nce_matches_loop_reference():
    g = torch.Generator().manual_seed(3)
    a, c = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    pos = torch.tensor([2, -1, 0, 5, 5, 1])
    assert float(info_nce(a, c, pos, 0.5)) == pytest.approx(
        _loop_info_nce(a, c, pos, 0.5), rel=1e-5
    )
    sym = symmetric_info_nce(a, c, 0.5)
    ref = _loop_info_nce(a, c, torch.arange(6), 0.5) + _loop_info_nce(c, a, torch.arange(6), 0.5)
    assert float(sym) == pytest.approx(ref, rel=1e-5)


def test_sample_positives_share_label_and_are_not_self():
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3])
    pos = sample_positives(labels, generator=torch.Generator().manual_seed(0))
    for i, p in enumerate(pos.tolist()):
        if labels.tolist().count(labels[i]) == 1:
            assert p == -1
        else:
            assert p != i and labels[p] == labels[i]
    own = sample_positives(labels, missing="self")
    assert own[3] == 3 and own[6] == 6


def test_pseudo_labels_cluster_separated_groups():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(20, 3) * 0.01 + 5, torch.randn(20, 3) * 0.01 - 5])
    lab = pseudo_labels(x, 2, iters=5)
    assert len(set(lab[:20].tolist())) == 1 and len(set(lab[20:].tolist())) == 1
    assert lab[0] != lab[20]
    with pytest.raises(MscgError):
        pseudo_labels(x, 41)
