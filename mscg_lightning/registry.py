"""The registry of stage kinds: what each kind reads, what it writes, how it is configured.

A chain config declares named *instances*; each names its ``kind``, one of the kinds registered
here. Adding a kind is adding its module (a ``run(ctx) -> Manifest`` function) and one
:func:`register` call below (or in the kind's own package, imported by :data:`KIND_MODULES`);
the pipeline, the config parser and the comparison table read everything else from the entry.

Payload types name what crosses a stage boundary:

* ``prepared``: the output of ``prepare`` (items, users, splits);
* ``embeddings``: an embeddings artifact (``embeddings.parquet``, :func:`artifacts.read_embeddings`);
* ``codes``: a codes artifact (``codes.parquet``, :func:`artifacts.read_codes`);
* ``model``: a trained recommender (not read by other kinds today).

An input *slot* accepts one or more payload types; a source names an instance (``rq_text``) or
one of its parts (``prepare:codes_lemb``, ``xmodal:text``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mscg_lightning.errors import MscgError


@dataclass(frozen=True)
class Slot:
    """One input of a kind: the payload types it accepts and the source used when none is named."""

    accepts: tuple[str, ...]
    default: str | None = None
    doc: str = ""
    required: bool = True  # an optional slot may stay unset (the stage checks what it needs)


@dataclass(frozen=True)
class StageKind:
    """A registered stage kind.

    Args:
        name: the kind, as written in ``kind:`` of an instance.
        run: ``"module:function"`` of the stage function (imported when the stage runs).
        inputs: the kind's named input slots (under ``inputs:`` of an instance).
        provides: the payload type of the whole artifact (None: only its parts are read).
        parts: named outputs, ``part -> payload type``; a part written as a sub-directory of the
            artifact (``<instance>/<part>/``, with its own manifest) or, for ``prepare``, a column
            of the items table. A name ending in ``*`` is a prefix (``codes_*``).
        lightning: configured as a LightningCLI section (``model`` / ``data`` / ``trainer``).
        section: dataclass of a non-Lightning section (its fields sit inline in the instance).
        variadic_key: a section key whose ``{slot: source}`` entries are further inputs, in order
            (genrec's ``modalities``); each accepts ``variadic_accepts``.
        variadic_accepts: the payload types of those inputs.
        extra_args: adds kind-specific options to the parser: ``f(parser, instance_name)``.
        validate: kind-specific checks of a parsed section: ``f(instance_name, section)`` raising
            :class:`MscgError` (run before any stage runs).
        model_row: its artifact holds ``test_ranks.parquet`` and ``metrics.json``: one row of the
            comparison table (``mscg test``).
        default_dir: artifact directory when the instance name equals the kind (``prepared``).
    """

    name: str
    run: str
    inputs: dict[str, Slot] = field(default_factory=dict)
    provides: str | None = None
    parts: dict[str, str] = field(default_factory=dict)
    lightning: bool = False
    section: Callable[[], type] | None = None
    variadic_key: str | None = None
    variadic_accepts: tuple[str, ...] = ()
    extra_args: Callable[[Any, str], None] | None = None
    validate: Callable[[str, Any], None] | None = None
    model_row: bool = False
    default_dir: str | None = None

    def runner(self) -> Callable[[Any], Any]:
        module_name, func = self.run.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            raise MscgError(f"stage kind '{self.name}' is not available ({err}).") from err
        return getattr(module, func)

    def part_type(self, part: str) -> str | None:
        """The payload type of part ``part`` (None when the kind has no such part)."""
        if part in self.parts:
            return self.parts[part]
        for pattern, payload in self.parts.items():
            if pattern.endswith("*") and part.startswith(pattern[:-1]) and part != pattern[:-1]:
                return payload
        return None


KINDS: dict[str, StageKind] = {}

#: Modules whose import registers further kinds (a kind's package may register itself).
KIND_MODULES: list[str] = []


def register(kind: StageKind) -> StageKind:
    """Register ``kind`` (a name registered twice is a programming error)."""
    if kind.name in KINDS and KINDS[kind.name] != kind:
        raise ValueError(f"stage kind '{kind.name}' is registered twice")
    KINDS[kind.name] = kind
    return kind


def kinds() -> dict[str, StageKind]:
    """Every registered kind (importing :data:`KIND_MODULES` first)."""
    for module in KIND_MODULES:
        importlib.import_module(module)
    return KINDS


def get(name: str) -> StageKind:
    table = kinds()
    if name not in table:
        raise MscgError(f"unknown stage kind '{name}'; the kinds are: {', '.join(table)}.")
    return table[name]


# ---------------------------------------------------------------------------------------------
# Kind-specific options and checks


def _prepare_section() -> type:
    from mscg_lightning.data.prepare_config import PrepareConfig

    return PrepareConfig


def _text_section() -> type:
    from mscg_lightning.stages.text.stage import TextEmbedConfig

    return TextEmbedConfig


def _image_section() -> type:
    from mscg_lightning.stages.text.stage import ImageEmbedConfig

    return ImageEmbedConfig


def _genrec_args(parser: Any, name: str) -> None:
    parser.add_argument(
        f"--{name}.modalities",
        type=dict[str, str],
        default={},
        help="modality -> codes source, in the order the codes stand in every history item: "
        "an rq instance (rq_text) or a part (prepare:codes_lemb, xmodal:text)",
    )
    parser.add_argument(
        f"--{name}.target",
        type=str,
        default="collab",
        help="the modality whose codes are generated",
    )


def _dino_args(parser: Any, name: str) -> None:
    from typing import Literal

    parser.add_argument(
        f"--{name}.mode",
        type=Literal["rq_dino", "post_hoc"],
        default="rq_dino",
        help="rq_dino: train RQ-DINO; post_hoc: frozen backbone CLS -> residual quantizer",
    )


def _validate_genrec(name: str, section: Any) -> None:
    from mscg_lightning.graph import init_arg

    modalities = dict(section.get("modalities") or {})
    if not modalities:
        raise MscgError(f"{name}.modalities is empty: name at least one codes source.")
    target = section.get("target")
    if target not in modalities:
        raise MscgError(
            f"{name}.target '{target}' is not one of {name}.modalities {list(modalities)}."
        )
    masked = init_arg(section, "eval_masked_modalities") or []
    unknown = [m for m in masked if m not in modalities]
    if unknown:
        raise MscgError(
            f"{name}.model.init_args.eval_masked_modalities names '{unknown[0]}', which is not "
            f"one of {name}.modalities {list(modalities)}."
        )
    top_k, beams = init_arg(section, "top_k"), init_arg(section, "num_beams")
    if isinstance(top_k, int) and isinstance(beams, int) and top_k > beams:
        raise MscgError(
            f"{name}.model.init_args.top_k ({top_k}) exceeds num_beams ({beams}): beam search "
            "returns at most num_beams items."
        )


_PREPARED = Slot(("prepared",), default="prepare", doc="the prepared data")

for _kind in (
    StageKind(
        "prepare",
        run="mscg_lightning.data.stage:run",
        provides="prepared",
        parts={"codes_*": "codes", "emb_*": "embeddings"},
        section=_prepare_section,
        default_dir="prepared",
    ),
    StageKind(
        "sasrec",
        run="mscg_lightning.stages.sasrec.stage:run",
        inputs={"prepare": _PREPARED},
        provides="embeddings",
        lightning=True,
        model_row=True,
    ),
    StageKind(
        "text_embed",
        run="mscg_lightning.stages.text.stage:run_text",
        inputs={"prepare": _PREPARED},
        provides="embeddings",
        section=_text_section,
    ),
    StageKind(
        "image_embed",
        run="mscg_lightning.stages.text.stage:run_image",
        inputs={"prepare": _PREPARED},
        provides="embeddings",
        section=_image_section,
    ),
    StageKind(
        "dino_rq",
        run="mscg_lightning.stages.dino_rq.stage:run",
        inputs={"prepare": _PREPARED},
        provides="codes",
        lightning=True,
        extra_args=_dino_args,
    ),
    StageKind(
        "rq",
        run="mscg_lightning.stages.rq.stage:run",
        inputs={
            "prepare": _PREPARED,
            "embeddings": Slot(("embeddings",), doc="the embeddings to quantize"),
        },
        provides="codes",
        lightning=True,
    ),
    StageKind(
        "rq_xmodal",
        run="mscg_lightning.stages.rq_xmodal.stage:run",
        inputs={
            "prepare": _PREPARED,
            "text": Slot(("embeddings",), doc="text embeddings"),
            "image": Slot(("embeddings",), doc="image embeddings"),
        },
        parts={"text": "codes", "image": "codes"},
        lightning=True,
    ),
    StageKind(
        "genrec",
        run="mscg_lightning.stages.genrec.stage:run",
        inputs={"prepare": _PREPARED},
        provides="model",
        lightning=True,
        variadic_key="modalities",
        variadic_accepts=("codes",),
        extra_args=_genrec_args,
        validate=_validate_genrec,
        model_row=True,
    ),
    StageKind(
        "macrec",
        run="mscg_lightning.stages.genrec.macrec_stage:run",
        inputs={
            "prepare": _PREPARED,
            "text": Slot(
                ("codes",), doc="text codes: xmodal:text, an rq instance, prepare:codes_*"
            ),
            "image": Slot(
                ("codes",), doc="image codes: xmodal:image, an rq instance, prepare:codes_*"
            ),
        },
        provides="model",
        lightning=True,
        model_row=True,
    ),
    StageKind(
        "bbq",
        run="mscg_lightning.stages.bbq.stage:run",
        inputs={
            "prepare": _PREPARED,
            "text": Slot(("embeddings",), required=False, doc="text_embed, or prepare:emb_*"),
            "image": Slot(("embeddings",), required=False, doc="image_embed, or prepare:emb_*"),
        },  # at least one of text / image: the stage says so (exit 2) before any work
        provides="codes",  # triple tokens; also v_i (embeddings.parquet)
        parts={"id": "codes", "text": "codes", "image": "codes"},
        lightning=True,
    ),
):
    register(_kind)
