"""Stage ``dino_rq``: item images -> image codes artifact (the same contract as ``rq_image``).

``mode: rq_dino`` (default) trains RQ-DINO (``RQDinoModule`` on ``ImageDataModule``) and encodes
every item image with the student backbone (eval transform, CLS) and the trained quantizer.
``mode: post_hoc`` is the paper's Table 3c "DINO" baseline: the backbone of the configured
``RQDinoModule`` (pretrained when ``backbone`` names weights) stays frozen, and its CLS
embeddings go through the ``rq`` stage's ``RQModule`` (k-means init + EMA codebooks), fitted
with this section's trainer. Like the ``rq`` stage, post_hoc runs on one device.

Artifact ``<run_dir>/dino_rq/``: ``codes.parquet`` (L codes + collision level),
``codebooks.safetensors`` (``RQModule.save_codebooks`` format, as the ``rq`` stage),
``backbone/`` (rq_dino only: the trained student backbone, ``Dinov2Model.from_pretrained``),
``diagnostics.json`` (collisions, usage, perplexity, missing images),
``missing.parquet`` (``item_idx``, ``reason``: items without a usable image), ``manifest.json``
(``extra``: modality image, levels, codebook_size, collision_size, mode, missing).
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mscg_lightning.artifacts import Manifest, read_manifest, write_codes, write_json
from mscg_lightning.errors import MscgError
from mscg_lightning.pipeline import StageContext
from mscg_lightning.stages.dino_rq.data import ImageDataModule, embed_images
from mscg_lightning.stages.dino_rq.module import RQDinoModule
from mscg_lightning.stages.rq.collisions import append_collision_level, code_diagnostics

if TYPE_CHECKING:
    from mscg_lightning.stages.rq.module import RQModule
    from mscg_lightning.training import LightningStage

log = logging.getLogger("mscg")


def _missing_table(num_items: int, kept: np.ndarray, reasons: dict[int, str]) -> pa.Table:
    absent = np.setdiff1d(np.arange(num_items), kept)
    return pa.table(
        {
            "item_idx": pa.array(absent, type=pa.int32()),
            "reason": pa.array([reasons.get(int(i), "no image") for i in absent], pa.string()),
        }
    )


def _post_hoc_codes(
    ctx: StageContext,
    stage: LightningStage,
    model: RQDinoModule,
    emb: torch.Tensor,
    item_idx: np.ndarray,
) -> tuple[torch.Tensor, dict[str, Any], RQModule]:
    """Fit the rq stage's RQModule on frozen embeddings; codes [N, L+1], diagnostics, module."""
    from mscg_lightning.stages.rq.module import EmbeddingsDataModule, RQModule

    hp = model.hparams
    rq = RQModule(
        int(emb.shape[1]),
        levels=hp.rq_levels,
        codebook_size=hp.rq_codebook_size,
        decay=hp.rq_decay,
    )
    stage.trainer.fit(rq, datamodule=EmbeddingsDataModule(emb, seed=ctx.seed))
    codes, diag = rq.export_codes(emb, torch.from_numpy(item_idx))
    return codes, diag, rq


def _as_rq_module(model: RQDinoModule) -> RQModule:
    """The quantizer trained inside RQ-DINO wrapped as the rq stage's RQModule (same codes)."""
    from mscg_lightning.stages.rq.module import RQModule

    quantizer = model.model.quantizer
    rq = RQModule(quantizer.dim, levels=quantizer.levels, codebook_size=quantizer.codebook_size)
    rq.model.load_state_dict(quantizer.state_dict())
    return rq


def run(ctx: StageContext) -> Manifest | None:
    """Train (rq_dino) or freeze (post_hoc) the backbone, export codes of every item image."""
    mode = ctx.section.get("mode") or "rq_dino"
    prepared = ctx.inputs["prepare"]
    num_items = int(read_manifest(prepared, stage="prepare").extra["num_items"])

    from mscg_lightning.training import build_stage

    stage = build_stage(ctx, inject={"data.init_args.prepared_dir": str(prepared)})
    model, data = stage.model, stage.datamodule
    if not isinstance(model, RQDinoModule):
        raise MscgError(f"dino_rq.model must be an RQDinoModule, got {type(model).__name__}.")
    if not isinstance(data, ImageDataModule):
        raise MscgError(f"dino_rq.data must be an ImageDataModule, got {type(data).__name__}.")
    data.setup("fit")
    device = stage.trainer.strategy.root_device

    if mode == "rq_dino":
        stage.trainer.fit(model, datamodule=data, ckpt_path=stage.resume_from)
        if ctx.out_dir is None:
            return None  # rank > 0: rank 0 exports
        item_idx, emb, failed = embed_images(model.model.student["backbone"], data, device)
        codes = model.model.quantizer.encode(emb.to(model.model.quantizer.codebooks.device))
        full = append_collision_level(codes.cpu(), torch.from_numpy(item_idx))
        diag = code_diagnostics(full, model.codebook_size, levels=model.levels)
        diag["collision_size"] = int(full[:, -1].max()) + 1
    elif mode == "post_hoc":
        item_idx, emb, failed = embed_images(model.model.student["backbone"], data, device)
        full, diag, rq = _post_hoc_codes(ctx, stage, model, emb, item_idx)
        if ctx.out_dir is None:
            return None
    else:
        raise MscgError(f"dino_rq.mode must be 'rq_dino' or 'post_hoc', got {mode!r}.")

    # Images unreadable at setup, or only now (`failed`), have no codes: listed as missing.
    reasons = {**data.missing, **failed}
    out: Path = ctx.out_dir
    write_codes(out, item_idx, full.numpy())
    if mode == "rq_dino":
        rq = _as_rq_module(model)
        # The trained encoder, loadable with Dinov2Model.from_pretrained (e.g. for post_hoc).
        model.model.student["backbone"].save_pretrained(out / "backbone")
    # Both modes: the rq stage's format, read back with RQModule.from_codebooks.
    rq.save_codebooks(out / "codebooks.safetensors")
    missing = _missing_table(num_items, item_idx, reasons)
    pq.write_table(missing, out / "missing.parquet")
    if len(missing):
        log.warning("dino_rq: %d items have no usable image (see missing.parquet)", len(missing))
    diag["mode"] = mode
    diag["missing"] = len(missing)
    diag["missing_reasons"] = dict(collections.Counter(missing.column("reason").to_pylist()))
    write_json(out / "diagnostics.json", diag)
    return ctx.manifest(
        rows={"items": int(len(item_idx)), "missing": int(len(missing))},
        extra={
            "modality": "image",
            "levels": int(model.levels),
            "codebook_size": int(model.codebook_size),
            "collision_size": int(diag["collision_size"]),
            "collision_rate": diag["collision_rate"],
            "mode": mode,
            "missing": int(len(missing)),
        },
    )
