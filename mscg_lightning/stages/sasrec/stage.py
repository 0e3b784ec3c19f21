"""The ``sasrec`` stage: train SASRec on ``prepared/``, test it, export its item embeddings.

Artifact ``<run_dir>/sasrec/``: ``embeddings.parquet`` (the item table without the padding row,
[num_items, hidden]), ``metrics.json`` (test and validation metrics of the best checkpoint, with
95% bootstrap CIs), ``test_ranks.parquet`` (per test user the rank of the target, for ``mscg
test``) and ``manifest.json`` (``extra``: ``dim``, ``modality`` = collab, ``missing``).

``metrics.json["test"]`` follows ``model.init_args.mask_history`` (off by default, DESIGN.md
section 5); ``test_history_masked`` holds the same test with the user's history items masked out
of the ranking, for comparison with published rows that mask them.

SASRec trains on every prefix of a train sequence (``per_item`` targets) even where
``prepare`` recorded ``last_item`` targets for GenRec (PixelRec): RecBole's SASRec, the paper's
baseline and teacher, does. ``sasrec.data.init_args.target_mode: last_item`` trains on the last
item only instead (see :func:`train_target_mode`).
"""

from __future__ import annotations

import time

import numpy as np

from mscg_lightning.artifacts import Manifest, read_manifest, write_embeddings, write_json
from mscg_lightning.compare import write_test_ranks
from mscg_lightning.data.datamodule import SequenceDataModule
from mscg_lightning.errors import MscgError
from mscg_lightning.pipeline import StageContext
from mscg_lightning.stages.sasrec.module import SASRecModule
from mscg_lightning.training import build_stage

MONITOR = "val/ndcg@10"


def train_target_mode(data: SequenceDataModule) -> str:
    """Set and return the SASRec train targets: the configured ones, else ``per_item``.

    ``SequenceDataModule.target_mode`` None would follow ``prepare`` (``last_item`` on PixelRec);
    SASRec keeps every prefix as a target, as RecBole's SASRec does.
    """
    if data.target_mode is None:
        data.target_mode = "per_item"
    return data.target_mode


def run(ctx: StageContext) -> Manifest:
    """Fit (resuming from the last checkpoint), validate and test the best checkpoint, export."""
    prepared = ctx.inputs["prepare"]
    num_items = int(read_manifest(prepared, stage="prepare").extra["num_items"])
    prepared_history = int(read_manifest(prepared).extra.get("max_history", 0))
    stage = build_stage(
        ctx,
        inject={
            "data.init_args.prepared_dir": str(prepared),
            "model.init_args.num_items": num_items,
        },
        monitor=MONITOR,
        mode="max",
    )
    model, data, trainer = stage.model, stage.datamodule, stage.trainer
    if not isinstance(model, SASRecModule):
        raise MscgError(f"sasrec.model must be a SASRecModule, got {type(model).__name__}.")
    if data is None:
        raise MscgError("sasrec.data is not configured: it needs a SequenceDataModule section.")
    if isinstance(data, SequenceDataModule):
        train_target_mode(data)
    history = int(getattr(data, "max_history", 0))
    if history > model.hparams.max_len:
        raise MscgError(
            f"sasrec.data.init_args.max_history ({history}) exceeds "
            f"sasrec.model.init_args.max_len ({model.hparams.max_len})."
        )
    if prepared_history and history > prepared_history:
        raise MscgError(
            f"sasrec.data.init_args.max_history ({history}) exceeds the max_history of "
            f"{prepared} ({prepared_history}); raise prepare.max_history."
        )

    start = time.perf_counter()
    trainer.fit(model, datamodule=data, ckpt_path=stage.resume_from)
    epochs = int(trainer.current_epoch)
    # The best checkpoint by validation NDCG@10; the last weights if no checkpoint was kept.
    best = stage.checkpoint.best_model_path or None
    trainer.validate(model, datamodule=data, ckpt_path=best, verbose=False)
    valid = model.val_metrics.compute_with_ci()
    trainer.test(model, datamodule=data, ckpt_path=best, verbose=False)
    test = model.test_result
    test_users, test_ranks = model.test_metrics.user_ranks()  # every rank: it gathers
    masked = test
    if not model.mask_history:  # the same weights, history items masked: one more test pass
        model.mask_history = True
        trainer.test(model, datamodule=data, verbose=False)
        masked = model.test_result
        model.mask_history = False
    wall = time.perf_counter() - start

    table = model.model.item_table.detach().float().cpu().numpy()
    if ctx.out_dir is not None:  # rank 0 only
        write_embeddings(ctx.out_dir, np.arange(num_items, dtype=np.int32), table)
        write_test_ranks(ctx.out_dir, test_users, test_ranks, max(model.ks))
        score = stage.checkpoint.best_model_score
        write_json(
            ctx.out_dir / "metrics.json",
            {
                "model": "SASRec",
                "test": test,
                "test_history_masked": masked,
                "valid": valid,
                "epochs": epochs,
                "wall_seconds": wall,
                "best_checkpoint": best,
                "best_val_ndcg@10": None if score is None else float(score),
                "mask_history": bool(model.hparams.mask_history),
                "hparams": dict(model.hparams),
            },
        )
    return ctx.manifest(
        rows={"items": num_items},
        extra={"dim": int(table.shape[1]), "modality": "collab", "missing": 0},
    )
