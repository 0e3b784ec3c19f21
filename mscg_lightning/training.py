"""Glue shared by the Lightning stages: instantiate a section, log to TensorBoard, resume, save config."""

from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

from mscg_lightning.artifacts import is_distributed, is_rank_zero
from mscg_lightning.config import stage_parser
from mscg_lightning.console import EpochLine
from mscg_lightning.errors import MscgError
from mscg_lightning.pipeline import StageContext


class _DropAdverts(logging.Filter):
    """Drops Lightning's advert for its hosted logger from every stage's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())


@dataclass
class LightningStage:
    """The instantiated pieces of a Lightning stage."""

    model: L.LightningModule
    datamodule: L.LightningDataModule | None
    trainer: L.Trainer
    resume_from: str | None
    checkpoint: ModelCheckpoint


class BestAndLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` follows every validation, not only improvements.

    Lightning 2.6 writes ``last.ckpt`` only when it also saved a top-k checkpoint, so with
    ``save_top_k=1`` a run killed after epochs that did not beat the best resumed from the best
    epoch and trained those epochs again (found on a 10-epoch tokenizer that peaked at epoch 3).

    The directory belongs to one instance and one config hash, so ``best.ckpt`` and ``last.ckpt``
    are always overwritten (no ``last-v1.ckpt``: resuming reads ``last.ckpt``), and the state is
    stored under a plain ``ModelCheckpoint``'s key, so checkpoints written before this class
    existed restore the best score and paths too.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(*args, **kwargs)

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._keep_last_current(trainer, at_train_epoch_end=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._keep_last_current(trainer, at_train_epoch_end=False)

    def _keep_last_current(self, trainer: L.Trainer, at_train_epoch_end: bool) -> None:
        """Write last.ckpt where Lightning just decided whether to save and saved nothing (a save
        at this step makes ``_should_skip_saving_checkpoint`` true)."""
        if (
            self.save_last
            and self._should_save_on_train_epoch_end(trainer) == at_train_epoch_end
            and not self._should_skip_saving_checkpoint(trainer)
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class RngState(L.Callback):
    """Keeps the global RNG states (torch, CUDA, numpy, python) in checkpoints; restores them.

    Lightning restores weights, optimisers and loop counters but not the RNGs, so without this a
    resumed run draws other shuffle orders, dropout and modality masks than an uninterrupted one
    and ends with other metrics. The states are restored while the checkpoint is loaded, before
    Lightning creates the first train iterator: the same point in the stream of random numbers
    at which an uninterrupted run starts its next epoch. Under DDP every rank draws dropout and
    masks for its own batches, so the streams differ: the checkpoint keeps every rank's state
    (gathered while saving, which Lightning does on all ranks) and each rank restores its own.
    """

    def state_dict(self) -> dict[str, Any]:
        own = _rng_state()
        if is_distributed():
            states: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, own)
            return {"ranks": states}
        return {"ranks": [own]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        states = state_dict.get("ranks", [state_dict])  # checkpoints from before per-rank states
        rank = torch.distributed.get_rank() if is_distributed() else 0
        # Another world size than at saving cannot replay exactly; rank 0's state is a start.
        _set_rng_state(states[rank] if rank < len(states) else states[0])


def _rng_state() -> dict[str, Any]:
    # Tensors and plain values only: Lightning loads checkpoints with weights_only=True.
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        # the current device only: the one this rank trains on
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def build_stage(
    ctx: StageContext,
    inject: dict[str, Any] | None = None,
    monitor: str | None = None,
    mode: str = "max",
) -> LightningStage:
    """Instantiate ``ctx.section`` (model, data, trainer) with pipeline-provided values.

    ``inject`` maps dotted keys of the section (``data.init_args.prepared_dir``,
    ``model.init_args.num_items``) to values known only at run time. The trainer logs to
    ``<run_dir>/tensorboard/<stage>``, checkpoints into ``ctx.checkpoint_dir`` (best by
    ``monitor`` and last), and resumes from the last checkpoint when one exists.
    """
    L.seed_everything(ctx.seed, workers=True)
    section = copy.deepcopy(ctx.section)
    for key, value in (inject or {}).items():
        section[key] = value
    parser = stage_parser()
    try:
        init = parser.instantiate(section)
    except (TypeError, ValueError) as err:
        raise MscgError(f"stage '{ctx.name}': cannot instantiate its config ({err}).") from err
    trainer_kwargs = (
        dict(vars(init.trainer)) if isinstance(init.trainer, Namespace) else dict(init.trainer)
    )
    callbacks = trainer_kwargs.pop("callbacks", None) or []
    if not isinstance(callbacks, list):
        callbacks = [callbacks]
    ckpt_dir = ctx.checkpoint_dir
    checkpoint = BestAndLastCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=monitor,
        mode=mode,
        save_last=True,
        save_top_k=1,
    )
    callbacks += [checkpoint, RngState(), EpochLine(ctx.name)]  # EpochLine: console.py
    logger = trainer_kwargs.pop("logger", None)
    if logger is None or logger is True:
        logger = TensorBoardLogger(str(ctx.tensorboard_dir), name=ctx.name, version="")
    trainer_kwargs["default_root_dir"] = str(ckpt_dir)
    trainer = L.Trainer(**trainer_kwargs, callbacks=callbacks, logger=logger)
    if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
        # Stages read their results (test metrics, predictions) from the model after
        # trainer.test; spawned ranks keep them to themselves. 'ddp' runs this command per rank.
        raise MscgError(
            f"stage '{ctx.name}': trainer.strategy '{trainer_kwargs.get('strategy')}' runs in "
            "spawned processes whose results do not come back; use strategy 'ddp'."
        )
    last = ckpt_dir / "last.ckpt"
    if last.is_file() and is_rank_zero():
        print(f"[mscg] {ctx.name}: resuming from {last}", flush=True)
    _save_config(ctx, section)
    return LightningStage(
        model=init.model,
        datamodule=init.get("data"),
        trainer=trainer,
        resume_from=str(last) if last.is_file() else None,
        checkpoint=checkpoint,
    )


def _save_config(ctx: StageContext, section: Namespace) -> None:
    """The resolved section next to the stage's results, as LightningCLI's SaveConfigCallback would."""
    if ctx.out_dir is not None:
        text = yaml.safe_dump(_plain_dict(section), sort_keys=False)
        Path(ctx.out_dir, "config.yaml").write_text(text)


def _plain_dict(section: Any) -> Any:
    if isinstance(section, Namespace):
        return {k: _plain_dict(v) for k, v in vars(section).items()}
    if isinstance(section, (list, tuple)):
        return [_plain_dict(v) for v in section]
    if isinstance(section, (str, int, float, bool)) or section is None:
        return section
    if isinstance(section, dict):
        return {k: _plain_dict(v) for k, v in section.items()}
    return str(section)
