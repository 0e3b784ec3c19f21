"""Fingerprints of the raw files ``prepare`` read, so that data edited in place reruns the chain.

After ``prepare`` writes its artifact, :func:`attach` records in ``prepared/raw_files.json``
every raw file it read (the layout's source files, given embedding and code files, the item
images) with its size, mtime_ns and a streamed blake2b content hash, plus a listing of the
folders those files lie in (a file added to a folder that the layout globs, such as a new
``<dataset>.index_<name>.json``, changes what prepare would read). One digest of the contents
(file paths relative to the dataset folder) goes into the manifest's ``extra.raw_files``, so a
changed input also changes the prepared artifact's content hash and every later stage reruns.

:func:`unchanged` is the up-to-date check: a file whose size and mtime are as recorded is taken
as unchanged (the fast path: one ``stat`` per file); one whose size or mtime differ is hashed
again, and only a different content makes ``prepare`` stale (``touch`` alone reruns nothing).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow.parquet as pq

from mscg_lightning.artifacts import Manifest, is_rank_zero, shard_paths, stable_hash

RECORD = "raw_files.json"


def content_hash(path: Path) -> str:
    """blake2b-128 of the bytes of ``path``, streamed in 8 MiB blocks (raw files are large)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 23):
            digest.update(block)
    return digest.hexdigest()


def listing(folder: Path) -> list[str]:
    """Sorted names of the files in ``folder`` (hidden ones and folders excluded: a run directory
    kept inside the data folder must not make prepare stale); [] when it is absent."""
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_file())
    except OSError:
        return []


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path.resolve())


def fingerprint(files: list[Path], folder: Path) -> dict:
    """The record of ``files`` (read from the dataset ``folder``): see the module docstring."""
    entries: dict[str, list] = {}
    for path in files:
        path = Path(path).resolve()
        if str(path) in entries or not path.is_file():
            continue
        st = path.stat()
        entries[str(path)] = [st.st_size, st.st_mtime_ns, content_hash(path)]
    folders = sorted({str(Path(p).parent) for p in entries})
    return {
        "folder": str(folder.resolve()),
        "files": entries,
        "listings": {d: listing(Path(d)) for d in folders},
    }


def digest_of(record: dict) -> str:
    """One hash of the contents (paths relative to the dataset folder: moving it changes none)."""
    folder = Path(record["folder"])
    contents = sorted((_relative(Path(p), folder), e[2]) for p, e in record["files"].items())
    names = sorted((_relative(Path(d), folder), n) for d, n in record["listings"].items())
    return stable_hash({"contents": contents, "listings": names})


def files_read(out_dir: Path) -> list[Path]:
    """The raw files a finished ``prepare`` read: stats.json's source files and item images."""
    stats = json.loads((out_dir / "stats.json").read_text())
    files = [Path(p) for p in stats.get("source_files", [])]  # given embedding files included
    items = out_dir / "items"
    for shard in shard_paths(items) if items.exists() else []:
        if "image_path" in pq.read_schema(shard).names:
            column = pq.read_table(shard, columns=["image_path"]).column("image_path")
            files += [Path(p) for p in column.drop_null().to_pylist()]
    return files


def attach(
    manifest: Manifest, out_dir: Path, folder: Path, extra_files: list[Path] | None = None
) -> Manifest:
    """Write ``raw_files.json`` into the fresh prepared artifact ``out_dir`` and add the digest
    of its contents to ``manifest.extra["raw_files"]`` (the manifest is written again).

    ``extra_files``: files prepare read that stats.json does not list (given code files of the
    P5 layout, the split files that validate.py cross-checks).
    """
    record = fingerprint(files_read(out_dir) + list(extra_files or []), folder)
    (out_dir / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    manifest.extra["raw_files"] = digest_of(record)
    manifest.write(out_dir)
    return manifest


def stale_reason(artifact: Path) -> str | None:
    """Why the raw inputs of the prepared ``artifact`` differ from what it was made from; None
    when they are the same. Files only touched (same content) are re-recorded (best effort)."""
    path = artifact / RECORD
    try:
        record = json.loads(path.read_text())
        files: dict[str, list] = record["files"]
        listings: dict[str, list[str]] = record["listings"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{path} is missing or unreadable, so its raw input files cannot be checked"
    touched = False
    for name, (size, mtime_ns, digest) in sorted(files.items()):
        try:
            st = os.stat(name)
        except OSError:
            return f"the input file {name} is gone"
        if (st.st_size, st.st_mtime_ns) == (size, mtime_ns):
            continue
        try:
            now = content_hash(Path(name))
        except OSError:
            return f"the input file {name} cannot be read"
        if now != digest:
            return f"the input file {name} changed"
        files[name] = [st.st_size, st.st_mtime_ns, digest]
        touched = True
    for folder, names in sorted(listings.items()):
        now_names = listing(Path(folder))
        if now_names != names:
            added = sorted(set(now_names) - set(names))
            removed = sorted(set(names) - set(now_names))
            what = f"added {added[0]!r}" if added else f"removed {removed[0]!r}"
            return f"the input folder {folder} changed ({what})"
    if touched and is_rank_zero():  # same content, new mtime: the next check is a stat again
        tmp = path.with_name(f".{RECORD}.tmp")
        try:  # atomic: other DDP ranks may be reading the record right now
            tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only run directory: hash the touched files again next time
    return None


def unchanged(artifact: Path, echo: bool = True) -> bool:
    """True when the prepared ``artifact``'s raw input files are as recorded (the pipeline's
    up-to-date check of ``prepare``); otherwise says why on stdout (rank 0) and returns False."""
    reason = stale_reason(Path(artifact))
    if reason is None:
        return True
    if echo and is_rank_zero():
        print(f"[mscg] prepare: {reason}; prepare and the stages after it rerun.")
    return False
