"""The RQ-DINO backbone: a `transformers.Dinov2Model`, its DINOv2 learning-rate multipliers,
and frozen-backbone embeddings for the post-hoc RQ baseline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from transformers import Dinov2Config, Dinov2Model

from mscg_lightning.backbones import TimmViT, create_timm, is_timm, timm_lr_layer
from mscg_lightning.errors import MscgError
from mscg_lightning.stages.dino_rq.crops import EvalTransform

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
        name_or_path: HF model id (e.g. "facebook/dinov2-small") or a local directory, or a
            timm ViT as "timm:<name>" (backbones.py); None builds a random ViT-S/14.
        config: Dinov2Config overrides (e.g. a tiny test model, or `drop_path_rate`).
        local_files_only: never touch the network when loading.
    """
    overrides = dict(config or {})
    if is_timm(name_or_path):  # timm:<model> behind the Dinov2Model interface (backbones.py)
        args = {"dynamic_img_size": True, **overrides}
        return TimmViT(create_timm(str(name_or_path), args), str(name_or_path), args)  # type: ignore[return-value]
    if name_or_path is None:
        return Dinov2Model(Dinov2Config(**{**VITS14_CONFIG, **overrides}))
    try:
        return Dinov2Model.from_pretrained(
            name_or_path, local_files_only=local_files_only, **overrides
        )
    except (OSError, ValueError) as err:
        raise MscgError(f"Could not load the DINOv2 backbone {name_or_path!r}: {err}") from err


def backbone_lr_multiplier(
    name: str, num_layers: int, layerwise_decay: float, patch_embed_lr_mult: float
) -> float:
    """DINOv2's learning-rate multiplier of a `Dinov2Model` parameter `name`.

    Layer ids: embeddings 0, ``encoder.layer.i`` i + 1, anything after the blocks (the final
    ``layernorm``) ``num_layers + 1``; the multiplier is ``layerwise_decay ** (num_layers + 1 -
    id)``, times ``patch_embed_lr_mult`` for the patch projection.
    """
    timm_layer = timm_lr_layer(name, num_layers)  # a TimmViT parameter (backbones.py)
    if timm_layer is not None:
        layer_id, patch = timm_layer
        return layerwise_decay ** (num_layers + 1 - layer_id) * (
            patch_embed_lr_mult if patch else 1
        )
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
