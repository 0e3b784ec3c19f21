"""Stage kind ``rq`` (instances ``rq_text`` / ``rq_image`` / ``rq_collab``...): embeddings -> codes.

The input ``embeddings`` names them: an embeddings instance (``text_embed``, ``image_embed``,
``sasrec``) or given embeddings of the items table (``prepare:emb_image``). The codes'
modality is the embeddings' (their manifest's ``extra.modality``; ``<name>`` of ``emb_<name>``).
The section's ``data.init_args`` (batch size, shuffle) configure the in-memory
:class:`EmbeddingsDataModule`; ``model`` is an :class:`RQModule`.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pyarrow as pa
import torch

from mscg_lightning.artifacts import (
    EmbeddingTable,
    Manifest,
    read_embeddings,
    read_manifest,
    read_table,
    write_codes,
    write_json,
)
from mscg_lightning.errors import MscgError
from mscg_lightning.graph import split_source
from mscg_lightning.pipeline import StageContext, resolve_source
from mscg_lightning.stages.rq.module import EmbeddingsDataModule, RQModule

MODALITY = {"rq_text": "text", "rq_image": "image", "rq_collab": "collab"}


def modality_of(ctx: StageContext, source: str, table: EmbeddingTable) -> str:
    """The modality of the quantized embeddings (see the module docstring)."""
    if table.manifest is not None and table.manifest.extra.get("modality"):
        return str(table.manifest.extra["modality"])
    name, part = split_source(source)
    if part and part.startswith("emb_"):
        return part[4:]
    return MODALITY.get(ctx.name, ctx.name)


def given_embeddings(prepared_dir, column: str) -> EmbeddingTable:
    """Given embeddings ``column`` of the items table as an :class:`EmbeddingTable` (nulls left out)."""
    table = read_table(prepared_dir / "items")
    if column not in table.column_names:
        raise MscgError(f"{prepared_dir / 'items'} has no column '{column}'.")
    values = table.column(column).combine_chunks()
    present = values.is_valid()
    values = values.filter(present)
    item_idx = table.column("item_idx").combine_chunks().filter(present).to_numpy()
    emb = values.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    emb = emb.reshape(len(item_idx), -1)
    return EmbeddingTable(torch.from_numpy(item_idx.astype(np.int64)), torch.from_numpy(emb))


def load_embeddings(ctx: StageContext, source: str) -> EmbeddingTable:
    """The embeddings a source spec names, validated against the prepared catalogue."""
    num_items = int(read_manifest(ctx.inputs["prepare"], stage="prepare").extra["num_items"])
    resolved = resolve_source(ctx.run_dir, source)
    if resolved.column is not None:
        return given_embeddings(resolved.path, resolved.column)
    return read_embeddings(resolved.path, num_items=num_items)


def run(ctx: StageContext) -> Manifest | None:
    section = ctx.section
    source = ctx.sources["embeddings"]
    table = load_embeddings(ctx, source)
    data_args = dict(section.data.init_args) if section.get("data") else {}
    datamodule = EmbeddingsDataModule(table.embeddings, **{"seed": ctx.seed, **data_args})

    from mscg_lightning.training import build_stage

    bare = copy.copy(ctx)
    bare.section = copy.deepcopy(section)
    bare.section.data = None
    stage = build_stage(bare, inject={"model.init_args.dim": int(table.embeddings.shape[1])})
    model: RQModule = stage.model
    with warnings.catch_warnings():
        # every kind but 'rqvae' fits its codebooks by k-means in the training steps: no optimizer
        warnings.filterwarnings("ignore", message=".*configure_optimizers. returned .None.")
        stage.trainer.fit(model, datamodule=datamodule, ckpt_path=stage.resume_from)
    codes, diagnostics = model.export_codes(table.embeddings, table.item_idx)
    if ctx.out_dir is None:
        return None
    write_codes(ctx.out_dir, table.item_idx.numpy(), codes.numpy())
    model.save_codebooks(ctx.out_dir / "codebooks.safetensors")
    diagnostics["input"] = source
    write_json(ctx.out_dir / "diagnostics.json", diagnostics)
    return ctx.manifest(
        rows={"items": int(len(codes))},
        extra={
            "modality": modality_of(ctx, source, table),
            "levels": int(model.levels),
            "codebook_size": int(model.codebook_size),
            "collision_size": int(diagnostics["collision_size"]),
            "collision_rate": diagnostics["collision_rate"],
        },
    )


def codes_from_given(prepared_dir, column: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Given codes ``column`` (as given, no collision level) -> (item_idx [N], codes [N, L+1], K).

    Given codes collide (Instruments' text codes: 5,988 distinct tuples for 6,250 items), so a
    collision level is appended exactly as for our own codes.
    """
    from mscg_lightning.stages.rq.collisions import append_collision_level

    table = read_table(prepared_dir / "items", columns=["item_idx", column])
    values = table.column(column).combine_chunks()
    present = values.is_valid()
    item_idx = table.column("item_idx").combine_chunks().filter(present).to_numpy().astype(np.int64)
    values = values.filter(present)
    lengths = pa.compute.list_value_length(values).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        raise MscgError(
            f"{prepared_dir / 'items'} column '{column}' has code lists of unequal length."
        )
    codes = (
        values.flatten().to_numpy(zero_copy_only=False).astype(np.int64).reshape(len(item_idx), -1)
    )
    full = append_collision_level(codes, item_idx)
    return item_idx, full, int(codes.max()) + 1 if codes.size else 0
