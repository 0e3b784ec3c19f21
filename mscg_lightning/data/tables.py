"""Read one user table (CSV, TSV, Parquet or JSON Lines, optionally gzipped) chosen by suffix.

Used by the `interactions` adapter (interactions.py) and by `mscg export` readers. Every failure
is a one-sentence MscgError naming the file and, where it applies, the column:

- the format comes from the suffix: ``.csv``, ``.tsv``/``.tab``, ``.parquet``/``.pq``,
  ``.jsonl``/``.ndjson``/``.json`` (JSON Lines), each but Parquet optionally followed by ``.gz``;
- `string_columns` are read as strings whatever they look like (ids "007" stay "007");
- only the columns asked for are read; a missing required column names the columns present.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pjson
import pyarrow.parquet as pq

from mscg_lightning.data.adapters import need_file, read_delimited
from mscg_lightning.errors import MscgError

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}


def table_format(path: Path) -> str:
    """'csv', 'tsv', 'parquet' or 'jsonl' from the file name (a trailing .gz is allowed)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    suffix = suffixes[-2] if gz and len(suffixes) >= 2 else (suffixes[-1] if suffixes else "")
    kind = FORMATS.get(suffix)
    if kind is None or (gz and kind == "parquet"):
        raise MscgError(
            f"{path}: cannot tell the format from the name; use .csv, .tsv, .parquet or .jsonl "
            "(the text formats optionally followed by .gz)."
        )
    return kind


def column_names(path: Path) -> list[str]:
    """Column names of a table file without reading its rows (JSON Lines: the first row's keys)."""
    path = need_file(Path(path), "table file")
    kind = table_format(path)
    if kind == "parquet":
        try:
            return list(pq.read_schema(path).names)
        except (pa.ArrowInvalid, OSError) as err:
            raise MscgError(f"{path} is not a readable Parquet file ({err}).") from err
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            first = f.readline()
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise MscgError(f"{path} cannot be read as text ({err}).") from err
    if not first.strip():
        raise MscgError(f"{path} is empty.")
    if kind == "jsonl":
        import json

        try:
            row = json.loads(first)
        except json.JSONDecodeError as err:
            raise MscgError(f"{path} line 1 is not a JSON object ({err}).") from err
        if not isinstance(row, dict):
            raise MscgError(f"{path} line 1 is not a JSON object.")
        return list(row)
    delimiter = "," if kind == "csv" else "\t"
    return next(csv.reader(io.StringIO(first), delimiter=delimiter))


def read_table(
    path: Path,
    columns: list[str],
    *,
    string_columns: list[str] = (),  # type: ignore[assignment]
    optional: list[str] = (),  # type: ignore[assignment]
    option: str = "prepare.columns",
    dropped: dict[str, int] | None = None,
) -> pa.Table:
    """The `columns` (required) plus the `optional` ones present, in that order.

    `string_columns` are cast to string (ids); `option` names the config key that sets the
    column names, for the error message. Malformed CSV rows are counted in
    ``dropped["malformed_row"]`` when `dropped` is given.
    """
    path = Path(path)
    present = column_names(path)
    for name in columns:
        if name not in present:
            raise MscgError(
                f"{path} has no column '{name}' (it has {present}); name the column with {option}."
            )
    want = [*columns, *(c for c in optional if c in present and c not in columns)]
    kind = table_format(path)
    if kind in ("csv", "tsv"):
        table = read_delimited(
            path,
            delimiter="," if kind == "csv" else "\t",
            column_types={c: pa.string() for c in string_columns if c in want},
            include=want,
            quoted=kind == "csv",
            dropped=dropped,
        )
    elif kind == "parquet":
        table = pq.read_table(path, columns=want)
    else:
        try:
            table = pjson.read_json(path, read_options=pjson.ReadOptions(block_size=64 << 20))
        except (pa.ArrowInvalid, OSError, EOFError) as err:
            raise MscgError(f"{path} is not valid JSON Lines ({err}).") from err
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise MscgError(f"{path} has no field '{missing[0]}' in any row; set {option}.")
        table = table.select([c for c in want if c in table.column_names])
    out = {}
    for name in table.column_names:
        col = table.column(name)
        if name in string_columns and not pa.types.is_string(col.type):
            try:
                col = col.cast(pa.string())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise MscgError(
                    f"{path} column '{name}' holds {col.type} values, not ids ({err})."
                ) from err
        out[name] = col
    return pa.table(out)
