"""The chain: up-to-date checks and the hand-off of artifact paths between stage instances.

A stage is a function ``run(ctx: StageContext) -> Manifest`` (registered with its kind in
:mod:`mscg_lightning.registry`) that reads its inputs from ``ctx.inputs`` and writes its artifact
into ``ctx.out_dir`` (a temporary directory that is renamed into ``<run_dir>/<instance>`` when
the function returns, and deleted when it raises). The run order is the graph's
(:mod:`mscg_lightning.graph`). A stage is up to date when its artifact's manifest has the same
config hash and the same input content hashes as the current run would give it; it is then
skipped.
"""

from __future__ import annotations

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
from mscg_lightning.graph import Graph, split_source

log = logging.getLogger("mscg")


def artifact_dir(run_dir: Path, instance: str) -> Path:
    """Where instance ``instance`` keeps its artifact: ``<run_dir>/<instance>`` (``prepared`` for
    the instance named ``prepare``)."""
    return Path(run_dir) / ("prepared" if instance == "prepare" else instance)


@dataclass
class Source:
    """A resolved input: the directory to read, or a column of the prepared items table."""

    spec: str
    instance: str
    part: str | None
    path: Path
    column: str | None = None


def resolve_source(run_dir: Path, spec: str) -> Source:
    """Resolve ``instance`` or ``instance:part`` against the finished artifacts in ``run_dir``.

    A part is a sub-directory artifact (``xmodal/text``) or, for a prepare artifact, a column of
    its items table (``prepare:codes_lemb``). The producer's manifest must list the part.
    """
    name, part = split_source(spec)
    path = artifact_dir(run_dir, name)
    manifest = Manifest.read(path)
    if part is None:
        return Source(spec, name, None, path)
    if (path / part).is_dir():
        if manifest.parts and part not in manifest.parts:
            raise MscgError(f"{path} does not record a part '{part}' in its manifest.")
        Manifest.read(path / part)
        return Source(spec, name, part, path / part)
    if "prepare" in (manifest.kind, manifest.stage):
        prefix, _, given = part.partition("_")
        listed = manifest.extra.get(
            {"codes": "given_codes", "emb": "given_embeddings"}.get(prefix, "")
        )
        if listed is None or given not in listed:
            have = [f"codes_{c}" for c in manifest.extra.get("given_codes", {})]
            have += [f"emb_{c}" for c in manifest.extra.get("given_embeddings", {})]
            raise MscgError(
                f"'{spec}': the prepared data {path} has no column '{part}' "
                f"(its given parts: {', '.join(have) or 'none'})."
            )
        return Source(spec, name, part, path, column=part)
    raise MscgError(f"'{spec}': {path} has no part '{part}'.")


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
    #: slot -> path of its artifact (or part directory), and upstream instance -> artifact dir
    inputs: dict[str, Path] = field(default_factory=dict)
    kind: str = ""
    #: slot -> source spec as configured (``rq_text``, ``prepare:codes_lemb``)
    sources: dict[str, str] = field(default_factory=dict)
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
        return section_as(self.section, cls)

    def part_dir(self, part: str) -> Path:
        """A new directory for part ``part`` of this stage's artifact (``<artifact>/<part>``).

        Write a finished artifact into it (its files and its own ``manifest.json``); the stage's
        manifest lists it in ``parts`` and readers address it as ``<instance>:<part>``.
        """
        if self.out_dir is None:
            raise RuntimeError("part_dir is only available on the rank that writes")
        path = self.out_dir / part
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def tensorboard_dir(self) -> Path:
        return self.run_dir / "tensorboard"

    @property
    def checkpoint_dir(self) -> Path:
        """Checkpoints for resuming this stage; keyed by config hash so a changed config starts anew."""
        return self.run_dir / "checkpoints" / f"{self.name}-{self.config_hash}"


def section_as(section: Any, cls: type) -> Any:
    """A parsed section (Namespace or dict) as an instance of the dataclass ``cls``."""
    if isinstance(section, cls):
        return section
    fields = getattr(cls, "__dataclass_fields__", None)
    values = _plain(section)
    if fields is not None:  # kind and inputs sit beside the section's own fields
        values = {k: v for k, v in values.items() if k in fields}
    return cls(**values)


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


def instance_seed(config: Namespace, name: str) -> int:
    """The instance's own ``seed`` when set, else the run's."""
    section = config.get(name) if isinstance(config, Namespace) else None
    own = section.get("seed") if isinstance(section, Namespace) else None
    return int(config.seed if own is None else own)


def config_hash_of(config: Namespace, name: str) -> str:
    """Hash of what determines an instance's result: its section (cosmetic keys dropped), its
    kind and the seed."""
    section = _plain(config.get(name) if isinstance(config, Namespace) else None)
    if isinstance(section, dict) and isinstance(section.get("trainer"), dict):
        section["trainer"] = {
            k: v for k, v in section["trainer"].items() if k not in _COSMETIC_TRAINER_KEYS
        }
    if isinstance(section, dict):
        section.pop("seed", None)  # in the key below; unset, hashes are those of earlier runs
    key = {"stage": name, "section": section, "seed": instance_seed(config, name)}
    if isinstance(section, dict) and isinstance(section.get("modalities"), dict):
        # the hash sorts keys, but the order of genrec's modalities is the order of the codes
        # inside every history item: another order is another model
        key["modality_order"] = list(section["modalities"])
    kind = section.get("kind", name) if isinstance(section, dict) else name
    if kind == "prepare" and isinstance(section, dict) and section.get("given_embeddings"):
        # given embedding files replaced in place must rerun prepare (raw data is not hashed)
        from mscg_lightning.data import given_embeddings
        from mscg_lightning.data.prepare_config import PrepareConfig, resolve_folder

        folder = resolve_folder(section_as(section, PrepareConfig), Path(config.data_root))
        key["given_files"] = given_embeddings.fingerprints(section["given_embeddings"], folder)
    return stable_hash(key)


def stage_status(
    config: Namespace, graph: Graph, name: str, run_dir: Path
) -> tuple[bool, StageContext]:
    """(up to date?, context) for instance ``name`` given the artifacts now in ``run_dir``."""
    inst = graph.instances[name]
    inputs: dict[str, Path] = {}
    input_hashes = {}
    for dep in inst.upstream:
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
    for slot, spec in inst.inputs.items():
        source = resolve_source(run_dir, spec)
        if source.column is None:
            inputs[slot] = source.path
    ctx = StageContext(
        name=name,
        section=inst.section,
        config=config,
        run_dir=run_dir,
        data_root=Path(config.data_root),
        seed=instance_seed(config, name),
        inputs=inputs,
        kind=inst.kind.name,
        sources=dict(inst.inputs),
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
    if fresh and inst.kind.name == "prepare":  # raw files edited in place (data/fingerprints.py)
        from mscg_lightning.data.fingerprints import unchanged

        fresh = unchanged(target)
    return fresh, ctx


def run_chain(
    config: Namespace,
    graph: Graph | None = None,
    stages: Iterable[str] | None = None,
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, float]:
    """Run the graph's instances in order (only ``stages`` when given); returns wall seconds."""
    from mscg_lightning.graph import build_graph

    graph = graph if graph is not None else build_graph(config)
    run_dir = Path(config.run_dir)
    if not is_rank_zero():  # under DDP every rank runs the chain; one of them reports it

        def echo(_: str) -> None:
            pass

    wanted = list(stages) if stages else graph.order()
    for name in wanted:
        if name not in graph.instances:
            if name in graph.disabled:
                raise MscgError(f"stage '{name}' has no model configured, so it cannot run.")
            raise MscgError(
                f"unknown stage '{name}'; the stage instances are: {', '.join(graph.order())}."
            )
    from mscg_lightning.data.validate import check_prepare_section

    for name in graph.order():  # e.g. given_codes on a layout that reads none: fail first
        if graph.instances[name].kind.name == "prepare":
            check_prepare_section(graph.instances[name].section)
    timings: dict[str, float] = {}
    for name in [s for s in graph.order() if s in wanted]:
        fresh, ctx = stage_status(config, graph, name, run_dir)
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


def _parts_of(directory: Path) -> dict[str, str]:
    """Part sub-directories of a finished artifact: ``{part: kind of payload}``."""
    parts = {}
    for sub in sorted(p for p in directory.iterdir() if (p / "manifest.json").is_file()):
        files = {f.name for f in sub.iterdir()}
        parts[sub.name] = (
            "codes" if "codes.parquet" in files else "embeddings" if "embeddings.parquet" in files
            else "artifact"
        )  # fmt: skip
    return parts


def run_stage(ctx: StageContext) -> Manifest:
    """Run one stage into a temporary directory that replaces ``<run_dir>/<instance>`` on success.

    Every rank runs the stage (Lightning stages need all ranks); only rank 0 writes the artifact.
    The manifest is completed with the instance name, its kind and its parts.
    """
    from mscg_lightning.registry import get

    kind = get(ctx.kind or ctx.name)
    ctx.kind = kind.name
    runner = kind.runner()
    target = artifact_dir(ctx.run_dir, ctx.name)
    if is_rank_zero():
        with atomic_artifact(target) as tmp:
            ctx.out_dir = tmp
            manifest = runner(ctx)
            manifest = Manifest.read(tmp)
            manifest.stage, manifest.kind = ctx.name, kind.name
            manifest.parts = _parts_of(tmp)
            if kind.name == "prepare":
                manifest.parts.update(
                    {f"codes_{c}": "codes" for c in manifest.extra.get("given_codes", {})}
                )
                manifest.parts.update(
                    {f"emb_{c}": "embeddings" for c in manifest.extra.get("given_embeddings", {})}
                )
            manifest.write(tmp)
    else:
        ctx.out_dir = None
        manifest = runner(ctx)
    barrier()
    if is_rank_zero():
        # The artifact holds what later stages need; the checkpoints only served resuming.
        shutil.rmtree(ctx.checkpoint_dir, ignore_errors=True)
    return manifest
