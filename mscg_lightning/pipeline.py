"""The chain: stage order, up-to-date checks, and the hand-off of artifact paths between stages.

A stage is a function ``run(ctx: StageContext) -> Manifest`` that reads its inputs from
``ctx.inputs`` and writes its artifact into ``ctx.out_dir`` (a temporary directory that is
renamed into ``<run_dir>/<stage>`` when the function returns, and deleted when it raises).
A stage is up to date when its artifact's manifest has the same config hash and the same input
content hashes as the current run would give it; it is then skipped.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from mscg_lightning.artifacts import (
    Manifest,
    atomic_artifact,
    barrier,
    is_rank_zero,
    stable_hash,
)
from mscg_lightning.errors import MscgError

log = logging.getLogger("mscg")

#: Every stage of the chain, in the order ``mscg fit`` runs them.
CHAIN_ORDER = (
    "prepare",
    "sasrec",
    "text_embed",
    "image_embed",
    "dino_rq",
    "rq_text",
    "rq_image",
    "rq_collab",
    "genrec",
)
#: Stages configured as LightningCLI runs (``model`` / ``data`` / ``trainer`` sections).
LIGHTNING_STAGES = ("sasrec", "dino_rq", "rq_text", "rq_image", "rq_collab", "genrec")
RQ_STAGES = ("rq_text", "rq_image", "rq_collab")

#: Where each stage's ``run`` function lives (imported only when the stage runs).
RUNNERS = {
    "prepare": "mscg_lightning.data.stage:run",
    "sasrec": "mscg_lightning.stages.sasrec.stage:run",
    "text_embed": "mscg_lightning.stages.text.stage:run_text",
    "image_embed": "mscg_lightning.stages.text.stage:run_image",
    "dino_rq": "mscg_lightning.stages.dino_rq.stage:run",
    "rq_text": "mscg_lightning.stages.rq.stage:run",
    "rq_image": "mscg_lightning.stages.rq.stage:run",
    "rq_collab": "mscg_lightning.stages.rq.stage:run",
    "genrec": "mscg_lightning.stages.genrec.stage:run",
}

#: Directory of a stage's artifact under the run directory (the stage name, but for prepare).
ARTIFACT_DIRS = {"prepare": "prepared"}


def artifact_dir(run_dir: Path, stage: str) -> Path:
    """Where stage ``stage`` keeps its artifact: ``<run_dir>/prepared``, ``<run_dir>/sasrec``..."""
    return Path(run_dir) / ARTIFACT_DIRS.get(stage, stage)


# Keys of a stage section that change how a run looks, not what it computes.
_COSMETIC_TRAINER_KEYS = (
    "enable_progress_bar",
    "enable_model_summary",
    "logger",
    "log_every_n_steps",
)


@dataclass
class StageContext:
    """Everything a stage needs: its config section, where its inputs are, where to write."""

    name: str
    section: Any
    config: Namespace
    run_dir: Path
    data_root: Path
    seed: int
    inputs: dict[str, Path] = field(default_factory=dict)
    config_hash: str = ""
    input_hashes: dict[str, str] = field(default_factory=dict)
    out_dir: Path | None = None

    def manifest(
        self, rows: dict[str, int] | None = None, extra: dict[str, Any] | None = None
    ) -> Manifest:
        """A manifest for this stage's artifact, written into ``out_dir``."""
        manifest = Manifest(
            stage=self.name,
            config_hash=self.config_hash,
            inputs=dict(self.input_hashes),
            rows=dict(rows or {}),
            extra=dict(extra or {}),
        )
        if self.out_dir is not None:
            manifest.write(self.out_dir)
        return manifest

    def section_as(self, cls: type) -> Any:
        """The section as an instance of the dataclass ``cls`` (jsonargparse parses to Namespace)."""
        if isinstance(self.section, cls):
            return self.section
        return cls(**_plain(self.section))

    @property
    def tensorboard_dir(self) -> Path:
        return self.run_dir / "tensorboard"

    @property
    def checkpoint_dir(self) -> Path:
        """Checkpoints for resuming this stage; keyed by config hash so a changed config starts anew."""
        return self.run_dir / "checkpoints" / f"{self.name}-{self.config_hash}"


def section_of(config: Namespace, name: str) -> Any:
    return config.get(name) if isinstance(config, Namespace) else getattr(config, name, None)


def is_enabled(config: Namespace, name: str) -> bool:
    """A stage is part of the chain when its section is configured (a model, for Lightning ones)."""
    section = section_of(config, name)
    if section is None:
        return False
    if name in LIGHTNING_STAGES:
        return section.get("model") is not None
    if isinstance(section, Namespace) and "enabled" in section:
        return bool(section.enabled)
    return True


def source_artifact(source: str) -> str:
    """The artifact name of a source spec: ``rq_text`` or ``prepare:codes_lemb`` -> ``prepare``."""
    return source.split(":", 1)[0]


def inputs_of(config: Namespace, name: str) -> list[str]:
    """Names of the artifacts stage ``name`` reads."""
    if name == "prepare":
        return []
    section = section_of(config, name)
    if name in RQ_STAGES:
        return sorted({"prepare", source_artifact(section.input)})
    if name == "genrec":
        sources = section.get("modalities") or {}
        return sorted({"prepare", *(source_artifact(s) for s in sources.values())})
    return ["prepare"]


def _plain(value: Any) -> Any:
    """A Namespace tree as plain dicts/lists (for hashing and saving)."""
    if isinstance(value, Namespace):
        return {k: _plain(v) for k, v in vars(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(getattr(value, k)) for k in value.__dataclass_fields__}
    if isinstance(value, Path):
        return str(value)
    return value


def config_hash_of(config: Namespace, name: str) -> str:
    """Hash of what determines a stage's result: its section (cosmetic keys dropped) and the seed."""
    section = _plain(section_of(config, name))
    if isinstance(section, dict) and isinstance(section.get("trainer"), dict):
        section["trainer"] = {
            k: v for k, v in section["trainer"].items() if k not in _COSMETIC_TRAINER_KEYS
        }
    key = {"stage": name, "section": section, "seed": config.seed}
    if isinstance(section, dict) and isinstance(section.get("modalities"), dict):
        # the hash sorts keys, but the order of genrec's modalities is the order of the codes
        # inside every history item: another order is another model
        key["modality_order"] = list(section["modalities"])
    if name == "prepare" and isinstance(section, dict) and section.get("given_embeddings"):
        # given embedding files replaced in place must rerun prepare (raw data is not hashed)
        from mscg_lightning.data import given_embeddings
        from mscg_lightning.data.prepare import PrepareConfig, resolve_folder

        folder = resolve_folder(PrepareConfig(**section), Path(config.data_root))
        key["given_files"] = given_embeddings.fingerprints(section["given_embeddings"], folder)
    return stable_hash(key)


def _runner(name: str) -> Callable[[StageContext], Manifest]:
    module_name, func = RUNNERS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise MscgError(f"stage '{name}' is not available in this version ({err}).") from err
    return getattr(module, func)


def stage_status(config: Namespace, name: str, run_dir: Path) -> tuple[bool, StageContext]:
    """(up to date?, context) for stage ``name`` given the artifacts now in ``run_dir``."""
    inputs = {}
    input_hashes = {}
    for dep in inputs_of(config, name):
        path = artifact_dir(run_dir, dep)
        try:
            manifest = Manifest.read(path)
        except MscgError as err:
            raise MscgError(
                f"stage '{name}' needs the artifact {path}, which does not exist yet: "
                f"run stage '{dep}' first."
            ) from err
        inputs[dep] = path
        input_hashes[dep] = manifest.content_hash
    ctx = StageContext(
        name=name,
        section=section_of(config, name),
        config=config,
        run_dir=run_dir,
        data_root=Path(config.data_root),
        seed=int(config.seed),
        inputs=inputs,
        config_hash=config_hash_of(config, name),
        input_hashes=input_hashes,
    )
    target = artifact_dir(run_dir, name)
    if not (target / "manifest.json").is_file():
        return False, ctx
    try:
        current = Manifest.read(target)
    except MscgError:
        return False, ctx
    fresh = current.config_hash == ctx.config_hash and current.inputs == ctx.input_hashes
    if fresh and name == "prepare":  # raw files edited in place (data/fingerprints.py)
        from mscg_lightning.data.fingerprints import unchanged

        fresh = unchanged(target)
    return fresh, ctx


def run_chain(
    config: Namespace,
    stages: Iterable[str] | None = None,
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, float]:
    """Run the enabled stages in chain order (only ``stages`` when given); returns wall seconds."""
    run_dir = Path(config.run_dir)
    if not is_rank_zero():  # under DDP every rank runs the chain; one of them reports it

        def echo(_: str) -> None:
            pass

    wanted = list(stages) if stages else [s for s in CHAIN_ORDER if is_enabled(config, s)]
    for name in wanted:
        if name not in CHAIN_ORDER:
            raise MscgError(f"unknown stage '{name}'; the stages are: {', '.join(CHAIN_ORDER)}.")
        if not is_enabled(config, name):
            raise MscgError(f"stage '{name}' has no section in the config, so it cannot run.")
    from mscg_lightning.data.validate import check_prepare_section

    check_prepare_section(config)  # e.g. given_codes on a layout that reads none: fail first
    timings: dict[str, float] = {}
    for name in [s for s in CHAIN_ORDER if s in wanted]:
        fresh, ctx = stage_status(config, name, run_dir)
        if fresh and not force:
            echo(f"[mscg] {name}: up to date ({artifact_dir(run_dir, name)})")
            timings[name] = 0.0
            continue
        echo(f"[mscg] {name}: running")
        start = time.perf_counter()
        run_stage(ctx)
        timings[name] = time.perf_counter() - start
        echo(f"[mscg] {name}: done in {timings[name]:.1f} s -> {artifact_dir(run_dir, name)}")
    return timings


def run_stage(ctx: StageContext) -> Manifest:
    """Run one stage into a temporary directory that replaces ``<run_dir>/<stage>`` on success.

    Every rank runs the stage (Lightning stages need all ranks); only rank 0 writes the artifact.
    """
    runner = _runner(ctx.name)
    target = artifact_dir(ctx.run_dir, ctx.name)
    if is_rank_zero():
        with atomic_artifact(target) as tmp:
            ctx.out_dir = tmp
            manifest = runner(ctx)
    else:
        ctx.out_dir = None
        manifest = runner(ctx)
    barrier()
    if is_rank_zero():
        # The artifact holds what later stages need; the checkpoints only served resuming.
        shutil.rmtree(ctx.checkpoint_dir, ignore_errors=True)
    return manifest
