"""``mscg export``: a finished run's item codes and predictions keyed by raw ids, for serving.

Writes into ``--out`` (default ``<run_dir>/export``), as Parquet or CSV (``--format``):

- ``codes.<fmt>``: one row per catalogue item: ``item_id`` (raw id), ``item_idx``, and per
  modality ``codes_<modality>``: its L semantic codes + the collision level, exactly the tokens
  GenRec reads (null for an item without codes in that modality). Parquet: list<int32>; CSV:
  the codes separated by spaces ("12 3 7 0").
- ``predictions.<fmt>`` (when genrec has run): one row per test user: ``user_id`` (raw id),
  ``items`` (raw item ids, best first) and ``scores`` (their beam log-probabilities). CSV: both
  lists separated by spaces.

The modalities are those GenRec was trained on (its manifest), else ``genrec.modalities`` of the
config. Files are written under temporary names and renamed, so a failed export leaves none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from mscg_lightning.artifacts import read_manifest, read_table
from mscg_lightning.errors import MscgError
from mscg_lightning.pipeline import artifact_dir

Format = Literal["parquet", "csv"]


def _sources(run_dir: Path, config) -> dict[str, str]:
    """modality -> codes source: GenRec's trained ones, else the config's genrec.modalities."""
    genrec = artifact_dir(run_dir, "genrec")
    if (genrec / "manifest.json").is_file():
        return dict(read_manifest(genrec, stage="genrec").extra["modalities"])
    section = getattr(config, "genrec", None)
    sources = dict(getattr(section, "modalities", None) or {})
    if not sources:
        raise MscgError(
            f"{run_dir} has no genrec artifact and the config names no genrec.modalities: "
            "nothing to export; run `mscg fit` first."
        )
    return sources


def codes_table(run_dir: Path, sources: dict[str, str]) -> pa.Table:
    """``item_id``, ``item_idx`` and ``codes_<modality>`` (list<int32> [L+1] or null) per item."""
    from mscg_lightning.stages.genrec.stage import load_catalogue

    prepared = artifact_dir(run_dir, "prepare")
    if not (prepared / "manifest.json").is_file():
        raise MscgError(f"{prepared} does not exist: run `mscg fit` (or `mscg prepare`) first.")
    items = read_table(prepared / "items", columns=["item_idx", "item_id"])
    _, tables, num_items = load_catalogue(prepared, sources, run_dir)
    columns: dict[str, pa.Array] = {
        "item_id": items.column("item_id").combine_chunks(),
        "item_idx": items.column("item_idx").combine_chunks(),
    }
    for modality, (item_idx, codes) in tables.items():
        item_idx, codes = item_idx.numpy(), codes.numpy().astype(np.int32)
        rows: list[list[int] | None] = [None] * num_items
        for i, row in zip(item_idx.tolist(), codes.tolist()):
            rows[i] = row
        columns[f"codes_{modality}"] = pa.array(rows, pa.list_(pa.int32()))
    return pa.table(columns)


def predictions_table(run_dir: Path) -> pa.Table | None:
    """GenRec's test predictions with raw ids (``user_id``, ``items``, ``scores``), or None."""
    path = artifact_dir(run_dir, "genrec") / "predictions.parquet"
    if not path.is_file():
        return None
    prepared = artifact_dir(run_dir, "prepare")
    pred = pq.read_table(path)
    item_ids = read_table(prepared / "items", columns=["item_id"]).column("item_id")
    user_ids = read_table(prepared / "users", columns=["user_id"]).column("user_id")
    items = pred.column("items").combine_chunks()
    raw_items = pa.ListArray.from_arrays(
        items.offsets, pc.take(item_ids.combine_chunks(), items.flatten())
    )
    return pa.table(
        {
            "user_id": pc.take(user_ids.combine_chunks(), pred.column("user_idx")),
            "items": raw_items,
            "scores": pred.column("scores"),
        }
    )


def _as_text(table: pa.Table) -> pa.Table:
    """List columns joined with spaces (CSV has no lists)."""
    out = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if pa.types.is_list(col.type):
            col = pc.binary_join(pc.cast(col, pa.list_(pa.string())), " ")
        out[name] = col
    return pa.table(out)


def _write(table: pa.Table, path: Path, fmt: Format) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    if fmt == "parquet":
        pq.write_table(table, tmp)
    else:
        pcsv.write_csv(_as_text(table), tmp)
    tmp.replace(path)


def export(config, out: str | None = None, fmt: str = "parquet") -> list[Path]:
    """Write codes (and predictions, when genrec has run) of ``config.run_dir``; returns paths."""
    if fmt not in ("parquet", "csv"):
        raise MscgError(f"--format '{fmt}' is not parquet or csv.")
    run_dir = Path(config.run_dir)
    out_dir = Path(out) if out else run_dir / "export"
    tables = {"codes": codes_table(run_dir, _sources(run_dir, config))}
    predictions = predictions_table(run_dir)
    if predictions is not None:
        tables["predictions"] = predictions
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in tables.items():
        path = out_dir / f"{name}.{fmt}"
        _write(table, path, fmt)  # type: ignore[arg-type]
        written.append(path)
        print(f"[mscg] export: {name} ({table.num_rows} rows) -> {path}")
    return written
