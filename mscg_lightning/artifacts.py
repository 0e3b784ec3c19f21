"""Artifact contract: manifests, atomic directory writes, validated readers.

An artifact is a directory holding ``manifest.json`` and the stage's files. It is written into a
temporary sibling directory and renamed into place, so a killed run never leaves a half artifact
that the next stage would read. Under DDP only global rank 0 writes; other ranks wait.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mscg_lightning.errors import MscgError

MANIFEST = "manifest.json"


def package_version() -> str:
    """The installed package version (``0+unknown`` when run from a bare checkout)."""
    try:
        from importlib.metadata import version

        return version("mscg_lightning")
    except Exception:  # noqa: BLE001 - not installed: still usable from a checkout
        return "0+unknown"


def stable_hash(obj: Any) -> str:
    """SHA-256 (first 16 hex chars) of a JSON-serialisable object with sorted keys."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Manifest:
    """What an artifact is, what made it and from what.

    ``stage`` is the instance that made it and ``kind`` its stage kind; ``inputs`` maps an input
    artifact's name to its ``content_hash``; a stage whose config hash and input hashes are
    unchanged is up to date. ``parts`` lists the named outputs (``{part: payload}``): part
    sub-directories, each a finished artifact with its own manifest, addressed as
    ``<instance>:<part>``, or (prepare) columns of the items table.
    """

    stage: str
    config_hash: str
    inputs: dict[str, str] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    kind: str = ""
    parts: dict[str, str] = field(default_factory=dict)
    package_version: str = field(default_factory=package_version)
    created_at: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )

    @property
    def content_hash(self) -> str:
        """Identity of the artifact's content: everything but the creation time and version."""
        return stable_hash(
            {
                "stage": self.stage,
                "config_hash": self.config_hash,
                "inputs": self.inputs,
                "rows": self.rows,
                "extra": self.extra,
                "kind": self.kind,
                "parts": self.parts,
            }
        )

    def write(self, directory: str | Path) -> None:
        data = asdict(self)
        data["content_hash"] = self.content_hash
        Path(directory, MANIFEST).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, directory: str | Path) -> Manifest:
        path = Path(directory, MANIFEST)
        if not path.is_file():
            raise MscgError(f"{path} does not exist: {directory} is not a finished artifact.")
        try:
            data = json.loads(path.read_text())
            data.pop("content_hash", None)
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as err:
            raise MscgError(f"{path} is not a valid manifest ({err}).") from err


def read_manifest(directory: str | Path, stage: str | None = None) -> Manifest:
    """Read an artifact's manifest, checking that it was made by an instance or a kind ``stage``."""
    manifest = Manifest.read(directory)
    if stage is not None and stage not in (manifest.stage, manifest.kind):
        raise MscgError(
            f"{directory} was made by stage '{manifest.stage}', but stage '{stage}' was expected."
        )
    return manifest


def is_distributed() -> bool:
    """True when a default process group is initialised (DDP), False in a single process."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_rank_zero() -> bool:
    """Global rank 0, also in a process that Lightning launched before the process group exists."""
    if is_distributed():
        return torch.distributed.get_rank() == 0
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


@contextlib.contextmanager
def atomic_artifact(target: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``target`` in one rename.

    On any exception the temporary directory is removed and ``target`` is left as it was. A
    ``target`` that exists but is not an artifact (no manifest, foreign files) is never replaced:
    nothing the user put there is overwritten silently.
    """
    target = Path(target)
    if target.exists():
        if not target.is_dir() or (any(target.iterdir()) and not (target / MANIFEST).is_file()):
            raise MscgError(
                f"{target} exists and is not an mscg artifact; "
                "move it away or choose another run directory."
            )
        if not overwrite:
            raise MscgError(f"{target} exists already; pass --force to redo it.")
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MscgError(f"cannot create the directory {parent}: {err.strerror}.") from err
    if not os.access(parent, os.W_OK):
        raise MscgError(f"the directory {parent} is not writable.")
    remove_leftovers(target)
    tmp = parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if not (tmp / MANIFEST).is_file():
            raise RuntimeError(f"stage wrote no {MANIFEST} into {tmp}")
        old = None
        if target.exists():
            old = parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            target.rename(old)
        tmp.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_leftovers(target: str | Path) -> list[Path]:
    """Remove ``.<name>.tmp-*`` / ``.<name>.old-*`` siblings of ``target`` that a killed run left.

    Only the writer of ``target`` calls this (rank 0, just before it writes the artifact anew),
    so nothing else is writing into these directories. Returns the removed paths.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    removed = []
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for path in sorted(target.parent.glob(pattern)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# ----------------------------------------------------------------------------------------------
# Parquet helpers


def write_shards(table: pa.Table, directory: str | Path, rows_per_shard: int = 1_000_000) -> int:
    """Write ``table`` as ``part-00000.parquet``... shards into ``directory``; returns shard count."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows_per_shard = max(1, int(rows_per_shard))
    n_shards = max(1, -(-table.num_rows // rows_per_shard))
    for i in range(n_shards):
        chunk = table.slice(i * rows_per_shard, rows_per_shard)
        pq.write_table(chunk, directory / f"part-{i:05d}.parquet")
    return n_shards


def shard_paths(directory: str | Path) -> list[Path]:
    """The sorted Parquet shards of a table directory (or the single file given)."""
    directory = Path(directory)
    if directory.is_file():
        return [directory]
    paths = sorted(directory.glob("*.parquet"))
    if not paths:
        raise MscgError(f"{directory} holds no Parquet shards.")
    return paths


def read_table(directory: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Read all shards of a table directory (only ``columns`` when given) as one Arrow table."""
    tables = []
    for path in shard_paths(directory):
        try:
            tables.append(pq.read_table(path, columns=columns))
        except (pa.ArrowInvalid, OSError) as err:
            raise MscgError(f"{path} is not a readable Parquet file ({err}).") from err
        except KeyError as err:
            raise MscgError(f"{path} has no column {err}.") from err
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _require_columns(table: pa.Table, path: Path, columns: Mapping[str, str]) -> None:
    for name, kind in columns.items():
        if name not in table.column_names:
            raise MscgError(f"{path} has no column '{name}' ({kind}).")


# ----------------------------------------------------------------------------------------------
# Embeddings and codes: the two payloads that cross stage boundaries


@dataclass
class EmbeddingTable:
    """Item embeddings of one modality: ``item_idx`` [N] int64, ``embeddings`` [N, D] float32."""

    item_idx: torch.Tensor
    embeddings: torch.Tensor
    manifest: Manifest | None = None


@dataclass
class CodesTable:
    """Item codes of one modality: ``item_idx`` [N] int64, ``codes`` [N, L+1] int64.

    The last column is the collision level; every row is unique.
    """

    item_idx: torch.Tensor
    codes: torch.Tensor
    modality: str
    codebook_size: int
    collision_size: int
    manifest: Manifest | None = None

    @property
    def levels(self) -> int:
        """L, the number of semantic levels (the collision level excluded)."""
        return self.codes.shape[1] - 1


def _write_item_rows(
    path: Path, column: str, item_idx: np.ndarray, rows: np.ndarray, dtype: type[np.generic]
) -> None:
    """Write a parquet table of ``item_idx`` int32 and ``column``: row i of ``rows`` [N, D] as a
    fixed-size list of ``dtype``."""
    rows = np.ascontiguousarray(rows, dtype=dtype)
    flat = pa.array(rows.reshape(-1), type=pa.from_numpy_dtype(dtype))
    values = pa.FixedSizeListArray.from_arrays(flat, rows.shape[1])
    table = pa.table({"item_idx": pa.array(item_idx, type=pa.int32()), column: values})
    pq.write_table(table, path)


def _read_item_rows(
    path: Path, column: str, kind: str, dtype: type[np.generic], num_items: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """``item_idx`` [N] int64 and the fixed-size list ``column`` (``kind``, for the message of a
    missing column) as [N, D] ``dtype`` rows, read from ``path``; the ids are checked."""
    table = read_table(path)
    _require_columns(table, path, {"item_idx": "int32 item ids", column: kind})
    item_idx = table.column("item_idx").to_numpy().astype(np.int64)
    values = table.column(column).combine_chunks()
    if not pa.types.is_fixed_size_list(values.type):
        raise MscgError(f"{path} column '{column}' is {values.type}, not a fixed-size list.")
    rows = values.flatten().to_numpy(zero_copy_only=False).astype(dtype)
    rows = rows.reshape(len(item_idx), values.type.list_size)
    _check_ids(item_idx, path, num_items)
    return item_idx, rows


def write_embeddings(directory: str | Path, item_idx: np.ndarray, embeddings: np.ndarray) -> None:
    """Write ``embeddings.parquet`` (``item_idx`` int32, ``embedding`` fixed-size float32 list)."""
    _write_item_rows(
        Path(directory) / "embeddings.parquet", "embedding", item_idx, embeddings, np.float32
    )


def read_embeddings(directory: str | Path, num_items: int | None = None) -> EmbeddingTable:
    """Read and validate an embeddings artifact: ids in range and unique, values finite."""
    path = Path(directory) / "embeddings.parquet"
    manifest = Manifest.read(directory)
    item_idx, embeddings = _read_item_rows(path, "embedding", "float32 list", np.float32, num_items)
    bad = ~np.isfinite(embeddings).all(axis=1)
    if bad.any():
        raise MscgError(
            f"{path} has non-finite values (NaN or inf) in the embedding of item_idx "
            f"{int(item_idx[bad][0])} ({int(bad.sum())} rows in all)."
        )
    return EmbeddingTable(torch.from_numpy(item_idx), torch.from_numpy(embeddings), manifest)


def write_codes(directory: str | Path, item_idx: np.ndarray, codes: np.ndarray) -> None:
    """Write ``codes.parquet`` (``item_idx`` int32, ``codes`` fixed-size int32 list of L+1)."""
    _write_item_rows(Path(directory) / "codes.parquet", "codes", item_idx, codes, np.int32)


def read_codes(directory: str | Path, num_items: int | None = None) -> CodesTable:
    """Read and validate a codes artifact: ids in range and unique, codes in range, rows unique."""
    path = Path(directory) / "codes.parquet"
    manifest = Manifest.read(directory)
    item_idx, codes = _read_item_rows(path, "codes", "int32 list", np.int64, num_items)
    extra = manifest.extra
    for key in ("modality", "codebook_size", "collision_size"):
        if key not in extra:
            raise MscgError(f"{Path(directory, MANIFEST)} lacks extra.{key} of a codes artifact.")
    limits = np.array([extra["codebook_size"]] * (codes.shape[1] - 1) + [extra["collision_size"]])
    if len(codes) and ((codes < 0) | (codes >= limits)).any():
        row = int(np.nonzero(((codes < 0) | (codes >= limits)).any(axis=1))[0][0])
        raise MscgError(
            f"{path} has codes {codes[row].tolist()} for item_idx {int(item_idx[row])} outside "
            f"the codebook sizes {limits.tolist()}."
        )
    if len(np.unique(codes, axis=0)) != len(codes):
        raise MscgError(f"{path} has duplicate code tuples: the collision level is missing.")
    return CodesTable(
        torch.from_numpy(item_idx),
        torch.from_numpy(codes),
        modality=str(extra["modality"]),
        codebook_size=int(extra["codebook_size"]),
        collision_size=int(extra["collision_size"]),
        manifest=manifest,
    )


def _check_ids(item_idx: np.ndarray, path: Path, num_items: int | None) -> None:
    if len(np.unique(item_idx)) != len(item_idx):
        raise MscgError(f"{path} has duplicate item_idx values.")
    if (
        num_items is not None
        and len(item_idx)
        and (item_idx.min() < 0 or item_idx.max() >= num_items)
    ):
        bad = item_idx[(item_idx < 0) | (item_idx >= num_items)][0]
        raise MscgError(
            f"{path} has item_idx {int(bad)}, which is not in the catalogue of {num_items} items."
        )


def write_json(path: str | Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")
