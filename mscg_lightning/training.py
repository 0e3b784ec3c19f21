"""Glue shared by the Lightning stages: instantiate a section, log to TensorBoard, resume, save config."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from mscg_lightning.config import stage_parser
from mscg_lightning.errors import MscgError
from mscg_lightning.pipeline import StageContext


@dataclass
class LightningStage:
    """The instantiated pieces of a Lightning stage."""

    model: L.LightningModule
    datamodule: L.LightningDataModule | None
    trainer: L.Trainer
    resume_from: str | None
    checkpoint: ModelCheckpoint


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
        init = parser.instantiate_classes(section)
    except (TypeError, ValueError) as err:
        raise MscgError(f"stage '{ctx.name}': cannot instantiate its config ({err}).") from err
    trainer_kwargs = (
        dict(vars(init.trainer)) if isinstance(init.trainer, Namespace) else dict(init.trainer)
    )
    callbacks = trainer_kwargs.pop("callbacks", None) or []
    if not isinstance(callbacks, list):
        callbacks = [callbacks]
    ckpt_dir = ctx.checkpoint_dir
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=monitor,
        mode=mode,
        save_last=True,
        save_top_k=1,
    )
    callbacks.append(checkpoint)
    logger = trainer_kwargs.pop("logger", None)
    if logger is None or logger is True:
        logger = TensorBoardLogger(str(ctx.tensorboard_dir), name=ctx.name, version="")
    trainer_kwargs["default_root_dir"] = str(ckpt_dir)
    trainer = L.Trainer(**trainer_kwargs, callbacks=callbacks, logger=logger)
    last = ckpt_dir / "last.ckpt"
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
