"""ResidualQuantizer / RQVAE against hand-made references."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.nn.functional as F

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.rq.kmeans import kmeans, nearest_code
from mscg_lightning.stages.rq.quantizer import RQVAE, ResidualQuantizer, load_quantizer


def _hand_quantizer(**kw) -> ResidualQuantizer:
    """D=2, L=2, K=2 with fixed codebooks (no training)."""
    q = ResidualQuantizer(dim=2, levels=2, codebook_size=2, **kw)
    q.codebooks.copy_(torch.tensor([[[0.0, 0.0], [10.0, 0.0]], [[0.0, 1.0], [0.0, -1.0]]]))
    q.initialized.fill_(True)
    return q


def test_nearest_code_matches_cdist() -> None:
    g = torch.Generator().manual_seed(0)
    x, cb = torch.randn(50, 6, generator=g), torch.randn(9, 6, generator=g)
    ref = torch.cdist(x, cb).argmin(1)
    assert torch.equal(nearest_code(x, cb), ref)
    assert torch.equal(nearest_code(x, cb, chunk=7), ref)  # chunking changes nothing


def test_encode_decode_hand_example() -> None:
    q = _hand_quantizer().eval()
    x = torch.tensor([[9.0, 0.8], [0.2, -0.7]])
    # [9, .8]: level 1 -> [10, 0] (code 1), residual [-1, .8] -> [0, 1] (code 0).
    # [.2, -.7]: level 1 -> [0, 0] (code 0), residual [.2, -.7] -> [0, -1] (code 1).
    codes = q.encode(x)
    assert codes.tolist() == [[1, 0], [0, 1]]
    assert torch.allclose(q.decode(codes), torch.tensor([[10.0, 1.0], [0.0, -1.0]]))


def test_forward_straight_through_and_commit_loss() -> None:
    q = _hand_quantizer(commitment_weight=0.5).eval()  # eval: no EMA update
    x = torch.tensor([[9.0, 0.8], [0.2, -0.7]], requires_grad=True)
    out = q(x)
    assert torch.allclose(out.quantized, torch.tensor([[10.0, 1.0], [0.0, -1.0]]))
    # Reference commitment: mean over levels of the MSE between residual and its codeword.
    r1 = x.detach()
    e1 = torch.tensor([[10.0, 0.0], [0.0, 0.0]])
    r2 = r1 - e1
    e2 = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    ref = 0.5 * (F.mse_loss(r1, e1) + F.mse_loss(r2, e2)) / 2
    assert torch.allclose(out.commit_loss, ref)
    out.quantized.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # straight-through: identity gradient


def test_kmeans_finds_separated_clusters() -> None:
    torch.manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [20.0, 20.0]])
    x = centers.repeat_interleave(25, 0) + 0.1 * torch.randn(100, 2)
    cent, share = kmeans(x, 4, iters=10)
    # every true center has one centroid within the noise, each cluster holds a quarter
    assert torch.cdist(centers, cent).min(1).values.max() < 0.2
    assert torch.allclose(share, torch.full((4,), 0.25))


def test_init_codebooks_residual_levels() -> None:
    torch.manual_seed(0)
    coarse = torch.tensor([[0.0, 0.0], [50.0, 50.0]])
    fine = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    x = (coarse[:, None, :] + fine[None, :, :]).reshape(4, 2).repeat(10, 1)
    q = ResidualQuantizer(dim=2, levels=2, codebook_size=2, kmeans_iters=10)
    q.init_codebooks(x)
    assert bool(q.initialized)
    # level 1 finds the coarse centres, level 2 the +-1 offsets: reconstruction is exact
    assert torch.allclose(q.decode(q.encode(x)), x, atol=1e-5)
    assert len({tuple(c) for c in q.encode(x).tolist()}) == 4


def test_ema_update_moves_codeword_to_batch_mean() -> None:
    q = _hand_quantizer(decay=0.0, dead_code_threshold=0.0, eps=1e-12, kmeans_init=False)
    q.init_share.fill_(0.5)
    q.train()
    x = torch.tensor([[9.0, 0.5], [11.0, 0.5], [1.0, 0.5]])
    q(x)
    # decay 0: each level-1 codeword becomes the mean of the rows it was assigned
    assert torch.allclose(q.codebooks[0], torch.tensor([[1.0, 0.5], [10.0, 0.5]]), atol=1e-5)
    assert int(q.ema_steps) == 1


def test_dead_code_restarts_from_batch() -> None:
    torch.manual_seed(0)
    q = ResidualQuantizer(dim=2, levels=1, codebook_size=2, dead_code_threshold=1.0)
    q.codebooks.copy_(torch.tensor([[[0.0, 0.0], [1000.0, 1000.0]]]))
    q.init_share.copy_(torch.tensor([[1.0, 0.0]]))
    q.initialized.fill_(True)
    x = torch.randn(8, 2)
    q.train()(x)
    # the never-used far code was moved onto one of the batch rows
    assert torch.cdist(q.codebooks[0][1:], x).min() < 1e-6


def test_training_is_deterministic_given_seed() -> None:
    data = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))

    def run() -> torch.Tensor:
        torch.manual_seed(123)
        q = ResidualQuantizer(dim=4, levels=2, codebook_size=8).train()
        for b in data.split(16):
            q(b)
        return q.encode(data)

    assert torch.equal(run(), run())


def test_save_and_reload_gives_identical_codes(tmp_path) -> None:
    torch.manual_seed(0)
    data = torch.randn(40, 3)
    q = ResidualQuantizer(dim=3, levels=2, codebook_size=4).train()
    q(data)
    path = tmp_path / "rq.safetensors"
    q.save(path)
    q2 = ResidualQuantizer.from_file(path)
    assert isinstance(load_quantizer(path), ResidualQuantizer)
    assert torch.equal(q2.codebooks, q.codebooks)
    assert torch.equal(q2.encode(data), q.encode(data))
    assert q2.levels == 2 and q2.codebook_size == 4


def test_bad_input_errors(tmp_path) -> None:
    q = _hand_quantizer()
    with pytest.raises(MscgError, match=r"\[N, 2\]"):
        q.encode(torch.zeros(3, 5))
    with pytest.raises(MscgError, match="no codebooks"):
        ResidualQuantizer(dim=2, levels=1, codebook_size=2).encode(torch.zeros(1, 2))
    with pytest.raises(MscgError, match="does not exist"):
        ResidualQuantizer.from_file(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(MscgError, match="not a readable"):
        ResidualQuantizer.from_file(tmp_path / "junk.safetensors")


def test_rqvae_trains_and_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    model = RQVAE(8, latent_dim=4, hidden_dims=[16], levels=2, codebook_size=8)
    model.init_codebooks(x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        out = model(x)
        loss = out.recon_loss + 0.25 * out.commit_loss
        first = first if first is not None else out.recon_loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert out.reconstruction.shape == (64, 8) and out.codes.shape == (64, 2)
    assert out.recon_loss.item() < first  # the MLPs learn through the straight-through path
    path = tmp_path / "vae.safetensors"
    model.save(path)
    again = load_quantizer(path)
    assert isinstance(again, RQVAE)
    assert torch.equal(again.encode(x), model.encode(x))
    with pytest.raises(MscgError, match="'rqvae' model, not 'rq'"):
        ResidualQuantizer.from_file(path)


def _ddp_worker(rank: int, init_file: str, shards: list, result: dict) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2
    )
    q = _hand_quantizer(decay=0.0, dead_code_threshold=0.0, eps=1e-12)
    q.init_share.fill_(0.5)
    q.train()(shards[rank])
    result[rank] = q.codebooks.clone()
    torch.distributed.destroy_process_group()


def test_ema_statistics_are_summed_over_ranks() -> None:
    """Two gloo ranks each see half the batch and end with the full-batch codebooks."""
    import torch.multiprocessing as mp

    x = torch.tensor([[9.0, 0.5], [11.0, 0.5], [1.0, 0.5], [12.0, 0.5]])
    ref = _hand_quantizer(decay=0.0, dead_code_threshold=0.0, eps=1e-12)
    ref.init_share.fill_(0.5)
    ref.train()(x)
    with tempfile.TemporaryDirectory() as d:
        manager = mp.get_context("fork").Manager()
        result = manager.dict()
        mp.start_processes(
            _ddp_worker,
            args=(os.path.join(d, "init"), [x[:2], x[2:]], result),
            nprocs=2,
            start_method="fork",
        )
        for rank in (0, 1):
            assert torch.allclose(result[rank], ref.codebooks, atol=1e-5)
