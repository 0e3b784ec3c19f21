"""Per-row results kept in the repository, so seeds trained in different sessions make one table.

A run directory does not outlive a session on this project's machines, and a multi-seed
comparison can cost more than one session. :func:`archive_rows` copies what the comparison table
reads of each trained row (``test_ranks.parquet``, ``metrics.json``, ``manifest.json``: about
100 KB) into ``<archive>/<seed dir name>/<row>/``, with a digest of the Parquet files of the
artifacts the row read (for a generator: ``prepared`` and its quantizers' codes).
:func:`restore_rows` puts them back into a rebuilt run directory after checking that the rebuilt
upstream holds byte-identical tables; the pipeline's own up-to-date check (config hash, input
hashes) then skips the row, or retrains it when its flags changed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from mscg_lightning.graph import Graph
from mscg_lightning.pipeline import artifact_dir

ROW_FILES = ("manifest.json", "metrics.json", "test_ranks.parquet")
UPSTREAM = "upstream.json"
MARKER = "restored_from_archive.json"


def parquet_digest(directory: Path) -> str:
    """SHA-256 (16 hex digits) over the names and bytes of every Parquet file under
    ``directory``: equal for tables written from equal data by the same pyarrow."""
    root = Path(directory).resolve()
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.parquet")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _inputs_digest(run_dir: Path, graph: Graph, row: str) -> dict[str, str]:
    return {
        dep: parquet_digest(artifact_dir(run_dir, dep)) for dep in graph.instances[row].upstream
    }


def archive_rows(run_dir: Path, rows: list[str], graph: Graph, archive: Path) -> list[str]:
    """Copy each row's table files from ``run_dir`` into ``archive/<run_dir name>/<row>``
    (replacing an older copy); rows restored from the archive are already there. Returns the
    rows written."""
    written = []
    for row in rows:
        source = artifact_dir(run_dir, row)
        if (source / MARKER).is_file():
            continue
        digests = _inputs_digest(run_dir, graph, row)
        _copy_row(source, Path(archive) / Path(run_dir).name / row, UPSTREAM, digests)
        written.append(row)
    return written


def restore_rows(run_dir: Path, rows: list[str], graph: Graph, archive: Path) -> list[str]:
    """Copy archived rows into ``run_dir`` where it has no artifact of them yet, once the
    upstream they read is byte-identical to the archived digests (else exit with one sentence,
    leaving ``run_dir`` unchanged). Returns the rows restored."""
    restored, pending = [], []
    for row in rows:
        source = Path(archive) / Path(run_dir).name / row
        target = artifact_dir(run_dir, row)
        if not (source / UPSTREAM).is_file() or (target / "manifest.json").exists():
            continue
        saved = json.loads((source / UPSTREAM).read_text())
        now = _inputs_digest(run_dir, graph, row)
        changed = [dep for dep in saved if saved[dep] != now.get(dep)]
        if changed:
            dep = changed[0]
            raise SystemExit(
                f"--archive: row '{row}' in {source} was trained on other '{dep}' tables than "
                f"{artifact_dir(run_dir, dep)} holds now (digest {saved[dep]} vs "
                f"{now.get(dep)}); rebuild '{dep}' as it was, or delete {source} to retrain "
                "the row."
            )
        pending.append((row, source, target))
    for row, source, target in pending:
        _copy_row(source, target, MARKER, {"archive": str(source)})
        restored.append(row)
    return restored


def _copy_row(source: Path, target: Path, note_name: str, note: dict[str, str]) -> None:
    """``target`` := ROW_FILES of ``source`` + ``note`` as JSON in ``note_name``; assembled in a
    sibling folder and renamed, so an interruption leaves no half-copied row."""
    staging = target.with_name(target.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ROW_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, staging / name)
    (staging / note_name).write_text(json.dumps(note, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
