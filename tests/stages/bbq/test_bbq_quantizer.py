"""Shared-codebook residual quantizer against a brute-force reference."""

import pytest
import torch

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.bbq.quantizer import SharedResidualQuantizer


def _reference_codes(books: torch.Tensor, z: torch.Tensor, table_of) -> torch.Tensor:
    """Explicit loops: per item, signal and level the nearest codeword by full distances."""
    n, s_count, _ = z.shape
    levels, k = books.shape[1], books.shape[2]
    codes = torch.zeros(n, s_count, levels, dtype=torch.long)
    for i in range(n):
        for s in range(s_count):
            r = z[i, s].clone()
            for lv in range(levels):
                dists = [float(((r - books[table_of(s), lv, c]) ** 2).sum()) for c in range(k)]
                c = min(range(k), key=lambda j: dists[j])
                codes[i, s, lv] = c
                r = r - books[table_of(s), lv, c]
    return codes


@pytest.mark.parametrize("shared", [True, False])
def test_codes_equal_brute_force_nearest_codes(shared):
    torch.manual_seed(0)
    rq = SharedResidualQuantizer(4, num_signals=3, levels=3, codebook_size=5, shared=shared)
    z = torch.randn(12, 3, 4)
    rq.train()
    out = rq(z)  # k-means init on this batch, no restarts (threshold 0)
    books = rq.codebooks.detach()
    ref = _reference_codes(books, z, rq.table_of)
    assert torch.equal(out.codes, ref)
    assert torch.equal(rq.encode(z), ref)
    assert torch.allclose(out.quantized, rq.decode(ref), atol=1e-6)


def test_shared_codebook_is_one_table_per_level_for_all_signals():
    torch.manual_seed(0)
    rq = SharedResidualQuantizer(4, num_signals=3, levels=2, codebook_size=6, shared=True)
    assert rq.codebooks.shape == (1, 2, 6, 4)
    out = rq(torch.randn(20, 3, 4))
    # every signal's loss reaches the one table, at every level
    for s in range(3):
        (grad,) = torch.autograd.grad(out.per_signal[s], rq.codebooks, retain_graph=True)
        assert all(float(grad[0, lv].abs().sum()) > 0 for lv in range(2))
    # the same code index means the same codeword for every signal
    dec = rq.decode(torch.zeros(1, 3, 2, dtype=torch.long))
    assert torch.equal(dec[0, 0], dec[0, 1]) and torch.equal(dec[0, 1], dec[0, 2])


def test_unshared_codebooks_keep_signals_apart():
    torch.manual_seed(0)
    rq = SharedResidualQuantizer(4, num_signals=3, levels=2, codebook_size=6, shared=False)
    assert rq.codebooks.shape == (3, 2, 6, 4)
    out = rq(torch.randn(20, 3, 4))
    (grad,) = torch.autograd.grad(out.per_signal[1], rq.codebooks)
    assert float(grad[1].abs().sum()) > 0
    assert float(grad[0].abs().sum()) == 0 and float(grad[2].abs().sum()) == 0


def test_rq_loss_is_the_papers_equation_9():
    torch.manual_seed(0)
    rq = SharedResidualQuantizer(3, num_signals=2, levels=2, codebook_size=4, alpha=0.25)
    z = torch.randn(10, 2, 3)
    out = rq(z)
    books = rq.codebooks.detach()[0]
    expected = torch.zeros(2)
    for s in range(2):
        r = z[:, s]
        for lv in range(2):
            c = books[lv][out.codes[:, s, lv]]
            expected[s] += ((r - c) ** 2).mean() * 1.25  # sg-terms: same value, weights 1 + alpha
            r = r - c
    assert torch.allclose(out.per_signal, expected, atol=1e-6)
    assert torch.allclose(out.loss, expected.sum(), atol=1e-6)


def test_dead_codes_are_restarted_on_batch_residuals():
    torch.manual_seed(0)
    rq = SharedResidualQuantizer(
        2, num_signals=1, levels=1, codebook_size=3, dead_code_threshold=0.5, usage_decay=0.0
    )
    z = torch.randn(30, 1, 2)
    rq(z)
    with torch.no_grad():
        rq.codebooks[0, 0, 2] = 1e6  # a code far away: never chosen
    rq(z)
    far = rq.codebooks.detach()[0, 0, 2]
    assert float(far.abs().max()) < 1e3
    assert bool((z[:, 0] == far).all(dim=1).any())  # moved onto one of the batch's residuals


def test_wrong_shape_is_a_user_error():
    rq = SharedResidualQuantizer(4, num_signals=3, levels=1, codebook_size=2)
    with pytest.raises(MscgError, match=r"\[B, 3, 4\]"):
        rq(torch.randn(5, 2, 4))
