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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn
from transformers import Dinov2Config, Dinov2Model

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.dino_rq.crops import EvalTransform
from mscg_lightning.stages.dino_rq.heads import DINOHead
from mscg_lightning.stages.dino_rq.losses import Centering, DINOLoss, IBOTPatchLoss, koleo_loss
from mscg_lightning.stages.dino_rq.masking import IBOTMaskSampler
from mscg_lightning.stages.rq.quantizer import ResidualQuantizer

# ViT-S/14 as trained by DINOv2 (layer scale 1e-5 as in its training recipe); image_size only
# sets the stored position-embedding grid, other sizes are interpolated.
VITS14_CONFIG: dict[str, Any] = {
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "patch_size": 14,
    "image_size": 224,
    "mlp_ratio": 4,
    "layerscale_value": 1e-5,
    "drop_path_rate": 0.0,
}


def build_backbone(
    name_or_path: str | None = None,
    config: dict[str, Any] | None = None,
    local_files_only: bool = False,
) -> Dinov2Model:
    """A `transformers.Dinov2Model`: pretrained from an HF id / local dir, or randomly initialised.

    Args:
        name_or_path: HF model id (e.g. "facebook/dinov2-small") or a local directory; None
            builds a random ViT-S/14.
        config: Dinov2Config overrides (e.g. a tiny test model, or `drop_path_rate`).
        local_files_only: never touch the network when loading.
    """
    overrides = dict(config or {})
    if name_or_path is None:
        return Dinov2Model(Dinov2Config(**{**VITS14_CONFIG, **overrides}))
    try:
        return Dinov2Model.from_pretrained(
            name_or_path, local_files_only=local_files_only, **overrides
        )
    except (OSError, ValueError) as err:
        raise MscgError(f"Could not load the DINOv2 backbone {name_or_path!r}: {err}") from err


@dataclass
class RQDinoConfig:
    """Hyper-parameters of RQ-DINO (DINOv2 defaults; paper: 3 x 256 codes, commitment 0.01)."""

    backbone: str | None = None  # HF id or local dir; None = random ViT-S/14
    backbone_config: dict[str, Any] = field(default_factory=dict)  # Dinov2Config overrides
    local_files_only: bool = False
    n_prototypes: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    # DINOv2 unties the iBOT head from the DINO head (its paper, Sec. 4: tied heads underfit
    # at the patch level); set False to share the DINO head.
    ibot_separate_head: bool = True
    ibot_n_prototypes: int | None = None  # None: same as n_prototypes
    rq_levels: int = 3
    rq_codebook_size: int = 256
    rq_decay: float = 0.99
    rq_kmeans_init: bool = True
    # EMA count (assignments per step) below which a code is restarted. A step has only about
    # batch * 6 crops for 256 codes, so the quantizer's default of 1.0 would restart most codes.
    rq_dead_code_threshold: float = 0.1
    quantize_local_crops: bool = True  # Eq. 4 quantizes every student view
    # Recent student CLS embeddings of global crops kept for `refit_codebooks` (k-means).
    rq_refit_samples: int = 4096
    student_temp: float = 0.1
    center_momentum: float = 0.9
    centering: Centering = "centering"
    sinkhorn_iterations: int = 3
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    commit_weight: float = 0.01
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    mask_probability: float = 0.5


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
        if self.training:
            self._remember(s_cls.detach())
        cls_views = [s_cls]
        if local_images is not None:
            cls_views.append(self.student["backbone"](pixel_values=local_images).pooler_output)
        n_quantized = sum(v.shape[0] for v in (cls_views if cfg.quantize_local_crops else [s_cls]))
        all_cls = torch.cat(cls_views)  # [(G+Lc)*B, D]
        q = self.quantizer(all_cls[:n_quantized])
        # Eq. 4: the student head sees the straight-through quantized embedding.
        head_in = torch.cat([q.quantized, all_cls[n_quantized:]])
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
            + cfg.commit_weight * q.commit_loss
        )
        return {
            "loss": loss,
            "dino_loss": dino.detach(),
            "ibot_loss": ibot.detach(),
            "koleo_loss": koleo.detach(),
            "commit_loss": q.commit_loss.detach(),
            "codes": q.codes[:n_g].detach(),
        }

    @torch.no_grad()
    def _remember(self, cls: Tensor) -> None:
        """Keep the last `rq_refit_samples` global-crop CLS embeddings `[N, D]` (float32)."""
        keep = self.config.rq_refit_samples
        if keep <= 0:
            return
        cls = cls.float()
        recent = cls if self._recent_cls is None else torch.cat([self._recent_cls, cls])
        self._recent_cls = recent[-keep:]

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


def backbone_lr_multiplier(
    name: str, num_layers: int, layerwise_decay: float, patch_embed_lr_mult: float
) -> float:
    """DINOv2's learning-rate multiplier of a `Dinov2Model` parameter `name`.

    Layer ids: embeddings 0, ``encoder.layer.i`` i + 1, anything after the blocks (the final
    ``layernorm``) ``num_layers + 1``; the multiplier is ``layerwise_decay ** (num_layers + 1 -
    id)``, times ``patch_embed_lr_mult`` for the patch projection.
    """
    if name.startswith("embeddings."):
        layer_id = 0
    elif name.startswith("encoder.layer."):
        layer_id = int(name.split(".")[2]) + 1
    else:
        layer_id = num_layers + 1
    mult = layerwise_decay ** (num_layers + 1 - layer_id)
    if name.startswith("embeddings.patch_embeddings."):
        mult *= patch_embed_lr_mult
    return mult


@torch.no_grad()
def post_hoc_embeddings(
    backbone: Dinov2Model,
    images: Sequence[Image.Image] | Tensor,
    image_size: int = 224,
    batch_size: int = 64,
) -> Tensor:
    """Frozen-backbone CLS embeddings for the post-hoc RQ baseline (paper Table 3c, "DINO").

    Args:
        backbone: a Dinov2Model (e.g. `build_backbone("facebook/dinov2-small")`).
        images: PIL images (eval transform applied: resize + centre crop to `image_size`) or an
            already preprocessed tensor `[N, 3, S, S]`.
        image_size: side of the centre crop.
        batch_size: images per forward pass.

    Returns:
        `[N, D]` float32 CPU tensor.
    """
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    transform = EvalTransform(image_size)
    out = []
    try:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            pixels = (
                chunk if isinstance(chunk, Tensor) else torch.stack([transform(im) for im in chunk])
            )
            cls = backbone(pixel_values=pixels.to(device)).pooler_output
            out.append(cls.float().cpu())
    finally:
        backbone.train(was_training)
    if not out:
        return torch.zeros(0, int(backbone.config.hidden_size))
    return torch.cat(out)
