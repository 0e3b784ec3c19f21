"""The chain as a graph of stage instances: discovery, validation, run order.

A chain config declares named instances at its top level, each ``name: {kind: K, inputs: {slot:
source}, <the kind's section>}`` (see :mod:`mscg_lightning.registry`). Parsing is two passes:

1. :func:`discover` reads the raw YAML of the ``--config`` files to learn which instances exist and
   of which kind, so that
2. :func:`mscg_lightning.config.chain_parser` can build one LightningCLI-style parser with a
   section per instance (``--tiger.trainer.max_epochs 3`` overrides one instance).

:func:`build_graph` then checks the parsed config as a whole (unknown kinds, inputs that no
instance produces, inputs of the wrong payload type, cycles, values out of range) before
anything runs or is written, and orders the instances topologically (ties in config order).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace

from mscg_lightning.errors import MscgError
from mscg_lightning.registry import StageKind, get, kinds

#: Top-level keys of a chain config that are settings, not stage instances.
SETTINGS = ("name", "run_dir", "data_root", "seed", "reference")
#: Instance names that imply their kind (the names of the one-model configs).
IMPLIED_KINDS = {"rq_text": "rq", "rq_image": "rq", "rq_collab": "rq"}
#: Integer options that must be at least 1 wherever they appear in a section.
POSITIVE_KEYS = (
    "batch_size",
    "eval_batch_size",
    "levels",
    "rq_levels",
    "codebook_size",
    "rq_codebook_size",
    "num_beams",
    "top_k",
    "max_history",
    "max_len",
)


def split_source(source: str) -> tuple[str, str | None]:
    """``rq_text`` -> (rq_text, None); ``prepare:codes_lemb`` -> (prepare, codes_lemb)."""
    name, _, part = str(source).partition(":")
    return name, part or None


def merge_dicts(base: dict, over: dict) -> dict:
    """``base`` with ``over`` merged in, nested dictionaries key by key (neither is changed)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def config_files(args: Sequence[str]) -> list[str]:
    """The ``--config`` files named in ``args``, in order."""
    files = []
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def load_raw(files: Iterable[str]) -> dict[str, Any]:
    """The ``--config`` files merged in order (nested mappings merge, other values replace)."""
    raw: dict[str, Any] = {}
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise MscgError(f"the config file {path} does not exist.")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise MscgError(f"{path} is not valid YAML ({err}).".replace("\n", " ")) from err
        if not isinstance(data, dict):
            raise MscgError(f"{path} is not a mapping of settings and stage instances.")
        raw = merge_dicts(raw, data)
    return raw


def kind_of(name: str, section: Any) -> str:
    """The kind of instance ``name``: its ``kind`` key, else implied by its name."""
    kind = section.get("kind") if isinstance(section, dict) else None
    if kind:
        return str(kind)
    if name in kinds():
        return name
    if name in IMPLIED_KINDS:
        return IMPLIED_KINDS[name]
    raise MscgError(
        f"the config's '{name}' is a stage instance without a kind: set {name}.kind to one of "
        f"{', '.join(kinds())}."
    )


def discover(raw: dict[str, Any]) -> dict[str, str]:
    """``{instance: kind}`` of a raw (merged) config, in config order; unknown kinds refused."""
    found = {}
    for name, section in raw.items():
        if name in SETTINGS or not isinstance(section, dict):
            continue
        kind = kind_of(name, section)
        if kind not in kinds():
            raise MscgError(
                f"{name}.kind '{kind}' is not a stage kind; the kinds are: {', '.join(kinds())}."
            )
        found[name] = kind
    return found


# ---------------------------------------------------------------------------------------------
# The parsed graph


@dataclass
class Instance:
    """One stage instance of the parsed config."""

    name: str
    kind: StageKind
    section: Any
    inputs: dict[str, str] = field(default_factory=dict)  # slot -> source, in order

    @property
    def upstream(self) -> list[str]:
        """Names of the instances it reads, in slot order, without repeats."""
        return list(dict.fromkeys(split_source(s)[0] for s in self.inputs.values()))


@dataclass
class Graph:
    """The enabled instances of a chain config in run order (topological, ties in config order)."""

    instances: dict[str, Instance]
    disabled: dict[str, str] = field(default_factory=dict)  # name -> kind
    reference: str | None = None

    def order(self) -> list[str]:
        return list(self.instances)

    def closure(self, names: Iterable[str]) -> list[str]:
        """``names`` and everything they read, in run order."""
        todo, seen = list(names), set()
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(self.instances[name].upstream)
        return [n for n in self.instances if n in seen]

    def model_rows(self) -> list[str]:
        """Instances whose artifact is a row of the comparison table (sasrec, genrec), in order."""
        return [n for n, inst in self.instances.items() if inst.kind.model_row]


def section_of(config: Any, name: str) -> Any:
    return config.get(name) if isinstance(config, Namespace) else getattr(config, name, None)


def is_enabled(kind: StageKind, section: Any) -> bool:
    """A Lightning instance takes part when its ``model`` is configured (an overlay may name a
    trainer for an instance the dataset config does not have); every other one always."""
    if section is None:
        return False
    return not kind.lightning or section.get("model") is not None


def _inputs(name: str, kind: StageKind, section: Any) -> dict[str, str]:
    given = dict(section.get("inputs") or {})
    unknown = [slot for slot in given if slot not in kind.inputs]
    if unknown:
        slots = ", ".join(kind.inputs) or "none"
        raise MscgError(
            f"{name}.inputs names the input '{unknown[0]}', which stage kind '{kind.name}' does "
            f"not have (its inputs: {slots})."
        )
    inputs = {}
    for slot, spec in kind.inputs.items():
        source = given.get(slot, spec.default)
        if not source and not spec.required:
            continue
        if not source:
            raise MscgError(f"{name}.inputs.{slot} is not set: name the {spec.doc or slot}.")
        inputs[slot] = str(source)
    if kind.variadic_key:
        for slot, source in dict(section.get(kind.variadic_key) or {}).items():
            inputs[slot] = str(source)
    return inputs


def _accepts(inst: Instance, slot: str) -> tuple[str, ...]:
    if slot in inst.kind.inputs:
        return inst.kind.inputs[slot].accepts
    return inst.kind.variadic_accepts


def _where(inst: Instance, slot: str) -> str:
    if slot in inst.kind.inputs:
        return f"{inst.name}.inputs.{slot}"
    return f"{inst.name}.{inst.kind.variadic_key}.{slot}"


def _check_source(inst: Instance, slot: str, source: str, graph: Graph) -> None:
    producer, part = split_source(source)
    where = _where(inst, slot)
    if producer not in graph.instances:
        if producer in graph.disabled:
            raise MscgError(
                f"{where} reads '{source}', but instance '{producer}' has no model configured, "
                "so it does not run."
            )
        names = ", ".join(graph.instances) or "none"
        raise MscgError(
            f"{where} reads '{source}', which no stage instance of this config produces "
            f"(instances: {names})."
        )
    kind = graph.instances[producer].kind
    if part is None:
        payload = kind.provides
        if payload is None:
            raise MscgError(
                f"{where} reads '{source}', an instance of kind '{kind.name}' that is read by "
                f"part: name one of {', '.join(f'{producer}:{p}' for p in kind.parts)}."
            )
    else:
        payload = kind.part_type(part)
        if payload is None:
            parts = ", ".join(kind.parts) or "none"
            raise MscgError(
                f"{where} reads '{source}', but kind '{kind.name}' has no part '{part}' "
                f"(its parts: {parts})."
            )
    wanted = _accepts(inst, slot)
    if payload not in wanted:
        raise MscgError(
            f"{where} reads '{source}' ({payload} of kind '{kind.name}'), but it needs "
            f"{' or '.join(wanted)}."
        )


def _topological(instances: dict[str, Instance]) -> dict[str, Instance]:
    order: list[str] = []
    placed: set[str] = set()
    pending = list(instances)
    while pending:
        ready = [n for n in pending if all(u in placed for u in instances[n].upstream)]
        if not ready:
            raise MscgError(f"the stage instances {_cycle(instances, pending)} form a cycle.")
        first = ready[0]  # config order among the ready ones
        order.append(first)
        placed.add(first)
        pending.remove(first)
    return {n: instances[n] for n in order}


def _cycle(instances: dict[str, Instance], pending: list[str]) -> str:
    """A readable cycle among ``pending``: ``a -> b -> a``."""
    path, node = [], pending[0]
    while node not in path:
        path.append(node)
        node = next(u for u in instances[node].upstream if u in pending)
    loop = path[path.index(node) :] + [node]
    return " -> ".join(loop)


def _walk(value: Any, prefix: str) -> Iterable[tuple[str, Any]]:
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{prefix}.{key}")
    else:
        yield prefix, value


def _check_values(inst: Instance) -> None:
    for key, value in _walk(inst.section, inst.name):
        leaf = key.rsplit(".", 1)[-1]
        if leaf in POSITIVE_KEYS and isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise MscgError(f"{key} is {value}; it must be at least 1.")


def check_run_dir(run_dir: str | Path) -> None:
    """Refuse a run directory that is a file or lies under one."""
    path = Path(run_dir)
    for candidate in (path, *path.parents):
        if candidate.exists() and not candidate.is_dir():
            raise MscgError(
                f"run_dir {path} is not usable: {candidate} is a file, not a directory."
            )


def init_arg(section: Any, key: str) -> Any:
    """``model.init_args.<key>`` of a Lightning section, else the model class's default."""
    model = section.get("model") if section is not None else None
    if model is None:
        return None
    init_args = model.get("init_args") or {}
    if key in init_args:
        return init_args[key]
    class_path = model.get("class_path")
    if not class_path:
        return None
    try:
        module, _, cls = class_path.rpartition(".")
        param = inspect.signature(getattr(importlib.import_module(module), cls)).parameters
    except (ImportError, AttributeError, ValueError):
        return None
    default = param[key].default if key in param else None
    return None if default is inspect.Parameter.empty else default


def build_graph(config: Any, kinds_of: dict[str, str] | None = None) -> Graph:
    """The validated graph of a parsed chain config (every check, nothing run or written).

    ``kinds_of`` maps instance -> kind (from :func:`discover`); without it the kinds are read
    from the config's ``<instance>.kind``.
    """
    if kinds_of is None:
        kinds_of = {
            name: kind_of(name, _plain_dict(section))
            for name, section in vars(config).items()
            if name not in SETTINGS and isinstance(section, Namespace)
        }
    seed = config.get("seed") if isinstance(config, Namespace) else None
    if isinstance(seed, int) and seed < 0:
        raise MscgError(f"seed {seed} is negative; it must be 0 or more.")
    check_run_dir(config.run_dir)
    instances, disabled = {}, {}
    for name, kind_name in kinds_of.items():
        kind = get(kind_name)
        section = section_of(config, name)
        if not is_enabled(kind, section):
            disabled[name] = kind_name
            continue
        own_seed = section.get("seed") if isinstance(section, Namespace) else None
        if isinstance(own_seed, int) and own_seed < 0:
            raise MscgError(f"{name}.seed {own_seed} is negative; it must be 0 or more.")
        instances[name] = Instance(name, kind, section, _inputs(name, kind, section))
    if not instances:
        raise MscgError("the config declares no stage instance to run.")
    graph = Graph(instances, disabled, reference=config.get("reference"))
    for inst in instances.values():
        _check_values(inst)
        for slot, source in inst.inputs.items():
            _check_source(inst, slot, source, graph)
        if inst.kind.validate is not None:
            inst.kind.validate(inst.name, inst.section)
    graph.instances = _topological(instances)
    if graph.reference is not None and graph.reference not in graph.model_rows():
        rows = ", ".join(graph.model_rows()) or "none"
        raise MscgError(
            f"reference '{graph.reference}' is not a model instance of this config "
            f"(model instances: {rows})."
        )
    return graph


def _plain_dict(section: Any) -> Any:
    return section.as_dict() if isinstance(section, Namespace) else section
