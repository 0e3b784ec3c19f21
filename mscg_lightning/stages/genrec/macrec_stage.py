"""Stage kind ``macrec``: text codes + image codes + prepared sequences -> MACRec's generator,
test metrics, per-user ranks and predictions.

Inputs, by role (as ``rq_xmodal`` reads its embeddings):

* ``ctx.inputs["prepare"]``: the prepared sequences (always);
* ``ctx.inputs["text"]`` / ``ctx.inputs["image"]``: paths of codes artifacts (a codes part
  such as ``<run_dir>/rq_xmodal/text`` or a whole ``rq`` artifact), as the stage graph passes
  inputs by role; otherwise
* ``section.inputs.text`` / ``section.inputs.image``: source specs: ``rq_xmodal:text`` (part
  ``text`` of artifact ``rq_xmodal``), ``rq_text`` (a codes artifact) or ``prepare:codes_lemb``
  (codes given by prepare; a collision level is appended).

MACRec = the parts of an ``rq_xmodal`` artifact; MQL4GRec-style = two independent ``rq``
artifacts (or the same given codes) with the same tasks and ``implicit_weight`` as configured.

Artifact: ``metrics.json`` (as genrec's), ``predictions.parquet`` (user_idx, items, scores),
``test_ranks.parquet`` (user_idx, target, rank: 0-based position of the target in the ranked
list, -1 = not in the top K; schema metadata ``list_length`` = K), ``model.ckpt``,
``config.yaml``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from jsonargparse import Namespace

from mscg_lightning.artifacts import Manifest, read_codes, read_manifest, write_json
from mscg_lightning.errors import MscgError
from mscg_lightning.metrics import target_ranks
from mscg_lightning.pipeline import StageContext, artifact_dir
from mscg_lightning.stages.genrec.macrec_model import MODALITIES
from mscg_lightning.stages.genrec.stage import _write_predictions
from mscg_lightning.stages.genrec.tokens import TokenLayout, stack_modality_codes

DATA_CLASS = "mscg_lightning.data.datamodule.SequenceDataModule"


def load_codes(
    ctx: StageContext, role: str, prepared: Path, num_items: int
) -> tuple[torch.Tensor, torch.Tensor, list[int], str]:
    """Codes of one role: (item_idx [n], codes [n, L+1], vocab sizes per position, source)."""
    from mscg_lightning.stages.rq.stage import codes_from_given

    if role in ctx.inputs:
        path, source = Path(ctx.inputs[role]), str(ctx.inputs[role])
    else:
        # the stage graph records each slot's spec in ctx.sources (a prepare column has no
        # path); a section of its own may name them under inputs
        specs = ctx.section.get("inputs") if hasattr(ctx.section, "get") else None
        source = getattr(ctx, "sources", {}).get(role) or (specs or {}).get(role)
        if not source:
            raise MscgError(
                f"stage '{ctx.name}' has no '{role}' codes input: set inputs.{role} "
                f"(e.g. rq_xmodal:{role}, rq_{role} or prepare:codes_<name>)."
            )
        source = str(source)
        name, _, part = source.partition(":")
        if name == "prepare":
            item_idx, codes, k = codes_from_given(prepared, part)
            if len(item_idx) == 0:
                raise MscgError(f"stage '{ctx.name}': inputs.{role} '{source}' holds no codes.")
            collision = int(codes[:, -1].max()) + 1
            sizes = [int(k)] * (codes.shape[1] - 1) + [collision]
            return torch.from_numpy(item_idx), torch.from_numpy(codes), sizes, source
        path = Path(ctx.inputs.get(name) or artifact_dir(ctx.run_dir, name))
        if part:
            path = path / part
    if not (path / "manifest.json").is_file():
        raise MscgError(f"stage '{ctx.name}': codes input '{source}' ({path}) does not exist.")
    table = read_codes(path, num_items=num_items)
    levels = table.codes.shape[1] - 1
    sizes = [int(table.codebook_size)] * levels + [int(table.collision_size)]
    return torch.as_tensor(table.item_idx), torch.as_tensor(table.codes), sizes, source


def build_catalogue(
    ctx: StageContext, prepared: Path
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor, dict[str, str]]:
    """(token layout dict, codes [N, 2, P], present [N, 2], sources) of the text/image codes."""
    num_items = int(read_manifest(prepared, stage="prepare").extra["num_items"])
    tables, sizes, sources = {}, [], {}
    for role in MODALITIES:
        item_idx, codes, vocab, source = load_codes(ctx, role, prepared, num_items)
        tables[role] = (item_idx, codes)
        sizes.append(vocab)
        sources[role] = source
    if len(sizes[0]) != len(sizes[1]):
        raise MscgError(
            f"stage '{ctx.name}': text codes have {len(sizes[0]) - 1} levels and image codes "
            f"{len(sizes[1]) - 1}; MACRec needs the same number."
        )
    layout = {"modalities": list(MODALITIES), "vocab_sizes": sizes}
    token_layout = TokenLayout(MODALITIES, sizes, target="text")
    codes, present = stack_modality_codes(token_layout, num_items, tables)
    return layout, codes, present, sources


def _bare_section(ctx: StageContext) -> StageContext:
    """The context with a section that the Lightning stage parser accepts."""
    bare = copy.copy(ctx)
    bare.section = copy.deepcopy(ctx.section)
    for key in ("inputs", "kind"):
        if key in bare.section:
            del bare.section[key]
    if bare.section.get("data") is None:
        bare.section.data = Namespace(class_path=DATA_CLASS, init_args=Namespace())
    return bare


def run(ctx: StageContext) -> Manifest | None:
    from mscg_lightning.training import build_stage

    if ctx.section.get("model") is None:
        raise MscgError(f"stage '{ctx.name}' has no model section (MacrecModule).")
    prepared = ctx.inputs["prepare"]
    layout, codes, present, sources = build_catalogue(ctx, prepared)
    init_args = ctx.section.model.get("init_args") or {}
    val_metric = init_args.get("val_metric", "ndcg@10")
    monitor, mode = ("val/loss", "min") if val_metric == "loss" else ("val/ndcg@10", "max")
    stage = build_stage(
        _bare_section(ctx),
        inject={
            "model.init_args.token_layout": layout,
            "data.init_args.prepared_dir": str(prepared),
        },
        monitor=monitor,
        mode=mode,
    )
    model = stage.model
    model.set_catalogue(codes, present)
    stage.trainer.fit(model, datamodule=stage.datamodule, ckpt_path=stage.resume_from)
    best = stage.checkpoint.best_model_path or None
    if best:
        state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        model.load_state_dict(state)
    model.set_catalogue(codes, present)
    stage.trainer.test(model, datamodule=stage.datamodule)
    if ctx.out_dir is None:
        return None
    result = model.test_result
    hp = model.hparams
    score = stage.checkpoint.best_model_score
    write_json(
        ctx.out_dir / "metrics.json",
        {
            "model": f"MACRec generator (text: {sources['text']}, image: {sources['image']})",
            "test": result,
            "epochs": stage.trainer.current_epoch,
            "best_checkpoint_score": None if score is None else float(score),
            "inputs": sources,
            "tasks": list(hp.tasks),
            "implicit_weight": hp.implicit_weight,
            "inference": hp.inference,
            "ensemble_rule": hp.ensemble_rule,
        },
    )
    _write_predictions(ctx.out_dir / "predictions.parquet", model.predictions, prepared)
    write_test_ranks(ctx.out_dir / "test_ranks.parquet", model.predictions, model.test_targets)
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": dict(hp)},
        ctx.out_dir / "model.ckpt",
    )
    return ctx.manifest(
        rows={"test_users": int(result["num_users"]["mean"]), "items": int(codes.shape[0])},
        extra={"kind": "macrec", "inputs": sources, "token_layout": layout},
    )


def write_test_ranks(path: Path, predictions: list, targets: list) -> None:
    """``user_idx``, ``target``, ``rank`` (0-based rank of the target, -1 = miss), one row per
    test user (the first occurrence when DDP padding repeated a user)."""
    if predictions:
        users = torch.cat([p[0] for p in predictions])
        ranks = target_ranks(torch.cat([p[1] for p in predictions]), torch.cat(targets))
        target = torch.cat(targets)
        users_np, first = np.unique(users.numpy(), return_index=True)
        target_np, ranks_np = target.numpy()[first], ranks.numpy()[first]
    else:
        users_np = target_np = ranks_np = np.zeros(0, np.int64)
    table = pa.table(
        {
            "user_idx": pa.array(users_np.astype(np.int32), type=pa.int32()),
            "target": pa.array(target_np.astype(np.int32), type=pa.int32()),
            "rank": pa.array(ranks_np.astype(np.int32), type=pa.int32()),
        }
    )
    # the ranked list length K, as the comparison table reads it
    width = predictions[0][1].shape[1] if predictions else 0
    pq.write_table(table.replace_schema_metadata({"list_length": str(int(width))}), path)
