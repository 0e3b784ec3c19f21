"""Stage kind ``bbq``: BBQRec's behaviour-bound tokenizer -> triple-token codes.

Inputs. ``ctx.inputs["prepare"]`` (train windows for L_Rec, valid split for the diagnostic
R@10, the catalogue size) and one or both content embeddings, by role:

* ``ctx.inputs["text"]`` / ``ctx.inputs["image"]``: embeddings artifacts (the stage graph passes
  inputs by role like this); otherwise
* the slot's spec in ``ctx.sources`` (stage graph) or ``section.inputs.text`` /
  ``section.inputs.image``: source specs as the ``rq`` stages' ``input`` (an artifact name found
  in ``ctx.inputs``, or ``prepare:emb_<name>``, a given embeddings column).

Artifact layout (``<run_dir>/<instance>/``)::

    codes.parquet         triple tokens per level + collision level (a standard codes table:
                          artifacts.read_codes(<dir>) reads it; token = mixed radix K, see
                          bbq/triples.py)
    embeddings.parquet    v_i = q^ID ⊕ q^text ⊕ q^image [N, S*D] (read_embeddings(<dir>))
    manifest.json         extra: modality "bbq", token "triple", signals, levels,
                          signal_codebook_size K, codebook_size K^S, collision_size, ...
    <signal>/codes.parquet, <signal>/manifest.json
                          per-signal codes (id, text, image) with their own collision level
    codebooks.safetensors the tokenizer's weights and config (BBQModule.load_model)
    diagnostics.json      collisions of triples vs per-signal codes, CLUB estimate per epoch,
                          internal SASRec validation metrics per epoch and of the exported weights
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from mscg_lightning.artifacts import (
    EmbeddingTable,
    Manifest,
    read_embeddings,
    read_manifest,
    write_codes,
    write_embeddings,
    write_json,
)
from mscg_lightning.data.datamodule import SequenceDataModule
from mscg_lightning.errors import MscgError
from mscg_lightning.pipeline import StageContext
from mscg_lightning.stages.bbq.module import BBQModule
from mscg_lightning.stages.bbq.triples import collision_report, join_triples
from mscg_lightning.stages.rq.collisions import append_collision_level, code_diagnostics
from mscg_lightning.stages.rq.quantizer import load_with_config, save_with_config
from mscg_lightning.training import build_stage

ROLES = ("text", "image")
MONITOR = "val/recall@10"


def content_tables(ctx: StageContext, num_items: int) -> dict[str, EmbeddingTable]:
    """The content embeddings by role (see the module docstring); at least one."""
    from mscg_lightning.stages.rq.stage import load_embeddings

    specs = ctx.section.get("inputs") if hasattr(ctx.section, "get") else None
    graph = getattr(ctx, "sources", None) or {}  # the stage graph's slot specs
    tables = {}
    for role in ROLES:
        spec = graph.get(role) or (specs.get(role) if specs is not None else None)
        if role in ctx.inputs:
            tables[role] = read_embeddings(ctx.inputs[role], num_items=num_items)
        elif spec:
            tables[role] = load_embeddings(ctx, str(spec))
    if not tables:
        raise MscgError(
            f"stage '{ctx.name}' has no content input: set inputs.text and/or inputs.image."
        )
    return tables


def _bare_section(ctx: StageContext):
    bare = copy.copy(ctx)
    bare.section = copy.deepcopy(ctx.section)
    if "inputs" in bare.section:
        del bare.section["inputs"]
    return bare


def _write_part(ctx: StageContext, signal: str, codes: np.ndarray, k: int) -> dict:
    """Per-signal codes [N, L] with a collision level as a codes artifact ``<out>/<signal>``."""
    item_idx = np.arange(len(codes))
    full = append_collision_level(codes, item_idx)
    part = ctx.out_dir / signal
    part.mkdir()
    write_codes(part, item_idx, full)
    extra = {
        "modality": signal,
        "levels": int(codes.shape[1]),
        "codebook_size": int(k),
        "collision_size": int(full[:, -1].max()) + 1,
        "collision_rate": code_diagnostics(codes, k)["collision_rate"],
    }
    Manifest(
        stage=f"{ctx.name}:{signal}",
        config_hash=ctx.config_hash,
        inputs=dict(ctx.input_hashes),
        rows={"items": int(len(codes))},
        extra=extra,
    ).write(part)
    return extra


def run(ctx: StageContext) -> Manifest | None:
    """Validate the inputs, train the tokenizer, export codes, vectors and diagnostics."""
    if "prepare" not in ctx.inputs:
        raise MscgError(f"stage '{ctx.name}' needs the prepare artifact as input 'prepare'.")
    prepared = ctx.inputs["prepare"]
    num_items = int(read_manifest(prepared, stage="prepare").extra["num_items"])
    tables = content_tables(ctx, num_items)
    init = ctx.section.get("model", {}).get("init_args") or {}
    k = int(init.get("codebook_size", 256))
    if k ** (1 + len(tables)) >= 2**31:
        raise MscgError(
            f"stage '{ctx.name}': model.init_args.codebook_size {k} ** {1 + len(tables)} signals "
            "does not fit a triple token in int32; lower codebook_size."
        )
    stage = build_stage(
        _bare_section(ctx),
        inject={
            "data.init_args.prepared_dir": str(prepared),
            "data.init_args.train_mode": "windows",
            "data.init_args.target_mode": "per_item",
            "model.init_args.num_items": num_items,
            "model.init_args.content_dims": {
                m: int(t.embeddings.shape[1]) for m, t in tables.items()
            },
        },
        monitor=MONITOR,
        mode="max",
    )
    model, data, trainer = stage.model, stage.datamodule, stage.trainer
    if not isinstance(model, BBQModule) or not isinstance(data, SequenceDataModule):
        raise MscgError(
            f"stage '{ctx.name}': model must be a BBQModule and data a SequenceDataModule."
        )
    k, signals = model.hparams.codebook_size, model.model.signals
    if data.max_history > model.hparams.max_len:
        raise MscgError(
            f"stage '{ctx.name}': data.init_args.max_history ({data.max_history}) exceeds "
            f"model.init_args.max_len ({model.hparams.max_len})."
        )
    for m, t in tables.items():
        model.model.set_features(m, t.item_idx, t.embeddings)
    trainer.fit(model, datamodule=data, ckpt_path=stage.resume_from)
    best = stage.checkpoint.best_model_path or None
    if best:  # export the weights of the best validation R@10 (features are not checkpointed)
        state = torch.load(best, map_location=model.device, weights_only=False)["state_dict"]
        model.load_state_dict(state)
    trainer.validate(model, datamodule=data, verbose=False)
    final_val = model.val_history.pop() if model.val_history else {}
    codes, vectors = model.model.encode_catalogue()
    codes_np = codes.cpu().numpy()  # [N, S, L]
    if ctx.out_dir is None:
        return None
    item_idx = np.arange(num_items)
    triples = join_triples(codes.cpu(), k).numpy()
    full = append_collision_level(triples, item_idx)
    write_codes(ctx.out_dir, item_idx, full)
    write_embeddings(ctx.out_dir, item_idx, vectors.float().cpu().numpy())
    parts = {s: _write_part(ctx, s, codes_np[:, i], k) for i, s in enumerate(signals)}
    save_model(model, ctx.out_dir / "codebooks.safetensors")
    diagnostics = {
        "collision_rates": collision_report(codes_np, signals),
        "triple_collision_size": int(full[:, -1].max()) + 1,
        "per_signal_levels": {
            s: code_diagnostics(codes_np[:, i], k)["per_level"] for i, s in enumerate(signals)
        },
        "shared_codebook": bool(model.hparams.shared_codebook),
        "val_exported": final_val,
        "best_checkpoint": best,
        **model.diagnostics(),
    }
    write_json(ctx.out_dir / "diagnostics.json", diagnostics)
    return ctx.manifest(
        rows={"items": num_items},
        extra={
            "kind": "bbq",
            "modality": "bbq",
            "token": "triple",
            "signals": list(signals),
            "levels": int(model.hparams.levels),
            "signal_codebook_size": int(k),
            "codebook_size": int(k ** len(signals)),
            "collision_size": int(full[:, -1].max()) + 1,
            "collision_rate": diagnostics["collision_rates"]["triple"],
            "dim": int(vectors.shape[1]),
            "parts": parts,
        },
    )


def save_model(module: BBQModule, path: str | Path) -> None:
    """The tokenizer's weights with its constructor arguments (safetensors)."""
    config = {k: v for k, v in module.hparams.items() if k not in ("ks",)}
    save_with_config(module.model, {"kind": "bbq", **config}, path)


def load_model(path: str | Path) -> BBQModule:
    """Rebuild the module written by :func:`save_model` (features must be set again)."""
    config, state = load_with_config(path, "bbq")
    module = BBQModule(**config)
    module.model.load_state_dict(state)
    return module
