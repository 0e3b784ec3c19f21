"""Reading the raw files of every layout: CSV/TSV, JSON (Lines), id maps, images, given codes.

Each reader raises an `MscgError` naming the file (and the column and value where it can) for
input it cannot trust: missing or empty file, wrong type, truncated JSON, invalid UTF-8.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson

from mscg_lightning.data.adapters.common import check_unique
from mscg_lightning.data.validate import check_utf8, raise_not_utf8
from mscg_lightning.errors import MscgError

NOT_DATA = {"SOURCE", "README", "LICENSE", "NOTICE"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


def need_file(path: Path, what: str = "input file of this layout") -> Path:
    """Return `path` if it is a non-empty file; otherwise raise a one-sentence MscgError."""
    if not path.is_file():
        raise MscgError(
            f"{path} does not exist (the {what}); check prepare.path and prepare.dataset."
        )
    if path.stat().st_size == 0:
        raise MscgError(f"{path} is empty.")
    return path


def find_stem(folder: Path, *suffixes: str, exclude_prefix: str | None = None) -> str:
    """The dataset stem of the single `<stem><suffix>` file in `folder` (for `dataset: null`)."""
    if not folder.is_dir():
        raise MscgError(f"the dataset folder {folder} does not exist.")
    stems = set()
    for p in folder.iterdir():
        for suffix in suffixes:
            stem = p.name[: -len(suffix)]
            if (
                p.name.endswith(suffix)
                and not (exclude_prefix and p.name.startswith(exclude_prefix))
                and stem.upper() not in NOT_DATA  # SOURCE.txt, README.txt, ...
            ):
                stems.add(stem)
                break
    if len(stems) != 1:
        found = ", ".join(sorted(stems)) or "none"
        raise MscgError(
            f"{folder} must hold exactly one '*{suffixes[0]}' file to guess the dataset name "
            f"(found: {found}); set prepare.dataset."
        )
    return stems.pop()


def _arrow_column_hint(err: Exception, names: list[str]) -> str:
    """The column name inside an Arrow parse error ("In CSV column #2" / "Column(/t)")."""
    text = str(err)
    m = re.search(r"column #(\d+)", text)
    if m and int(m.group(1)) < len(names):
        return f" column '{names[int(m.group(1))]}'"
    m = re.search(r"Column\(/([^)]+)\)", text)
    return f" column '{m.group(1)}'" if m else ""


def read_delimited(
    path: Path,
    *,
    delimiter: str,
    column_types: dict[str, pa.DataType] | None = None,
    include: list[str] | None = None,
    header: list[str] | None = None,
    quoted: bool = False,
    dropped: dict[str, int] | None = None,
) -> pa.Table:
    """Read a CSV/TSV with pyarrow; malformed rows are counted in ``dropped["malformed_row"]``.

    `header` gives column names for files without a header line. Conversion errors (a value of
    the wrong type) raise an MscgError naming the file, column and value.
    """
    need_file(path)
    bad_rows: list[int] = []

    def on_invalid(row: pcsv.InvalidRow) -> str:
        bad_rows.append(1)
        return "skip"

    read_opts = pcsv.ReadOptions(
        column_names=header, autogenerate_column_names=False, block_size=64 << 20
    )
    parse_opts = pcsv.ParseOptions(
        delimiter=delimiter,
        quote_char='"' if quoted else False,
        newlines_in_values=quoted,
        invalid_row_handler=on_invalid if dropped is not None else None,
    )
    types = dict(column_types or {})
    convert_opts = pcsv.ConvertOptions(
        column_types=types,
        include_columns=include,
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    try:
        table = pcsv.read_csv(
            path, read_options=read_opts, parse_options=parse_opts, convert_options=convert_opts
        )
    except pa.ArrowInvalid as err:
        text = str(err)
        if "Empty CSV file" in text:
            raise MscgError(f"{path} is empty.") from err
        m = re.search(r"include_columns.*?'([^']+)'", text) or re.search(
            r"Column '([^']+)' in include_columns", text
        )
        if "include_columns" in text and m:
            raise MscgError(f"{path} has no column '{m.group(1)}'.") from err
        if "include_columns" in text:
            raise MscgError(f"{path} lacks one of the columns {include} ({text}).") from err
        if "invalid UTF8" in text:
            raise_not_utf8(path)  # names the line (validate.py)
        names = header or _header_names(path, delimiter)
        hint = _arrow_column_hint(err, names)
        raise MscgError(f"{path}{hint} holds a value of the wrong type ({text}).") from err
    if dropped is not None and bad_rows:
        dropped["malformed_row"] = dropped.get("malformed_row", 0) + len(bad_rows)
    check_utf8(table, path)  # a column with invalid bytes reads as binary (validate.py)
    return table


def _header_names(path: Path, delimiter: str) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.readline().rstrip("\r\n").split(delimiter)


def read_jsonl(path: Path, schema: pa.Schema) -> pa.Table:
    """Read JSON Lines (optionally .gz) with an explicit schema; extra fields are ignored."""
    need_file(path)
    opts = pjson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        table = pjson.read_json(
            path, read_options=pjson.ReadOptions(block_size=64 << 20), parse_options=opts
        )
    except (pa.ArrowInvalid, OSError, EOFError) as err:
        hint = _arrow_column_hint(err, [])
        if hint and "changed from" in str(err):
            raise MscgError(f"{path}{hint} holds a value of the wrong type ({err}).") from err
        raise MscgError(f"{path} is not valid JSON Lines: truncated or corrupt ({err}).") from err
    check_utf8(table, path)  # pyarrow keeps invalid bytes in strings (validate.py)
    if table.num_rows == 0:
        raise MscgError(f"{path} is empty.")
    return table


def load_json(path: Path) -> object:
    """Parse a JSON file; duplicate object keys are an error (json.load would keep the last)."""
    need_file(path)

    def no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
        out: dict[str, object] = {}
        for key, value in pairs:
            if key in out:
                raise MscgError(f"{path} has the key '{key}' twice.")
            out[key] = value
        return out

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as err:
        raise MscgError(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}): "
            "truncated or corrupt."
        ) from err
    except UnicodeDecodeError as err:
        raise MscgError(f"{path} is not UTF-8 text (byte {err.start}).") from err


def _read_id_map(path: Path, key_name: str) -> tuple[pa.Array, np.ndarray]:
    """A two-column TSV without header `key \\t int id` (item2id, item2index).

    Returns (keys ordered by id, ids sorted); duplicate keys or ids are errors.
    """
    table = read_delimited(
        path,
        delimiter="\t",
        header=[key_name, "id"],
        column_types={key_name: pa.string(), "id": pa.int64()},
    )
    if table.num_rows == 0:
        raise MscgError(f"{path} lists no items.")
    check_unique(table.column(key_name), path, key_name)
    check_unique(table.column("id"), path, "id")
    ids = table.column("id").to_numpy()
    order = np.argsort(ids, kind="stable")
    return table.column(key_name).combine_chunks().take(pa.array(order)), ids[order]


def scan_images(folder: Path, item_ids: pa.Array) -> tuple[pa.Array, int]:
    """Absolute image path per item (`<item_id>.<jpg|png|...>` in `folder`), null when absent.

    Empty (0-byte) files count as absent; their number is returned for stats.
    """
    if not folder.is_dir():
        return pa.nulls(len(item_ids), pa.string()), 0
    stems: dict[str, str] = {}
    empty = 0
    with os.scandir(folder) as it:
        for entry in it:
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() not in IMAGE_SUFFIXES or not entry.is_file():
                continue
            if entry.stat().st_size == 0:
                empty += 1
                continue
            # Prefer the first suffix in IMAGE_SUFFIXES when an item has several files.
            best = stems.get(stem)
            if best is None or IMAGE_SUFFIXES.index(ext.lower()) < IMAGE_SUFFIXES.index(
                os.path.splitext(best)[1].lower()
            ):
                stems[stem] = entry.name
    if not stems:
        return pa.nulls(len(item_ids), pa.string()), empty
    names = pa.array(list(stems.keys()), pa.string())
    files = pa.array([str((folder / v).resolve()) for v in stems.values()], pa.string())
    pos = pc.index_in(item_ids, value_set=names)
    return pc.take(files, pos), empty


def image_column(folder: Path, item_ids: pa.Array, item_dropped: dict[str, int]) -> pa.Array:
    """:func:`scan_images`, its count of empty image files kept as
    ``item_dropped["empty_image_file"]``."""
    paths, empty = scan_images(folder, item_ids)
    if empty:
        item_dropped["empty_image_file"] = empty
    return paths


def parse_code_file(
    path: Path, n_items: int, on_unknown: str, key_of: Callable[[str], int | None]
) -> pa.Array:
    """Given codes ``{key: ["<a_12>", "<b_3>", ...]}`` as list<int32> per catalogue row.

    `key_of` maps a JSON key to a catalogue row (None when unknown). Items the file does not
    cover get null. Token numbers are taken as given (no collision level is added here).
    """
    data = load_json(path)
    if not isinstance(data, dict) or not data:
        raise MscgError(f"{path} must be a non-empty JSON object {{item: [codes]}}.")
    rows: list[list[int] | None] = [None] * n_items
    levels = None
    number = re.compile(r"(-?\d+)\D*$")
    for key, tokens in data.items():
        if not isinstance(tokens, list) or not tokens:
            raise MscgError(f"{path} item '{key}' has {tokens!r}, not a list of code tokens.")
        codes = []
        for tok in tokens:
            m = number.search(str(tok))
            if m is None:
                raise MscgError(f"{path} item '{key}' has the code token {tok!r} with no number.")
            codes.append(int(m.group(1)))
        if levels is None:
            levels = len(codes)
        elif len(codes) != levels:
            raise MscgError(f"{path} item '{key}' has {len(codes)} codes, others have {levels}.")
        row = key_of(key)
        if row is None:
            if on_unknown == "error":
                raise MscgError(
                    f"{path} has codes for item '{key}', which is not in the catalogue."
                )
            continue
        rows[row] = codes
    return pa.array(rows, pa.list_(pa.int32()))
