"""RQ tokenizer stage glue: trains a quantizer on an item-embedding table, exports codes.

``kind`` selects the tokenizer: ``"rq"`` (paper default: EMA residual quantizer directly in the
embedding space; there are no trainable weights, so training is online k-means), ``"rqvae"``
(MLP encoder/decoder with a reconstruction loss, optimised with Adam) or ``"kmeans"`` (residual
k-means at fit start, codebooks frozen afterwards). The residual quantizer itself is the pure
module :class:`~mscg_lightning.stages.rq.quantizer.ResidualQuantizer`.

Under DDP, kinds ``rq`` and ``kmeans`` have no parameter with a gradient, which
``DistributedDataParallel`` refuses; the table is small, so run this stage on one device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.rq.collisions import append_collision_level, code_diagnostics
from mscg_lightning.stages.rq.quantizer import RQVAE, ResidualQuantizer
from mscg_lightning.stages.rq.weights_file import read_weights, write_weights

Kind = Literal["rq", "rqvae", "kmeans"]
Normalize = Literal["none", "l2", "standardize"]
_META_KEY = "mscg_rq_module"


def check_embeddings(
    x: Tensor,
    dim: int,
    min_rows: int = 0,
    item_idx: Tensor | None = None,
    name: str = "embedding table",
) -> None:
    """Raise MscgError unless x is a finite [N, dim] table with at least ``min_rows`` rows.

    A non-finite row is named by its item_idx when given, else by its row position.
    """
    if x.ndim != 2:
        raise MscgError(f"The {name} must be 2-d [items, dim], got shape {list(x.shape)}.")
    if x.shape[1] != dim:
        raise MscgError(
            f"The {name} has dimension {x.shape[1]} but the quantizer was built for {dim}."
        )
    bad = torch.nonzero(~torch.isfinite(x).all(1)).flatten()
    if len(bad):
        row = int(bad[0])
        where = f"item_idx {int(item_idx[row])}" if item_idx is not None else f"row {row}"
        more = f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""
        raise MscgError(f"The {name} has NaN or infinite values at {where}{more}.")
    if x.shape[0] < min_rows:
        raise MscgError(
            f"The {name} has {x.shape[0]} items, fewer than the {min_rows} codes per level; "
            "lower codebook_size."
        )


class EmbeddingsDataModule(LightningDataModule):
    """In-memory item-embedding table [N, D] served in (optionally shuffled) batches.

    The shuffle order comes from its own generator seeded with ``seed``, so it does not depend
    on what else consumed the global RNG.
    """

    def __init__(
        self,
        embeddings: Tensor,
        batch_size: int = 1024,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if embeddings.ndim != 2:
            raise MscgError(
                f"The embedding table must be 2-d [items, dim], got {list(embeddings.shape)}."
            )
        self.embeddings = embeddings.detach().float()
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.num_workers = num_workers

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def dataset(self) -> Dataset:
        """What one training row holds (subclasses serve more tensors per row)."""
        return TensorDataset(self.embeddings)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.dataset(),
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
        )


class RQModule(LightningModule):
    """Trains a residual-quantization tokenizer; logs loss, usage, perplexity, collisions.

    Args:
        dim: embedding dimension D of the table.
        levels, codebook_size: L levels x K codes [3 x 256].
        kind: "rq" | "rqvae" | "kmeans" (see module docstring).
        lr: Adam learning rate (rqvae only).
        decay: EMA decay of the codebooks.
        commitment_weight: weight of the commitment loss in the rqvae objective (kind "rq"
            has no gradient, so there it only scales the logged loss).
        normalize: "none" (paper), "l2" (unit rows) or "standardize" (per-dimension mean/std
            of the training table, stored with the codebooks).
        kmeans_init, kmeans_iters: residual k-means initialisation.
        kmeans_sample: at most this many random rows of the table feed the k-means init.
        dead_code_threshold: EMA count per batch under which a code is restarted.
        latent_dim, hidden_dims: RQ-VAE MLP sizes.
    """

    def __init__(
        self,
        dim: int,
        levels: int = 3,
        codebook_size: int = 256,
        kind: Kind = "rq",
        lr: float = 1e-3,
        decay: float = 0.99,
        commitment_weight: float = 0.25,
        normalize: Normalize = "none",
        kmeans_init: bool = True,
        kmeans_iters: int = 20,
        kmeans_sample: int = 100_000,
        dead_code_threshold: float = 1.0,
        latent_dim: int = 64,
        hidden_dims: list[int] | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("rq", "rqvae", "kmeans"):
            raise MscgError(f"Unknown RQ kind '{kind}': use 'rq', 'rqvae' or 'kmeans'.")
        if normalize not in ("none", "l2", "standardize"):
            raise MscgError(f"Unknown normalize '{normalize}': use 'none', 'l2' or 'standardize'.")
        self.save_hyperparameters()
        # EMA codebooks take no optimizer step; rqvae steps its optimizer by hand.
        self.automatic_optimization = False
        self.kind, self.normalize, self.dim = kind, normalize, dim
        self.codebook_size, self.levels = codebook_size, levels
        self.lr, self.kmeans_sample = lr, kmeans_sample
        qkw: dict[str, Any] = {
            "levels": levels,
            "codebook_size": codebook_size,
            "decay": decay,
            "kmeans_init": kmeans_init,
            "kmeans_iters": kmeans_iters,
            "dead_code_threshold": dead_code_threshold,
            "commitment_weight": commitment_weight,
            "ema_update": kind != "kmeans",
        }
        self.model: ResidualQuantizer | RQVAE
        if kind == "rqvae":
            hidden = list(hidden_dims) if hidden_dims is not None else [256]
            self.model = RQVAE(dim, latent_dim=latent_dim, hidden_dims=hidden, **qkw)
        else:
            self.model = ResidualQuantizer(dim, **qkw)
        self.register_buffer("norm_mean", torch.zeros(dim))
        self.register_buffer("norm_std", torch.ones(dim))

    # -- data helpers --------------------------------------------------------------------
    def _table(self) -> Tensor | None:
        """The datamodule's whole embedding table [N, D], if the trainer has one."""
        trainer = getattr(self, "_trainer", None)
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        return getattr(dm, "embeddings", None)

    def normalize_input(self, x: Tensor) -> Tensor:
        """Apply the configured normalisation to x [B, D]."""
        if self.normalize == "l2":
            return F.normalize(x, dim=-1)
        if self.normalize == "standardize":
            return (x - self.norm_mean) / self.norm_std
        return x

    # -- Lightning hooks -----------------------------------------------------------------
    def on_fit_start(self) -> None:
        table = self._table()
        if table is None:
            if self.normalize == "standardize":
                raise MscgError("normalize='standardize' needs the EmbeddingsDataModule table.")
            return  # the quantizer initialises on its first batch
        check_embeddings(table, self.dim, min_rows=self.codebook_size)
        quantizer = self.model.quantizer if isinstance(self.model, RQVAE) else self.model
        if bool(quantizer.initialized):
            return  # resumed from a checkpoint or fitted before: keep codebooks and statistics
        table = table.to(self.device)
        if self.normalize == "standardize":
            self.norm_mean.copy_(table.mean(0))
            # A constant dimension keeps std 1 instead of dividing by zero.
            std = table.std(0) if len(table) > 1 else torch.ones_like(self.norm_std)
            self.norm_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))
        sample = table
        if len(table) > self.kmeans_sample:
            sample = table[torch.randperm(len(table))[: self.kmeans_sample].to(table.device)]
        self.model.init_codebooks(self.normalize_input(sample))

    def training_step(self, batch: tuple[Tensor], batch_idx: int) -> Tensor:
        x = self.normalize_input(batch[0])
        if self.kind != "rqvae":
            # "rq" updates its EMA codebooks inside forward; "kmeans" only measures the error.
            loss = self.model(x).commit_loss
        else:
            out = self.model(x)
            loss = out.recon_loss + out.commit_loss
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            self.log("train/recon_loss", out.recon_loss, on_step=False, on_epoch=True)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def on_train_epoch_end(self) -> None:
        table = self._table()
        if table is None:
            return  # nothing to diagnose without the whole table
        codes = self.encode(table.to(self.device))
        diag = code_diagnostics(codes, self.codebook_size)
        self.log("rq/collision_rate", diag["collision_rate"])
        self.log("rq/largest_group", float(diag["largest_group"]))
        self.log("rq/distinct_prefixes", float(diag["distinct_prefixes"]))
        for lv in diag["per_level"]:
            self.log(f"rq/usage_level{lv['level']}", lv["usage"])
            self.log(f"rq/perplexity_level{lv['level']}", lv["perplexity"])
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                for j in range(self.levels):
                    logger.experiment.add_histogram(
                        f"rq/codes_level{j + 1}", codes[:, j].cpu(), self.current_epoch
                    )

    def configure_optimizers(self) -> torch.optim.Optimizer | None:
        if self.kind == "rqvae":
            return torch.optim.Adam(self.model.parameters(), lr=self.lr)
        return None

    # -- export --------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, embeddings: Tensor, item_idx: Tensor | None = None) -> Tensor:
        """Codes [N, L] int64 of embeddings [N, D] (validated, normalised, never updating)."""
        check_embeddings(embeddings, self.dim, item_idx=item_idx)
        return self.model.encode(self.normalize_input(embeddings.to(self.norm_mean.device)))

    @torch.no_grad()
    def export_codes(
        self, embeddings: Tensor, item_idx: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        """Codes with collision level [N, L+1] int64 (CPU) and their diagnostics dict.

        Row i of ``embeddings`` [N, D] is item ``item_idx[i]`` (default i); collisions are
        ranked by ascending item_idx. Diagnostics: see ``code_diagnostics``, plus
        ``collision_size`` (max collision code + 1).
        """
        codes = self.encode(embeddings, item_idx).cpu()
        full = append_collision_level(codes, None if item_idx is None else item_idx.cpu())
        diag = code_diagnostics(full, self.codebook_size, levels=self.levels)
        diag["collision_size"] = int(full[:, -1].max()) + 1 if len(full) else 0
        return full, diag

    def save_codebooks(self, path: str | Path) -> None:
        """Write the tokenizer (codebooks, weights, normalisation) and its hparams to safetensors."""
        write_weights(self, path, {_META_KEY: json.dumps(dict(self.hparams))})

    @classmethod
    def from_codebooks(cls, path: str | Path) -> RQModule:
        """Rebuild a module written by :meth:`save_codebooks`; it encodes exactly as before."""
        path = Path(path)
        meta, state = read_weights(path, "Codebook file")
        if _META_KEY not in meta:
            raise MscgError(f"Codebook file {path} was not written by RQModule.save_codebooks.")
        module = cls(**json.loads(meta[_META_KEY]))
        module.load_state_dict(state)
        return module
