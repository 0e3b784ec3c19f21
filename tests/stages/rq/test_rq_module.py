"""RQModule / EmbeddingsDataModule: fit a few steps, export, save/reload, bad input."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.rq.module import EmbeddingsDataModule, RQModule


def _table(n: int = 200, d: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _fit(x: torch.Tensor, seed: int = 0, logger=False, epochs: int = 2, **kw) -> RQModule:
    L.seed_everything(seed, verbose=False)
    module = RQModule(dim=x.shape[1], levels=2, codebook_size=8, kmeans_iters=5, **kw)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=EmbeddingsDataModule(x, batch_size=64, seed=seed))
    module.last_trainer = trainer
    return module


def test_same_seed_same_data_gives_identical_codes() -> None:
    x = _table()
    a, _ = _fit(x).export_codes(x)
    b, _ = _fit(x).export_codes(x)
    assert torch.equal(a, b)


def test_export_codes_are_unique_with_collision_level() -> None:
    x = _table()
    module = _fit(x)
    assert int(module.model.ema_steps) == 8  # 2 epochs x 4 batches: EMA ran every step
    item_idx = torch.arange(len(x)).flip(0)
    codes, diag = module.export_codes(x, item_idx=item_idx)
    assert codes.shape == (len(x), 3) and codes.dtype == torch.int64
    assert len({tuple(r) for r in codes.tolist()}) == len(x)
    assert torch.equal(codes[:, :2], module.encode(x))
    assert diag["collision_size"] == diag["largest_group"] == int(codes[:, 2].max()) + 1
    # collision ranks follow item_idx: within a prefix, a larger item_idx gets a larger rank
    first = codes[:, :2].eq(codes[0, :2]).all(1).nonzero().flatten()
    ranks = codes[first, 2][item_idx[first].argsort()]
    assert ranks.tolist() == list(range(len(first)))


def test_clustered_data_gets_one_first_code_per_cluster() -> None:
    centers = 30 * torch.eye(8)
    x = centers.repeat_interleave(25, 0) + 0.1 * _table(200, 8)
    module = _fit(x, epochs=1)
    first = module.encode(x)[:, 0].view(8, 25)
    assert (first == first[:, :1]).all()  # every cluster on one level-1 code
    assert len(set(first[:, 0].tolist())) == 8  # and different clusters on different codes


def test_save_and_reload_gives_identical_codes(tmp_path) -> None:
    x = 5 + 3 * _table()  # off-centre, so standardize statistics matter
    module = _fit(x, normalize="standardize")
    path = tmp_path / "codebooks.safetensors"
    module.save_codebooks(path)
    again = RQModule.from_codebooks(path)
    assert again.normalize == "standardize"
    assert torch.equal(again.norm_mean, module.norm_mean)
    assert torch.equal(again.export_codes(x)[0], module.export_codes(x)[0])


def test_resume_from_checkpoint_keeps_codebooks(tmp_path) -> None:
    x = _table()
    module = _fit(x, epochs=1)
    ckpt = tmp_path / "rq.ckpt"
    module.last_trainer.save_checkpoint(ckpt)
    L.seed_everything(99, verbose=False)  # a re-initialisation would now differ
    fresh = RQModule(dim=8, levels=2, codebook_size=8, kmeans_iters=5)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False)
    trainer.fit(fresh, datamodule=EmbeddingsDataModule(x, batch_size=64), ckpt_path=ckpt)
    assert torch.equal(fresh.model.codebooks, module.model.codebooks)


def test_kmeans_kind_keeps_init_codebooks_and_rqvae_trains() -> None:
    x = _table()
    km = _fit(x, kind="kmeans", epochs=1)
    L.seed_everything(0, verbose=False)
    ref = RQModule(dim=8, levels=2, codebook_size=8, kmeans_iters=5, kind="kmeans")
    ref.model.init_codebooks(x)  # same seed, same table: the init that fit ran
    assert torch.equal(km.model.codebooks, ref.model.codebooks)
    vae = _fit(x, kind="rqvae", latent_dim=4, hidden_dims=[16], epochs=1)
    assert "train/recon_loss" in vae.last_trainer.callback_metrics
    assert vae.export_codes(x)[0].shape == (len(x), 3)


def test_epoch_diagnostics_logged_to_tensorboard(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="rq")
    module = _fit(_table(), logger=logger, epochs=1)
    metrics = module.last_trainer.callback_metrics
    for key in ("rq/collision_rate", "rq/usage_level1", "rq/perplexity_level2", "train/loss"):
        assert key in metrics
    assert 0.0 < float(metrics["rq/usage_level1"]) <= 100.0
    logger.experiment.flush()
    acc = EventAccumulator(logger.log_dir).Reload()
    assert {"rq/codes_level1", "rq/codes_level2"} <= set(acc.Tags()["histograms"])


def test_bad_input_is_one_sentence_error() -> None:
    x = _table()
    module = RQModule(dim=8, levels=2, codebook_size=8)
    module.model.init_codebooks(x)
    with pytest.raises(MscgError, match="dimension 5 but the quantizer was built for 8"):
        module.export_codes(torch.zeros(4, 5))
    bad = x.clone()
    bad[7, 2] = float("nan")
    bad[9, 0] = float("inf")
    with pytest.raises(MscgError, match=r"at row 7 \(and 1 more rows\)"):
        module.export_codes(bad)
    with pytest.raises(MscgError, match="at item_idx 107"):
        module.export_codes(bad, item_idx=torch.arange(100, 300))
    with pytest.raises(MscgError, match="has 5 items, fewer than the 8 codes per level"):
        _fit(_table(5))
    with pytest.raises(MscgError, match="Unknown RQ kind"):
        RQModule(dim=8, kind="vq")
