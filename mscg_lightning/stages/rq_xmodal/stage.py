"""Stage kind ``rq_xmodal``: two embedding tables (text, image) -> two codes parts.

Inputs. The stage reads two embedding sources, by role:

* ``ctx.inputs["text"]`` / ``ctx.inputs["image"]``: paths of embeddings artifacts (the stage
  graph of named instances passes its inputs by role like this); otherwise
* ``section.inputs.text`` / ``section.inputs.image``: source specs as the ``rq`` stages'
  ``input`` (an artifact name found in ``ctx.inputs``, or ``prepare:emb_<name>``).

The tokenizer trains on the items that have both modalities (the contrastive terms pair them);
every item of a table is then encoded by its modality's tower, so an item with one modality gets
codes in that part only.

Artifact layout (``<run_dir>/<instance>/``)::

    manifest.json            extra: parts {text, image: {levels, codebook_size, collision_size,
                             collision_rate_before, collision_rate_after}}, paired_items, ...
    text/codes.parquet       standard codes table (item_idx, codes[L+1], last = collision level)
    text/manifest.json       a codes manifest: extra modality, levels, codebook_size, collision_size
    image/codes.parquet      same for the image part
    image/manifest.json
    pseudo_labels.parquet    item_idx, text_label, image_label (int32; paired items only)
    codebooks.safetensors    the whole tokenizer (CrossModalRQModule.load_model)
    diagnostics.json         per part: collision rates before / after, code diagnostics

Each part is a finished codes artifact: ``artifacts.read_codes(<dir>/text)`` reads it.
"""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from jsonargparse import Namespace

from mscg_lightning.artifacts import (
    EmbeddingTable,
    Manifest,
    read_embeddings,
    read_manifest,
    write_codes,
    write_json,
)
from mscg_lightning.errors import MscgError
from mscg_lightning.pipeline import StageContext
from mscg_lightning.stages.rq_xmodal.model import MODALITIES, pseudo_labels
from mscg_lightning.stages.rq_xmodal.module import CrossModalRQModule, PairedEmbeddingsDataModule


def load_modality(ctx: StageContext, role: str) -> EmbeddingTable:
    """The embeddings of one role ("text" / "image"), see the module docstring."""
    num_items = None
    if "prepare" in ctx.inputs:
        num_items = int(read_manifest(ctx.inputs["prepare"], stage="prepare").extra["num_items"])
    if role in ctx.inputs:
        return read_embeddings(ctx.inputs[role], num_items=num_items)
    specs = ctx.section.get("inputs") if hasattr(ctx.section, "get") else None
    spec = (specs or {}).get(role) if specs is not None else None
    if not spec:
        raise MscgError(f"stage '{ctx.name}' has no '{role}' input: set inputs.{role}.")
    from mscg_lightning.stages.rq.stage import load_embeddings

    return load_embeddings(ctx, str(spec))


def paired(tables: dict[str, EmbeddingTable]) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """Items present in both tables (ascending item_idx) and their rows of each table."""
    ids = {m: tables[m].item_idx.numpy() for m in MODALITIES}
    common = np.intersect1d(ids["text"], ids["image"])
    rows = {}
    for m in MODALITIES:
        order = np.argsort(ids[m])
        pos = order[np.searchsorted(ids[m], common, sorter=order)]
        rows[m] = tables[m].embeddings[torch.from_numpy(pos)]
    return common, rows


def _write_part(ctx: StageContext, modality: str, item_idx, codes, extra: dict) -> None:
    part = ctx.out_dir / modality
    part.mkdir()
    write_codes(part, item_idx, codes)
    Manifest(
        stage=f"{ctx.name}:{modality}",
        config_hash=ctx.config_hash,
        inputs=dict(ctx.input_hashes),
        rows={"items": int(len(codes))},
        extra={"modality": modality, **extra},
    ).write(part)


def run(ctx: StageContext) -> Manifest | None:
    section = ctx.section
    tables = {m: load_modality(ctx, m) for m in MODALITIES}
    common, rows = paired(tables)

    from mscg_lightning.training import build_stage

    bare = copy.copy(ctx)
    bare.section = copy.deepcopy(section)
    bare.section.data = None
    if "inputs" in bare.section:
        del bare.section["inputs"]
    inject = {f"model.init_args.{m}_dim": int(tables[m].embeddings.shape[1]) for m in MODALITIES}
    stage = build_stage(bare, inject=inject)
    model: CrossModalRQModule = stage.model
    if len(common) < max(model.codebook_size, model.pseudo_label_clusters):
        raise MscgError(
            f"stage '{ctx.name}': {len(common)} items have both text and image embeddings, fewer "
            f"than codebook_size={model.codebook_size} or pseudo_label_clusters="
            f"{model.pseudo_label_clusters}; lower them."
        )
    # build_stage seeded every RNG with ctx.seed: the k-means draws are reproducible.
    labels = {
        m: pseudo_labels(rows[m], model.pseudo_label_clusters, model.pseudo_label_iters)
        for m in MODALITIES
    }
    data = section.get("data")
    init = data.get("init_args") if data else None
    data_args = init.as_dict() if isinstance(init, Namespace) else dict(init or {})
    datamodule = PairedEmbeddingsDataModule(
        rows["text"], rows["image"], labels["text"], labels["image"],
        **{"seed": ctx.seed, **data_args},
    )  # fmt: skip
    stage.trainer.fit(model, datamodule=datamodule, ckpt_path=stage.resume_from)

    results = {
        m: model.export_codes(m, tables[m].embeddings, tables[m].item_idx) for m in MODALITIES
    }
    if ctx.out_dir is None:
        return None
    parts, diagnostics = {}, {"paired_items": int(len(common))}
    for m in MODALITIES:
        codes, diag = results[m]
        part_extra = {
            "levels": int(model.levels),
            "codebook_size": int(model.codebook_size),
            "collision_size": int(diag["collision_size"]),
            "collision_rate_before": diag["collision_rate_before"],
            "collision_rate_after": diag["collision_rate_after"],
        }
        _write_part(ctx, m, tables[m].item_idx.numpy(), codes.numpy(), part_extra)
        parts[m] = part_extra
        diagnostics[m] = diag
    pq.write_table(
        pa.table(
            {
                "item_idx": pa.array(common, type=pa.int32()),
                "text_label": pa.array(labels["text"].numpy(), type=pa.int32()),
                "image_label": pa.array(labels["image"].numpy(), type=pa.int32()),
            }
        ),
        ctx.out_dir / "pseudo_labels.parquet",
    )
    model.save_codebooks(ctx.out_dir / "codebooks.safetensors")
    write_json(ctx.out_dir / "diagnostics.json", diagnostics)
    return ctx.manifest(
        rows={f"items_{m}": int(len(results[m][0])) for m in MODALITIES},
        extra={
            "kind": "rq_xmodal",
            "parts": parts,
            "paired_items": int(len(common)),
            "pseudo_label_clusters": int(model.pseudo_label_clusters),
        },
    )
