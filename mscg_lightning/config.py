"""The chain config: one jsonargparse parser over every stage's section.

A chain config is a YAML file with top-level settings ``name``, ``run_dir``, ``data_root``,
``seed``, ``reference`` and one section per stage instance (``kind``, ``inputs`` and the kind's
options, see :mod:`mscg_lightning.graph`). Lightning kinds (``sasrec``, ``dino_rq``, ``rq``,
``rq_xmodal``, ``genrec``) are ordinary LightningCLI sections: ``model`` / ``data`` with
``class_path`` and ``init_args``, and ``trainer``. Overrides work as in LightningCLI, one level
deeper: ``--tiger.trainer.max_epochs 3``. Several ``--config`` files merge in order (trainer overlays).
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import lightning as L
from jsonargparse import ActionConfigFile, Namespace
from lightning.pytorch.cli import LightningArgumentParser


class ChainParser(LightningArgumentParser):
    """Prints a bad config's error in a few lines (the full usage has hundreds), then exits 2."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        sys.stderr.write(
            f"{self.prog}: error: {message}\n(`{self.prog} --help` lists the options)\n"
        )
        sys.exit(2)


#: Init args that the pipeline fills in from the input artifacts; a chain config cannot set them.
WIRED_ARGS = {
    "dim",
    "num_items",
    "embeddings",
    "prepared_dir",
    "token_layout",
    "text_dim",
    "image_dim",
    "text",
    "image",
    "text_labels",
    "image_labels",
    "content_dims",
}


def _add_lightning_section(
    parser: LightningArgumentParser, prefix: str, skip: set[str] | None = None
) -> None:
    """``model``, ``data`` (subclass mode) and ``trainer`` groups under ``prefix`` ('' = top)."""
    key = f"{prefix}." if prefix else ""
    parser.add_lightning_class_args(L.Trainer, f"{key}trainer")
    parser.add_subclass_arguments(L.LightningModule, f"{key}model", required=False, skip=skip)
    parser.add_subclass_arguments(L.LightningDataModule, f"{key}data", required=False, skip=skip)


def stage_parser() -> LightningArgumentParser:
    """A LightningCLI-style parser of one Lightning stage section (used to instantiate it)."""
    parser = LightningArgumentParser(exit_on_error=False)
    _add_lightning_section(parser, "")
    return parser


def chain_parser(
    prog: str = "mscg", instances: dict[str, str] | None = None
) -> LightningArgumentParser:
    """The parser of a whole chain config: the settings and one section per stage instance.

    ``instances`` maps each instance name to its kind (:func:`mscg_lightning.graph.discover`):
    a Lightning kind gets ``model`` / ``data`` / ``trainer`` groups, another kind its section
    dataclass's fields inline; every instance gets ``kind`` and ``inputs``.
    """
    from mscg_lightning.registry import get

    parser = ChainParser(prog=prog, description=__doc__)
    parser.add_argument(
        "--config", action=ActionConfigFile, help="chain config file(s), merged in order"
    )
    parser.add_argument("--name", type=str, default="run", help="name of the run (reports, logs)")
    parser.add_argument("--run_dir", type=str, default="runs/default", help="all artifacts go here")
    parser.add_argument(
        "--data_root",
        type=str,
        default="../shared/data",
        help="folder that dataset paths in `prepare.path` are relative to",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every stage")
    parser.add_argument(
        "--reference",
        type=str | None,
        default=None,
        help="the model instance every row of the comparison table is tested against",
    )
    for name, kind_name in (instances or {}).items():
        kind = get(kind_name)
        parser.add_argument(
            f"--{name}.kind", type=str, default=kind_name, help=f"stage kind of '{name}'"
        )
        parser.add_argument(
            f"--{name}.inputs",
            type=dict[str, str],
            default={},
            help=f"slot -> source instance (or instance:part); slots: {', '.join(kind.inputs)}",
        )
        parser.add_argument(
            f"--{name}.seed",
            type=int | None,
            default=None,
            help=f"seed of '{name}' alone (default: the run's --seed); e.g. generator seeds "
            "over one shared upstream",
        )
        if kind.lightning:
            _add_lightning_section(parser, name, skip=WIRED_ARGS)
        elif kind.section is not None:
            parser.add_class_arguments(kind.section(), name, sub_configs=True)
        if kind.extra_args is not None:
            kind.extra_args(parser, name)
    return parser


def to_dict(section: Any) -> Any:
    """A parsed section as plain dicts (for ``instantiate`` overrides and saving)."""
    if isinstance(section, Namespace):
        return section.as_dict()
    return section
