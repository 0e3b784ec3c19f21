"""`timm` image models beside the `transformers` ones: names ``timm:<model>`` (see README).

Accepted forms of a backbone name (``image_embed.model``, ``dino_rq.model.init_args.backbone``):

- ``timm:vit_small_patch14_dinov2.lvd142m``: a timm model with its pretrained weights from the
  hub (HF_HUB_OFFLINE=1 then needs them in the hub cache);
- ``timm:local-dir:/path/to/folder``: a folder holding ``config.json`` (with ``architecture``)
  and ``model.safetensors``, as timm's ``push_to_hub`` / our ``save_pretrained`` write it;
- ``timm:<model>@/path/to/weights.safetensors``: a timm architecture with a local weights file;
- ``timm:<model>`` with ``backbone_config: {pretrained: false, ...}``: random weights; the other
  keys of ``backbone_config`` go to ``timm.create_model`` (``img_size``, ``drop_path_rate``...).

`TimmViT` gives a timm VisionTransformer the interface RQ-DINO uses of a `Dinov2Model`
(``config.hidden_size/patch_size/num_hidden_layers``, ``embeddings.mask_token``, outputs
``last_hidden_state`` = [CLS, patches] and ``pooler_output`` = normed CLS). `TimmImageEncoder`
is the frozen encoder of ``image_embed``. timm is the optional extra ``timm``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from mscg_lightning.errors import MscgError

PREFIX = "timm:"


def is_timm(name: str | None) -> bool:
    """Whether a backbone name selects a timm model."""
    return bool(name) and str(name).startswith(PREFIX)


def import_timm() -> Any:
    try:
        import timm
    except ImportError as err:
        raise MscgError(
            f"timm model names need the `timm` package ({err}): pip install "
            "'mscg_lightning[timm]' with the torchvision release that matches your torch "
            "(README, 'timm backbones')."
        ) from err
    return timm


def create_timm(name: str, overrides: dict[str, Any] | None = None) -> nn.Module:
    """The timm model of a ``timm:...`` name without classifier (``num_classes=0``)."""
    timm = import_timm()
    spec = name[len(PREFIX) :]
    kwargs = dict(overrides or {})
    pretrained = bool(kwargs.pop("pretrained", True))
    if "@" in spec and not spec.startswith("local-dir:"):
        spec, weights = spec.split("@", 1)
        if not Path(weights).is_file():
            raise MscgError(f"the timm weights file {weights} (backbone {name!r}) does not exist.")
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
    if spec.startswith("local-dir:") and not Path(spec[len("local-dir:") :]).is_dir():
        raise MscgError(f"the timm model folder {spec[len('local-dir:') :]} does not exist.")
    try:
        return timm.create_model(spec, pretrained=pretrained, num_classes=0, **kwargs)
    except (RuntimeError, OSError, ValueError, KeyError) as err:
        raise MscgError(f"could not build the timm model {name!r}: {err}") from err


class TimmViT(nn.Module):
    """A timm VisionTransformer behind the `Dinov2Model` interface RQ-DINO uses.

    Masked patches (iBOT) are replaced by a learned ``embeddings.mask_token`` before the
    position embeddings are added, as in DINOv2. Register tokens, where the model has them, are
    left out of ``last_hidden_state``.
    """

    def __init__(
        self, vit: nn.Module, name: str = "", model_args: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.model_args = {k: v for k, v in (model_args or {}).items() if k != "pretrained"}
        for attr in ("patch_embed", "blocks", "norm", "_pos_embed", "num_prefix_tokens"):
            if not hasattr(vit, attr):
                raise MscgError(f"the timm model {name!r} is not a VisionTransformer (no {attr}).")
        self.vit = vit
        self.name = name
        dim = int(vit.embed_dim)
        self.embeddings = nn.Module()
        self.embeddings.mask_token = nn.Parameter(torch.zeros(1, dim))
        patch = vit.patch_embed.patch_size
        self.config = SimpleNamespace(
            hidden_size=dim,
            patch_size=int(patch if isinstance(patch, int) else patch[0]),
            num_hidden_layers=len(vit.blocks),
        )

    def forward(
        self, pixel_values: Tensor, bool_masked_pos: Tensor | None = None
    ) -> SimpleNamespace:
        """`pixel_values` [B, 3, H, W], `bool_masked_pos` [B, P] -> last_hidden_state
        [B, 1 + P, D] (CLS, patches) and pooler_output [B, D] (normed CLS)."""
        vit = self.vit
        x = vit.patch_embed(pixel_values)  # [B, P, D] or [B, h, w, D] (dynamic image size)
        if bool_masked_pos is not None:
            mask = bool_masked_pos.reshape(x.shape[:-1]).unsqueeze(-1)
            x = torch.where(mask, self.embeddings.mask_token.to(x.dtype), x)
        x = vit._pos_embed(x)
        for name in ("patch_drop", "norm_pre"):
            layer = getattr(vit, name, None)
            x = layer(x) if layer is not None else x
        x = vit.norm(vit.blocks(x))
        prefix = int(vit.num_prefix_tokens)
        hidden = torch.cat([x[:, :1], x[:, prefix:]], dim=1)
        return SimpleNamespace(last_hidden_state=hidden, pooler_output=x[:, 0])

    def save_pretrained(self, directory: str | Path) -> None:
        """A folder loadable as ``timm:local-dir:<directory>`` (config.json + model.safetensors)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = dict(getattr(self.vit, "pretrained_cfg", None) or {})
        arch = cfg.get("architecture") or self.name.removeprefix(PREFIX).split(".")[0]
        config = {
            "architecture": arch,
            "num_classes": 0,
            "model_args": _plain(self.model_args),  # img_size, depth... as it was created
            "pretrained_cfg": _plain(cfg),
        }
        (directory / "config.json").write_text(json.dumps(config, indent=2))
        state = {k: v.detach().contiguous() for k, v in self.vit.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def timm_lr_layer(name: str, num_layers: int) -> tuple[int, bool] | None:
    """(layer id, is patch projection) of a `TimmViT` parameter, None if not a timm name.

    Layer ids as DINOv2: patch projection, CLS/register tokens and positions 0, ``blocks.i``
    i + 1, the final norm ``num_layers + 1``.
    """
    if not name.startswith("vit."):
        return None
    rest = name[len("vit.") :]
    if rest.startswith("patch_embed."):
        return 0, True
    if rest.split(".")[0] in ("cls_token", "reg_token", "pos_embed", "mask_token"):
        return 0, False
    if rest.startswith("blocks."):
        return int(rest.split(".")[1]) + 1, False
    return num_layers + 1, False


def eval_transform(cfg: dict[str, Any]) -> Any:
    """timm's eval preprocessing from a model's ``pretrained_cfg``, with PIL and torch only:
    resize the short side to ``size / crop_pct``, centre crop ``size``, scale, normalise."""
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(3, 1, 1)
    resample = Image.BICUBIC if cfg.get("interpolation", "bicubic") == "bicubic" else Image.BILINEAR
    scaled = int(round(size / crop_pct))

    def transform(image: Image.Image) -> Tensor:
        image = image.convert("RGB")
        w, h = image.size
        ratio = scaled / min(w, h)
        image = image.resize((max(1, round(w * ratio)), max(1, round(h * ratio))), resample)
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - mean) / std

    return transform


class TimmImageEncoder:
    """Frozen timm image encoder for ``image_embed``: pooled features (``num_classes=0``).

    Args:
        model: a ``timm:...`` name (module docstring).
        normalize: L2-normalise the embeddings.
        batch_size: images per forward pass.
        device: torch device for the model.
        overrides: extra ``timm.create_model`` arguments (``pretrained: false`` for tests).
    """

    def __init__(
        self,
        model: str,
        normalize: bool = False,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.model = create_timm(model, overrides).to(device).eval().requires_grad_(False)
        self.transform = eval_transform(dict(getattr(self.model, "pretrained_cfg", None) or {}))
        self.normalize, self.batch_size = normalize, batch_size
        self.device = torch.device(device)

    @property
    def dim(self) -> int:
        return int(self.model.num_features)

    @torch.inference_mode()
    def encode(self, images: list[Image.Image], progress: bool = False) -> Tensor:
        """Embeddings [N, D] float32 on CPU of PIL images (any mode; converted to RGB)."""
        out = [torch.zeros(0, self.dim)]
        for s in range(0, len(images), self.batch_size):
            pixels = torch.stack([self.transform(im) for im in images[s : s + self.batch_size]])
            emb = self.model(pixels.to(self.device))
            if self.normalize:
                emb = F.normalize(emb, dim=-1)
            out.append(emb.float().cpu())
        return torch.cat(out)
