"""The chain config: one jsonargparse parser over every stage's section.

A chain config is a YAML file with top-level keys ``name``, ``run_dir``, ``data_root``,
``seed`` and one section per stage. Lightning stages (``sasrec``, ``dino_rq``, ``rq_*``,
``genrec``) are ordinary LightningCLI sections: ``model`` / ``data`` with ``class_path`` and
``init_args``, and ``trainer``. Overrides work as in LightningCLI, one level deeper:
``--genrec.trainer.max_epochs 3``. Several ``--config`` files merge in order (trainer overlays).
"""

from __future__ import annotations

import sys
from typing import Any, Literal, NoReturn

import lightning as L
from jsonargparse import ActionConfigFile, Namespace
from lightning.pytorch.cli import LightningArgumentParser

from mscg_lightning.pipeline import LIGHTNING_STAGES, RQ_STAGES


class ChainParser(LightningArgumentParser):
    """Prints a bad config's error in a few lines (the full usage has hundreds), then exits 2."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        sys.stderr.write(
            f"{self.prog}: error: {message}\n(`{self.prog} --help` lists the options)\n"
        )
        sys.exit(2)


#: Init args that the pipeline fills in from the input artifacts; a chain config cannot set them.
WIRED_ARGS = {"dim", "num_items", "embeddings", "prepared_dir", "token_layout"}


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


def chain_parser(prog: str = "mscg") -> LightningArgumentParser:
    """The parser of a whole chain config (all sections optional but ``prepare``)."""
    from mscg_lightning.data.prepare import PrepareConfig
    from mscg_lightning.stages.text.stage import ImageEmbedConfig, TextEmbedConfig

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
    parser.add_argument("--prepare", type=PrepareConfig, required=True)
    parser.add_argument("--text_embed", type=TextEmbedConfig | None, default=None)
    parser.add_argument("--image_embed", type=ImageEmbedConfig | None, default=None)
    for name in LIGHTNING_STAGES:
        _add_lightning_section(parser, name, skip=WIRED_ARGS)
    for name in RQ_STAGES:
        parser.add_argument(
            f"--{name}.input",
            type=str,
            default={"rq_text": "text_embed", "rq_image": "image_embed", "rq_collab": "sasrec"}[
                name
            ],
            help="embeddings to quantize: an artifact name, or prepare:emb_<name> for given ones",
        )
    parser.add_argument(
        "--dino_rq.mode",
        type=Literal["rq_dino", "post_hoc"],
        default="rq_dino",
        help="rq_dino: train RQ-DINO; post_hoc: frozen backbone CLS -> residual quantizer",
    )
    parser.add_argument(
        "--genrec.modalities",
        type=dict[str, str],
        default={},
        help="modality -> codes source: an rq artifact (rq_text) or given codes (prepare:codes_lemb)",
    )
    parser.add_argument(
        "--genrec.target", type=str, default="collab", help="the modality whose codes are generated"
    )
    return parser


def to_dict(section: Any) -> Any:
    """A parsed section as plain dicts (for ``instantiate`` overrides and saving)."""
    if isinstance(section, Namespace):
        return section.as_dict()
    return section
