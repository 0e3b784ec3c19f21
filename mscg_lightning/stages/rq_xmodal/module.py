"""Lightning glue of the cross-modal tokenizer: paired data, training loop, code export.

The model is the pure :class:`~mscg_lightning.stages.rq_xmodal.model.CrossModalRQVAE`; this
module adds the optimizer (AdamW, paper: lr 1e-3), logging of every loss term and of the
collision rates per epoch, and the export of both modalities' codes with a collision level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.rq.collisions import append_collision_level, code_diagnostics
from mscg_lightning.stages.rq.module import EmbeddingsDataModule, check_embeddings
from mscg_lightning.stages.rq.quantizer import load_with_config, save_with_config
from mscg_lightning.stages.rq_xmodal.collisions import Collision, reassign_by_distance
from mscg_lightning.stages.rq_xmodal.model import MODALITIES, CrossModalRQVAE


class PairedEmbeddingsDataModule(EmbeddingsDataModule):
    """Items with both modalities: text [N, D_t], image [N, D_v] and pseudo-labels [N] each.

    Batches are tuples ``(text, image, text_label, image_label)``; shuffling as in
    :class:`EmbeddingsDataModule` (its own generator seeded with ``seed``).
    """

    def __init__(
        self,
        text: Tensor,
        image: Tensor,
        text_labels: Tensor,
        image_labels: Tensor,
        batch_size: int = 1024,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(text, batch_size, shuffle, seed, num_workers)
        n = text.shape[0]
        if not image.shape[0] == text_labels.shape[0] == image_labels.shape[0] == n:
            raise MscgError("rq_xmodal: the text and image tables must pair the same items.")
        self.tables = {"text": self.embeddings, "image": image.detach().float()}
        self.labels = {"text": text_labels.long(), "image": image_labels.long()}

    def dataset(self) -> Dataset:
        t, v = self.tables["text"], self.tables["image"]
        return TensorDataset(t, v, self.labels["text"], self.labels["image"])


class CrossModalRQModule(LightningModule):
    """Trains :class:`CrossModalRQVAE`; see its docstring for the switches.

    Args:
        text_dim, image_dim: input dimensions (filled in by the stage).
        pseudo_label_clusters: K of the k-means pseudo-labels per modality (paper 512).
        pseudo_label_iters: Lloyd iterations of that k-means.
        collision: "level" (the project's collision level) or "reassign" (MQL4GRec's
            reassignment by last-level distance, then the collision level for what remains).
        lr, weight_decay: AdamW (paper: lr 1e-3; official weight decay 1e-4).
        hidden_dims: encoder widths (default [512, 256, 128]).
        con_weights: lambda_con per level (default 0 on the first two levels, 0.1 after).
        The other arguments go to :class:`CrossModalRQVAE` unchanged.
    """

    def __init__(
        self,
        text_dim: int,
        image_dim: int,
        latent_dim: int = 32,
        hidden_dims: list[int] | None = None,
        levels: int = 4,
        codebook_size: int = 256,
        pseudo_label_clusters: int = 512,
        pseudo_label_iters: int = 20,
        con_weights: list[float] | None = None,
        align_weight: float = 0.001,
        tau: float = 0.1,
        alpha: float = 0.25,
        similarity: str = "dot",
        missing_positive: str = "skip",
        residual_update: str = "paper",
        codebook_update: str = "grad",
        align_grad: str = "codebooks",
        squared_error: str = "mean",
        kmeans_iters: int = 20,
        collision: Collision = "level",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        if collision not in ("level", "reassign"):
            raise MscgError(f"rq_xmodal collision='{collision}' is not 'level' or 'reassign'.")
        self.save_hyperparameters()
        weights = con_weights if con_weights is not None else [0.0, 0.0] + [0.1] * (levels - 2)
        self.model = CrossModalRQVAE(
            {"text": text_dim, "image": image_dim},
            latent_dim=latent_dim,
            hidden_dims=hidden_dims if hidden_dims is not None else [512, 256, 128],
            levels=levels,
            codebook_size=codebook_size,
            con_weights=weights[:levels],
            align_weight=align_weight,
            tau=tau,
            alpha=alpha,
            similarity=similarity,  # type: ignore[arg-type]
            missing_positive=missing_positive,  # type: ignore[arg-type]
            residual_update=residual_update,  # type: ignore[arg-type]
            codebook_update=codebook_update,  # type: ignore[arg-type]
            align_grad=align_grad,  # type: ignore[arg-type]
            squared_error=squared_error,  # type: ignore[arg-type]
            kmeans_iters=kmeans_iters,
        )
        self.dims = {"text": text_dim, "image": image_dim}
        self.levels, self.codebook_size = levels, codebook_size
        self.pseudo_label_clusters, self.pseudo_label_iters = (
            pseudo_label_clusters,
            pseudo_label_iters,
        )
        self.collision = collision
        self.lr, self.weight_decay = lr, weight_decay

    def _tables(self) -> dict[str, Tensor] | None:
        trainer = getattr(self, "_trainer", None)
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        return getattr(dm, "tables", None)

    def on_fit_start(self) -> None:
        tables = self._tables()
        if tables is None or bool(self.model.quantizers["text"].initialized):
            return  # initialises on the first batch, or resumed / fitted before
        for m in MODALITIES:
            check_embeddings(
                tables[m], self.dims[m], min_rows=self.codebook_size, name=f"{m} table"
            )
        self.model.init_codebooks({m: tables[m].to(self.device) for m in MODALITIES})

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        text, image, text_label, image_label = batch
        out = self.model({"text": text, "image": image}, {"text": text_label, "image": image_label})
        for name, value in out.losses.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True)
        self.log("train/loss", out.loss, prog_bar=True, on_step=True, on_epoch=True)
        return out.loss

    def on_train_epoch_end(self) -> None:
        tables = self._tables()
        if tables is None:
            return
        for m in MODALITIES:
            codes = self.model.encode(m, tables[m].to(self.device))
            diag = code_diagnostics(codes, self.codebook_size)
            self.log(f"rq_xmodal/collision_rate_{m}", diag["collision_rate"])
            for lv in diag["per_level"]:
                self.log(f"rq_xmodal/usage_{m}_level{lv['level']}", lv["usage"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    @torch.no_grad()
    def export_codes(
        self, modality: str, embeddings: Tensor, item_idx: Tensor
    ) -> tuple[Tensor, dict[str, Any]]:
        """Codes with collision level [N, L+1] int64 (CPU) of one modality, and diagnostics.

        Diagnostics: ``before`` (raw L codes) and ``after`` (L codes after the ``collision``
        rule) as :func:`code_diagnostics` dicts, ``collision_rate_before`` / ``_after`` and
        ``collision_size`` (max collision code + 1; every full tuple is unique).
        """
        check_embeddings(
            embeddings, self.dims[modality], item_idx=item_idx, name=f"{modality} table"
        )
        x = embeddings.to(self.device)
        raw = self.model.encode(modality, x).cpu()
        codes = raw
        if self.collision == "reassign":
            codes = reassign_by_distance(raw, self.model.last_level_distances(modality, x))
        full = append_collision_level(codes, item_idx.cpu())
        before = code_diagnostics(raw, self.codebook_size)
        after = code_diagnostics(codes, self.codebook_size)
        return full, {
            "collision": self.collision,
            "collision_rate_before": before["collision_rate"],
            "collision_rate_after": after["collision_rate"],
            "collision_size": int(full[:, -1].max()) + 1 if len(full) else 0,
            "before": before,
            "after": after,
        }

    def save_codebooks(self, path: str | Path) -> None:
        """Write weights and codebooks of both modalities with the model config (safetensors)."""
        save_with_config(self.model, {"kind": "rq_xmodal", **self.model.config}, path)

    @staticmethod
    def load_model(path: str | Path) -> CrossModalRQVAE:
        """Rebuild the :class:`CrossModalRQVAE` written by :meth:`save_codebooks`."""
        config, state = load_with_config(path, "rq_xmodal")
        model = CrossModalRQVAE(**config)
        model.load_state_dict(state)
        return model
