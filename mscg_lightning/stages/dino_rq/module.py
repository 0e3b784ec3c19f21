"""RQ-DINO LightningModule: thin glue around the pure ``RQDino`` (schedules, optimiser, logging).

Per optimiser step ``s`` of ``T`` (DINOv2 recipe; ``s_e`` = steps per epoch):

* learning rate: linear warm-up over ``warmup_epochs`` to ``base_lr * sqrt(global_batch / 1024)``,
  then cosine to ``min_lr``; weight decay cosine ``weight_decay -> weight_decay_end``;
* teacher temperature: linear ``warmup_teacher_temp -> teacher_temp`` over
  ``warmup_teacher_temp_epochs``; teacher momentum cosine ``momentum_teacher -> 1``;
* prototype (last-layer) gradients dropped for ``freeze_last_layer_epochs``; each student part
  (backbone, DINO head, iBOT head) clipped to norm ``clip_grad``; the teacher is moved by EMA
  right after each optimiser step.

DDP: with ``ibot_weight = 0`` neither the iBOT head nor the mask token is trained, so every
trainable student parameter gets a gradient and ``find_unused_parameters=False`` works.
The trainer's ``gradient_clip_val`` is not used: ``clip_grad`` is.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.dino_rq.losses import Centering
from mscg_lightning.stages.dino_rq.model import RQDino
from mscg_lightning.stages.dino_rq.model_config import RQDinoConfig
from mscg_lightning.stages.dino_rq.schedules import (
    cosine_schedule,
    scaled_learning_rate,
    teacher_momentum,
    teacher_temperature,
)


class RQDinoModule(LightningModule):
    """Trains RQ-DINO (paper Section 3.2, Eq. 5) on multi-crop batches of ``ImageDataModule``.

    Model args (see ``RQDinoConfig``): ``backbone`` (HF id or local dir; None = random init),
    ``backbone_config`` (Dinov2Config overrides), prototypes and head sizes, the residual
    quantizer (``rq_levels`` x ``rq_codebook_size``, EMA decay, dead-code threshold), loss
    weights (iBOT 1, KoLeo 0.1, commitment 0.01), centering, iBOT mask ratios.
    ``rq_refit_epochs``: epochs (fractional allowed) at which the codebooks are re-initialised
    by residual k-means on the last ``rq_refit_samples`` student CLS embeddings of global crops
    (``RQDino.refit_codebooks``); None keeps the single k-means init.
    ``rq_statistics``: what the codebooks' EMA updates, k-means init and refits see:
    ``clean_global`` (default) the student CLS of global crops without iBOT masking, closest to
    the clean centre crops whose codes are exported; ``all_views`` every quantized view (masked
    global and small local crops). ``rq_init_samples``: the k-means init waits for this many
    such embeddings gathered over batches (None: 10 x ``rq_codebook_size``; the student head
    sees unquantized embeddings meanwhile); 0: init on the first batch. ``quantize: false``
    trains plain DINO (no quantizer; the pretraining of the Table 3c benchmark).

    Optimisation args: ``base_lr`` (for a global batch of 1024, square-root scaled), ``min_lr``,
    ``warmup_epochs``, ``weight_decay`` -> ``weight_decay_end``, ``momentum_teacher``,
    ``teacher_temp`` with its warm-up, ``freeze_last_layer_epochs``, ``clip_grad``. Epoch
    counts may be fractional: they are turned into optimiser steps.

    DINOv2 settings for fine-tuning pretrained weights (``None``: DINOv2's value when
    ``backbone`` names pretrained weights, off for a randomly initialised backbone):
    ``layerwise_decay`` (0.9: block i of n trains at ``0.9 ** (n - i)`` of the lr, the
    embeddings at ``0.9 ** (n + 1)``), ``patch_embed_lr_mult`` (0.2 on the patch projection),
    ``drop_path_rate`` (0.1, ViT-S; student only, the teacher runs in eval mode; overrides
    ``backbone_config["drop_path_rate"]``).
    """

    def __init__(
        self,
        backbone: str | None = None,
        backbone_config: dict[str, Any] | None = None,
        local_files_only: bool = False,
        n_prototypes: int = 65536,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        head_layers: int = 3,
        ibot_separate_head: bool = True,
        rq_levels: int = 3,
        rq_codebook_size: int = 256,
        rq_decay: float = 0.99,
        rq_dead_code_threshold: float = 0.1,
        rq_refit_epochs: list[float] | None = None,
        rq_refit_samples: int = 4096,
        rq_statistics: Literal["clean_global", "all_views"] = "clean_global",
        rq_init_samples: int | None = None,
        quantize_local_crops: bool = True,
        quantize: bool = True,
        centering: Centering = "centering",
        student_temp: float = 0.1,
        ibot_weight: float = 1.0,
        koleo_weight: float = 0.1,
        commit_weight: float = 0.01,
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        mask_probability: float = 0.5,
        base_lr: float = 0.004,
        min_lr: float = 1e-6,
        warmup_epochs: float = 10.0,
        weight_decay: float = 0.04,
        weight_decay_end: float = 0.4,
        momentum_teacher: float = 0.992,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: float = 30.0,
        freeze_last_layer_epochs: float = 1.0,
        clip_grad: float = 3.0,
        layerwise_decay: float | None = None,
        patch_embed_lr_mult: float | None = None,
        drop_path_rate: float | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layerwise_decay, self.patch_embed_lr_mult, drop_path = pretrained_defaults(
            backbone is not None, layerwise_decay, patch_embed_lr_mult, drop_path_rate
        )
        overrides = dict(backbone_config or {})
        if drop_path is not None:
            overrides["drop_path_rate"] = drop_path
        config = RQDinoConfig(
            backbone=backbone,
            backbone_config=overrides,
            local_files_only=local_files_only,
            n_prototypes=n_prototypes,
            head_hidden_dim=head_hidden_dim,
            head_bottleneck_dim=head_bottleneck_dim,
            head_layers=head_layers,
            # An iBOT head without an iBOT loss would have no gradient (DDP would refuse it).
            ibot_separate_head=ibot_separate_head and ibot_weight > 0,
            rq_levels=rq_levels,
            rq_codebook_size=rq_codebook_size,
            rq_decay=rq_decay,
            rq_dead_code_threshold=rq_dead_code_threshold,
            rq_refit_samples=rq_refit_samples if rq_refit_epochs else 0,
            rq_statistics=rq_statistics,
            rq_init_samples=rq_init_samples,
            quantize_local_crops=quantize_local_crops,
            quantize=quantize,
            centering=centering,
            student_temp=student_temp,
            ibot_weight=ibot_weight,
            koleo_weight=koleo_weight,
            commit_weight=commit_weight,
            mask_ratio=tuple(mask_ratio),
            mask_probability=mask_probability,
        )
        self.model = RQDino(config)
        if ibot_weight <= 0:
            # Without iBOT no patch is masked, so the mask token would get no gradient.
            self.model.student["backbone"].embeddings.mask_token.requires_grad_(False)
        self.levels, self.codebook_size = rq_levels, rq_codebook_size
        # Code counts of this epoch's global crops per level, [L, K]; a plain attribute, not a
        # buffer, since DDP would overwrite buffers with rank 0's at every forward.
        self.code_counts: Tensor | None = None
        self._step = 0
        self._refitted_at: int | None = None
        self._peak_lr: float | None = None

    # -- schedules -------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch (at least 1)."""
        trainer = self.trainer
        batches = trainer.num_training_batches
        if not math.isfinite(batches) or batches <= 0:
            return max(1, int(trainer.estimated_stepping_batches))
        return max(1, math.ceil(batches / trainer.accumulate_grad_batches))

    def _epochs_to_steps(self, epochs: float) -> int:
        return int(round(epochs * self.steps_per_epoch))

    def schedule(self, step: int) -> dict[str, float]:
        """lr, weight decay, teacher momentum and temperature at optimiser step ``step``."""
        hp = self.hparams
        total = max(1, int(self.trainer.estimated_stepping_batches))
        peak = self._peak_lr if self._peak_lr is not None else hp.base_lr
        return {
            "lr": cosine_schedule(
                step, total, peak, hp.min_lr, self._epochs_to_steps(hp.warmup_epochs)
            ),
            "weight_decay": cosine_schedule(step, total, hp.weight_decay, hp.weight_decay_end),
            "teacher_momentum": teacher_momentum(step, total, hp.momentum_teacher),
            "teacher_temp": teacher_temperature(
                step,
                self._epochs_to_steps(hp.warmup_teacher_temp_epochs),
                hp.warmup_teacher_temp,
                hp.teacher_temp,
            ),
        }

    def _refit_steps(self) -> set[int]:
        """Optimiser steps at which the codebooks are refitted (``rq_refit_epochs``)."""
        epochs = self.hparams.rq_refit_epochs or []
        return {self._epochs_to_steps(e) for e in epochs if self._epochs_to_steps(e) > 0}

    def _set_peak_lr(self, batch_size: int) -> None:
        """DINOv2's square-root rule on the global batch (all devices, accumulation)."""
        size = getattr(self.trainer.datamodule, "batch_size", None) or batch_size
        global_batch = size * self.trainer.world_size * self.trainer.accumulate_grad_batches
        self._peak_lr = scaled_learning_rate(self.hparams.base_lr, global_batch)

    # -- Lightning hooks -----------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        # lr and weight decay are set every step from the schedules (training_step), times
        # each group's multipliers (layer-wise decay, patch embedding, no decay on norms).
        groups = self.model.parameter_groups(self.layerwise_decay, self.patch_embed_lr_mult)
        for group in groups:
            group["lr"] = self.hparams.base_lr * group["lr_multiplier"]
            group["weight_decay"] = self.hparams.weight_decay * group["wd_multiplier"]
        return torch.optim.AdamW(groups, lr=self.hparams.base_lr, betas=(0.9, 0.999))

    def on_train_epoch_start(self) -> None:
        self.code_counts = torch.zeros(self.levels, self.codebook_size, device=self.device)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        """batch: ``global_crops`` [G, B, 3, Sg, Sg], ``local_crops`` [Lc, B, 3, Sl, Sl]."""
        if not batch:
            return None  # every image of this batch failed to load: skip the step
        batch_size = int(batch["global_crops"].shape[1])
        if self._peak_lr is None:
            self._set_peak_lr(batch_size)
        self._step = int(self.global_step)
        sched = self.schedule(self._step)
        apply_schedule(self.optimizers().optimizer, sched["lr"], sched["weight_decay"])

        if self._step in self._refit_steps() and self._refitted_at != self._step:
            # before this step's forward (once per step, also with gradient accumulation)
            self.model.refit_codebooks()
            self._refitted_at = self._step
        out = self.model.training_losses(batch, sched["teacher_temp"])
        for name in ("loss", "dino_loss", "ibot_loss", "koleo_loss", "commit_loss"):
            self.log(
                f"train/{name}",
                out[name],
                on_step=True,
                on_epoch=True,
                prog_bar=name == "loss",
                batch_size=batch_size,
            )
        for name, value in sched.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False, batch_size=batch_size)
        codes = out["codes"]  # [G*B, L]; None while the k-means init gathers samples
        for level in range(self.levels if codes is not None else 0):
            self.code_counts[level] += torch.bincount(
                codes[:, level], minlength=self.codebook_size
            ).to(self.code_counts.dtype)
        return out["loss"]

    def on_after_backward(self) -> None:
        # DINOv2 keeps the prototypes fixed at first: they would otherwise chase a noisy start.
        if self._step < self._epochs_to_steps(self.hparams.freeze_last_layer_epochs):
            self.model.cancel_last_layer_gradients()

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip each student part (backbone, heads) separately to norm ``clip_grad`` (DINOv2)."""
        if self.hparams.clip_grad and self.hparams.clip_grad > 0:
            for part in self.model.student.values():
                torch.nn.utils.clip_grad_norm_(part.parameters(), self.hparams.clip_grad)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # The teacher follows the student after every optimiser step, never by gradient.
        self.model.update_teacher(self.schedule(self._step)["teacher_momentum"])

    def on_train_end(self) -> None:
        # A run shorter than the k-means init's sample count still exports codes.
        if not self.model.finish_codebooks():
            raise MscgError(
                "dino_rq: training ended before the codebooks could be initialised (fewer clean "
                f"global crops than model.init_args.rq_codebook_size = {self.codebook_size}); "
                "train longer or lower model.init_args.rq_init_samples."
            )

    def on_train_epoch_end(self) -> None:
        if self.code_counts is None:
            return
        counts = self.trainer.strategy.reduce(self.code_counts.clone(), reduce_op="sum")
        for level, row in enumerate(counts):
            stats = usage_and_perplexity(row)
            self.log(f"codes/usage_level{level + 1}", stats["usage"])
            self.log(f"codes/perplexity_level{level + 1}", stats["perplexity"])


# DINOv2's values for runs from pretrained weights (ssl_default_config: layerwise_decay 0.9,
# patch_embed_lr_mult 0.2; student drop-path 0.1 for ViT-S).
PRETRAINED_DEFAULTS = {"layerwise_decay": 0.9, "patch_embed_lr_mult": 0.2, "drop_path_rate": 0.1}


def pretrained_defaults(
    pretrained: bool,
    layerwise_decay: float | None,
    patch_embed_lr_mult: float | None,
    drop_path_rate: float | None,
) -> tuple[float, float, float | None]:
    """Resolve ``None`` switches: DINOv2's values from pretrained weights, else off.

    Returns (layerwise_decay, patch_embed_lr_mult, drop_path_rate); a ``None`` drop-path rate
    leaves the backbone config's own.
    """
    default = PRETRAINED_DEFAULTS if pretrained else {}
    return (
        layerwise_decay if layerwise_decay is not None else default.get("layerwise_decay", 1.0),
        patch_embed_lr_mult
        if patch_embed_lr_mult is not None
        else default.get("patch_embed_lr_mult", 1.0),
        drop_path_rate if drop_path_rate is not None else default.get("drop_path_rate"),
    )


def apply_schedule(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Set every group's lr and weight decay: the scheduled values times its multipliers."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_multiplier", 1.0)
        group["weight_decay"] = weight_decay * group.get("wd_multiplier", 1.0)


def usage_and_perplexity(counts: Tensor) -> dict[str, float]:
    """Code usage (% of the K codes used) and perplexity (exp entropy) of counts ``[K]``."""
    total = float(counts.sum())
    if total <= 0:
        return {"usage": 0.0, "perplexity": 0.0}
    p = counts[counts > 0].double() / total
    return {
        "usage": 100.0 * float((counts > 0).sum()) / counts.numel(),
        "perplexity": float(torch.exp(-(p * p.log()).sum())),
    }
