"""RQ-DINO meta-architecture (paper Section 3.2, Eq. 4-5) as a pure nn.Module.

Student = Dinov2Model backbone + DINO head (+ separate iBOT head); teacher = EMA copy of the
student; only the student's CLS embedding goes through the residual quantizer (straight-through),
and the DINO loss compares the student head on the *quantized* embedding with the teacher head on
the teacher's *unquantized* embedding. The Lightning glue only has to call
`training_losses(batch, teacher_temp)`, `loss.backward()`, the optimiser and
`update_teacher(momentum)` with the schedules of `schedules.py`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mscg_lightning.stages.dino_rq.backbone import (  # noqa: F401 (re-exported)
    VITS14_CONFIG,
    backbone_lr_multiplier,
    build_backbone,
    post_hoc_embeddings,
)
from mscg_lightning.stages.dino_rq.heads import DINOHead
from mscg_lightning.stages.dino_rq.losses import DINOLoss, IBOTPatchLoss, koleo_loss
from mscg_lightning.stages.dino_rq.masking import IBOTMaskSampler
from mscg_lightning.stages.dino_rq.model_config import RQDinoConfig
from mscg_lightning.stages.rq.quantizer import QuantizerOutput, ResidualQuantizer


class RQDino(nn.Module):
    """Student/teacher self-distillation with a residual-quantized student CLS embedding.

    Batch layout (see `crops.collate_multicrop`):
        global_crops: `[G, B, 3, Sg, Sg]` (G >= 1; 2 by default)
        local_crops: `[Lc, B, 3, Sl, Sl]` (optional)
        masks: `[G, B, P]` bool iBOT masks, `P = (Sg / patch)^2` (optional: drawn here if absent)
    """

    def __init__(self, config: RQDinoConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or RQDinoConfig()
        backbone = build_backbone(cfg.backbone, cfg.backbone_config, cfg.local_files_only)
        self.embed_dim = int(backbone.config.hidden_size)
        patch = backbone.config.patch_size
        self.patch_size = int(patch if isinstance(patch, int) else patch[0])

        def head(out_dim: int) -> DINOHead:
            return DINOHead(
                self.embed_dim,
                out_dim,
                cfg.head_hidden_dim,
                cfg.head_bottleneck_dim,
                cfg.head_layers,
            )

        ibot_dim = cfg.ibot_n_prototypes or cfg.n_prototypes
        student: dict[str, nn.Module] = {"backbone": backbone, "dino_head": head(cfg.n_prototypes)}
        if cfg.ibot_separate_head:
            student["ibot_head"] = head(ibot_dim)
        else:
            ibot_dim = cfg.n_prototypes
        self.student = nn.ModuleDict(student)
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)  # moved only by update_teacher (EMA)
        self.quantizer = ResidualQuantizer(
            self.embed_dim,
            levels=cfg.rq_levels,
            codebook_size=cfg.rq_codebook_size,
            decay=cfg.rq_decay,
            kmeans_init=cfg.rq_kmeans_init,
            dead_code_threshold=cfg.rq_dead_code_threshold,
        )
        self.dino_loss = DINOLoss(cfg.n_prototypes, cfg.student_temp, cfg.center_momentum)
        self.ibot_loss = IBOTPatchLoss(ibot_dim, cfg.student_temp, cfg.center_momentum)
        self._mask_samplers: dict[int, IBOTMaskSampler] = {}
        # A plain attribute, not a buffer: never saved, never broadcast by DDP.
        self._recent_cls: Tensor | None = None

    def train(self, mode: bool = True) -> RQDino:
        """Set train/eval mode; the teacher always stays in eval mode (no drop-path)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def _ibot_head(self, net: nn.ModuleDict) -> nn.Module:
        return net["ibot_head"] if "ibot_head" in net else net["dino_head"]

    def _masks(self, n_images: int, crop_size: int, device: torch.device) -> Tensor:
        grid = crop_size // self.patch_size
        if grid not in self._mask_samplers:
            cfg = self.config
            self._mask_samplers[grid] = IBOTMaskSampler(grid, cfg.mask_ratio, cfg.mask_probability)
        return self._mask_samplers[grid](n_images).to(device)

    def training_losses(
        self, batch: dict[str, Tensor], teacher_temp: float = 0.07
    ) -> dict[str, Tensor]:
        """All loss terms of one step (paper Eq. 5).

        Args:
            batch: see the class docstring.
            teacher_temp: teacher softmax temperature (`schedules.teacher_temperature`).

        Returns:
            Scalars `loss` (weighted total, to backpropagate), `dino_loss`, `ibot_loss`,
            `koleo_loss`, `commit_loss` (unweighted), and `codes` `[G * B, L]` int64: the
            quantizer's codes of the global crops, for codebook diagnostics.
        """
        cfg = self.config
        global_crops = batch["global_crops"]
        n_global, batch_size = global_crops.shape[:2]
        images = global_crops.flatten(0, 1)  # [G*B, 3, S, S], crop-major
        local = batch.get("local_crops")
        local_images = local.flatten(0, 1) if local is not None and local.shape[0] > 0 else None
        n_local = 0 if local_images is None else local.shape[0]

        masks = None  # [G*B, P]
        if cfg.ibot_weight > 0:
            if "masks" in batch:
                masks = batch["masks"].flatten(0, 1).to(images.device, torch.bool)
            else:
                masks = self._masks(images.shape[0], images.shape[-1], images.device)

        # Teacher: unmasked, unquantized global crops.
        with torch.no_grad():
            t_out = self.teacher["backbone"](pixel_values=images)
            t_logits = self.teacher["dino_head"](t_out.pooler_output)  # [G*B, K]
            t_probs = self.dino_loss.teacher_probs(
                t_logits, teacher_temp, cfg.centering, cfg.sinkhorn_iterations, self.training
            ).view(n_global, batch_size, -1)
            if masks is not None:
                t_patches = t_out.last_hidden_state[:, 1:][masks]  # [M, D]
                t_patch_probs = self.ibot_loss.teacher_probs(
                    self._ibot_head(self.teacher)(t_patches),
                    teacher_temp,
                    cfg.centering,
                    cfg.sinkhorn_iterations,
                    self.training,
                )

        # Student: masked global crops and plain local crops.
        s_out = self.student["backbone"](pixel_values=images, bool_masked_pos=masks)
        s_cls = s_out.pooler_output  # [G*B, D], unquantized
        stats = self._statistics_rows(s_cls.detach(), masks)  # [N', D] or None (all views)
        if self.training:
            self._remember(s_cls.detach() if stats is None else stats)
        cls_views = [s_cls]
        if local_images is not None:
            cls_views.append(self.student["backbone"](pixel_values=local_images).pooler_output)
        n_quantized = sum(v.shape[0] for v in (cls_views if cfg.quantize_local_crops else [s_cls]))
        all_cls = torch.cat(cls_views)  # [(G+Lc)*B, D]
        q = self._quantize(all_cls[:n_quantized], stats)
        if q is None:  # gathering samples for the k-means init: no quantization yet
            head_in, commit, codes = all_cls, all_cls.new_zeros(()), None
        else:
            # Eq. 4: the student head sees the straight-through quantized embedding.
            head_in = torch.cat([q.quantized, all_cls[n_quantized:]])
            commit, codes = q.commit_loss, q.codes[: n_global * batch_size].detach()
        s_logits = self.student["dino_head"](head_in)  # [(G+Lc)*B, K]
        n_g = n_global * batch_size
        s_global = s_logits[:n_g].view(n_global, batch_size, -1)
        s_local = s_logits[n_g:].view(n_local, batch_size, -1) if n_local else None
        dino = self.dino_loss(s_global, s_local, t_probs)

        zero = dino.new_zeros(())
        ibot = zero
        if masks is not None:
            s_patches = s_out.last_hidden_state[:, 1:][masks]  # [M, D]
            ibot = self.ibot_loss(self._ibot_head(self.student)(s_patches), t_patch_probs, masks)

        koleo = zero
        if cfg.koleo_weight > 0:
            # KoLeo spreads the *unquantized* embedding: quantized images sharing a code are
            # exact duplicates, whose zero distance would make -log(distance) explode and push
            # the codes apart instead of the features. One term per global crop (DINOv2).
            koleo = sum(koleo_loss(v) for v in s_cls.view(n_global, batch_size, -1))

        loss = (
            cfg.dino_weight * dino
            + cfg.ibot_weight * ibot
            + cfg.koleo_weight * koleo
            + cfg.commit_weight * commit
        )
        return {
            "loss": loss,
            "dino_loss": dino.detach(),
            "ibot_loss": ibot.detach(),
            "koleo_loss": koleo.detach(),
            "commit_loss": commit.detach(),
            "codes": codes,
        }

    @property
    def init_samples(self) -> int:
        """CLS embeddings (over all ranks) the k-means init waits for; 0: the first batch."""
        n = self.config.rq_init_samples
        return 10 * self.config.rq_codebook_size if n is None else n

    def _statistics_rows(self, s_cls: Tensor, masks: Tensor | None) -> Tensor | None:
        """The rows `[N', D]` of `s_cls` `[G*B, D]` the codebook statistics see; None: all
        quantized views (`rq_statistics: all_views`).

        clean_global: the global crops without an iBOT-masked patch. DINOv2 masks about half
        of the images; a rank whose crops are all masked uses all of them for that step.
        """
        if self.config.rq_statistics == "all_views":
            return None
        if masks is None:
            return s_cls
        clean = ~masks.any(1)
        return s_cls[clean] if bool(clean.any()) else s_cls

    def _quantize(self, x: Tensor, stats: Tensor | None) -> QuantizerOutput | None:
        """Quantize x `[N, D]`; in training, update the codebooks from `stats` (None: from x).

        Returns None while the k-means init is still gathering samples (`init_samples`).
        """
        quantizer = self.quantizer
        if not self.config.quantize:
            return None
        if self.training and not bool(quantizer.initialized) and self.init_samples > 0:
            if not self._init_from_samples():
                return None
        if not self.training or stats is None:
            return quantizer(x)  # its own EMA step on x in training
        with torch.no_grad():
            quantizer(stats)  # EMA step (and dead-code restarts) on the clean rows only
        quantizer.train(False)
        try:
            return quantizer(x)  # quantized + commitment loss, no second update
        finally:
            quantizer.train(True)

    @torch.no_grad()
    def _init_from_samples(self) -> bool:
        """k-means init once `init_samples` embeddings are kept over all ranks (every rank
        calls this at the same steps, so the count's all-reduce and k-means line up)."""
        kept = self._recent_cls
        device = self.quantizer.codebooks.device
        count = torch.tensor(0 if kept is None else kept.shape[0], device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
        if int(count) < self.init_samples:
            return False
        self.quantizer.init_codebooks(kept)
        return True

    @torch.no_grad()
    def _remember(self, cls: Tensor) -> None:
        """Keep the last `rq_refit_samples` CLS embeddings `[N, D]` (float32) of the rows the
        statistics see; until the k-means init, at least `init_samples`."""
        keep = self.config.rq_refit_samples if self.config.quantize else 0
        if self.config.quantize and not bool(self.quantizer.initialized):
            keep = max(keep, self.init_samples)
        if keep <= 0:
            self._recent_cls = None
            return
        cls = cls.float()
        recent = cls if self._recent_cls is None else torch.cat([self._recent_cls, cls])
        self._recent_cls = recent[-keep:]

    @torch.no_grad()
    def finish_codebooks(self) -> bool:
        """After training: a k-means init on whatever was gathered if the run ended before
        `init_samples` were kept (at least one per code needed). Returns True if initialised."""
        if bool(self.quantizer.initialized) or not self.config.quantize:
            return True
        kept = self._recent_cls
        if kept is None or kept.shape[0] < self.quantizer.codebook_size:
            return False
        self.quantizer.init_codebooks(kept)
        return True

    @torch.no_grad()
    def refit_codebooks(self) -> bool:
        """Re-initialise the codebooks by residual k-means on the recent student embeddings.

        The first k-means init sees one batch of a freshly initialised backbone, whose CLS
        embeddings then move a long way; codes that lose their points keep a decaying EMA count
        for hundreds of steps before a dead-code restart, so level-1 usage collapses onto a few
        codes. A refit after the backbone has started to learn restores the usage; EMA updates
        continue from the new codebooks. Under DDP the k-means statistics are summed over ranks
        (`ResidualQuantizer.init_codebooks`), so every rank gets the same codebooks.

        Returns:
            True if the codebooks were refitted (enough samples were kept), else False.
        """
        recent = self._recent_cls
        if recent is None or recent.shape[0] < self.quantizer.codebook_size:
            return False
        self.quantizer.init_codebooks(recent)
        return True

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """Teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter."""
        student = list(self.student.parameters())
        teacher = list(self.teacher.parameters())
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, student, alpha=1.0 - momentum)

    def cancel_last_layer_gradients(self) -> None:
        """Drop the prototype gradients (DINOv2 freezes them during the first epoch)."""
        for name in ("dino_head", "ibot_head"):
            if name in self.student:
                self.student[name].weight_v.grad = None
                self.student[name].weight_g.grad = None

    def parameter_groups(
        self, layerwise_decay: float = 1.0, patch_embed_lr_mult: float = 1.0
    ) -> list[dict[str, Any]]:
        """Student parameters grouped for AdamW by learning-rate and weight-decay multiplier.

        As DINOv2 (`dinov2/utils/param_groups.py`): backbone block ``i`` (0-based) of ``n`` gets
        ``layerwise_decay ** (n - i)``, the embeddings (patch projection, tokens, positions)
        ``layerwise_decay ** (n + 1)``, the patch projection also ``patch_embed_lr_mult``; the
        final norm and the heads 1. Weight decay on matrices only: biases, norms, layer scales,
        tokens, positions and prototype norms get ``wd_multiplier`` 0. The quantizer has no
        parameters (EMA buffers).

        Returns:
            Groups ``{"params", "lr_multiplier", "wd_multiplier"}``, one per distinct pair,
            first the group of multipliers (1, 1) (possibly empty).
        """
        n_layers = int(self.student["backbone"].config.num_hidden_layers)
        groups: dict[tuple[float, float], list[nn.Parameter]] = {(1.0, 1.0): []}
        for part, module in self.student.items():
            for name, param in module.named_parameters():
                if not param.requires_grad:
                    continue
                skip = param.ndim <= 1 or name.endswith(".bias") or "weight_g" in name
                skip = skip or "token" in name or "position_embeddings" in name
                skip = skip or "pos_embed" in name  # timm's positions (backbones.TimmViT)
                lr_mult = 1.0
                if part == "backbone":
                    lr_mult = backbone_lr_multiplier(
                        name, n_layers, layerwise_decay, patch_embed_lr_mult
                    )
                groups.setdefault((lr_mult, 0.0 if skip else 1.0), []).append(param)
        # weight_decay 0 set here too, so that a plain AdamW over these groups is right as well
        return [
            {"params": params, "lr_multiplier": lr, "wd_multiplier": wd}
            | ({} if wd else {"weight_decay": 0.0})
            for (lr, wd), params in groups.items()
        ]

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """Student CLS embeddings `[N, D]` of preprocessed images `[N, 3, S, S]`.

        The student (not the teacher) is used because the quantizer's codebooks were fitted to
        the student's embeddings.
        """
        return self.student["backbone"](pixel_values=images).pooler_output

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Codes `[N, L]` int64 of preprocessed images `[N, 3, S, S]` (no codebook update)."""
        return self.quantizer.encode(self.embed(images))
