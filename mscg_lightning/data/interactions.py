"""The `interactions` adapter: your own data as one table of interactions (+ an optional items table).

Layout (README "Your own data"), in the folder `prepare.path`:

- `interactions.<csv|tsv|parquet|jsonl>[.gz]` (or `prepare.interactions_file`): one row per
  interaction with a user, an item and (optionally) a timestamp column, named by
  `prepare.columns` (defaults `user_id`, `item_id`, `timestamp`). Timestamps are numbers (any
  unit) or date-times (ISO 8601); ties, and files without a timestamp column
  (`columns.timestamp: null`), keep the file order. A rating column (`columns.rating`, default
  `rating` when present) feeds `prepare.min_rating`.
- optionally `items.<csv|tsv|parquet|jsonl>[.gz]` (or `prepare.items_file`): one row per item,
  the id column (`columns.item_id`, default: the interactions' item column name), text columns
  (`columns.text`; null: every other string column) and an image column (`columns.image`): a
  path relative to the data folder (or absolute), or the image bytes (Parquet binary). Bytes are
  written once to a content-addressed cache ($MSCG_CACHE/images) so that prepare can hash them
  like files. Without an image column, `prepare.image_dir` is scanned for `<item_id>.jpg|png...`.

Items without content are not an error here: a chain whose only modality is collaborative needs
no items table; the content stages (text_embed, image_embed, dino_rq) list the items they lack.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mscg_lightning.data import tables
from mscg_lightning.data.adapters import (
    RawData,
    blank_to_null,
    build_raw_data,
    catalogue_from_keys,
    check_unique,
    drop_missing,
    encode_ids,
    image_column,
    join_list,
    map_keys,
)
from mscg_lightning.errors import MscgError

if TYPE_CHECKING:
    from mscg_lightning.data.prepare_config import PrepareConfig


@dataclass
class InteractionColumns:
    """Column names of the `interactions` adapter's tables (`prepare.columns`).

    Args:
        user: user id column of the interactions table.
        item: item id column of the interactions table.
        timestamp: time column (numbers or date-times); null: the file order is the chronology.
        rating: rating column, read when present (required when prepare.min_rating is set).
        item_id: item id column of the items table; null: the same name as `item`.
        text: text columns of the items table; null: every string column but the id and image.
        image: image column of the items table (relative path or bytes), read when present;
            null: none (then `prepare.image_dir`, when set, is scanned for
            `<item_id>.<jpg|png|...>` files).
    """

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str | None = "timestamp"
    rating: str | None = "rating"
    item_id: str | None = None
    text: list[str] | None = None
    image: str | None = "image"


@dataclass
class _Tables:
    inter_path: Path
    item_path: Path | None
    dropped: dict[str, int] = field(default_factory=dict)
    item_dropped: dict[str, int] = field(default_factory=dict)


def _find(folder: Path, override: str | None, stem: str, required: bool) -> Path | None:
    """`override` (relative to `folder`), else the single `<stem>.<supported suffix>` file."""
    if override:
        return folder / override
    found = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name.lower().startswith(f"{stem}.") and _supported(p)
    )
    if len(found) > 1:
        raise MscgError(
            f"{folder} holds several {stem} tables ({', '.join(p.name for p in found)}); "
            f"name one with prepare.{stem}_file."
        )
    if not found and required:
        raise MscgError(
            f"{folder} has no {stem}.csv (or .tsv, .parquet, .jsonl, optionally .gz); "
            f"name the file with prepare.{stem}_file."
        )
    return found[0] if found else None


def _supported(path: Path) -> bool:
    try:
        tables.table_format(path)
    except MscgError:
        return False
    return True


def to_seconds(column: pa.ChunkedArray, path: Path, name: str) -> np.ndarray:
    """Timestamps [N] float64: numbers as they are, date-times as seconds since 1970.

    Strings are parsed as numbers, else as ISO 8601 date-times; any other value is an error
    naming the first one that fails.
    """
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = col.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    if pa.types.is_timestamp(kind):
        per_second = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[kind.unit]
        ints = pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)
        return ints.astype(np.float64) / per_second
    if pa.types.is_date(kind):
        return to_seconds(pc.cast(col, pa.timestamp("s")), path, name)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text = pc.utf8_trim_whitespace(col)
        for target in (pa.float64(), pa.timestamp("ns")):
            try:
                return to_seconds(pc.cast(text, target), path, name)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
        numeric = pc.match_substring_regex(text, r"^-?\d+(\.\d*)?$")
        iso = pc.match_substring_regex(text, r"^\d{4}-\d\d-\d\d([T ]\d\d:\d\d(:\d\d(\.\d+)?)?)?Z?$")
        bad = pc.invert(pc.or_(numeric, iso))
        first = pc.filter(col, bad)
        value = first[0].as_py() if len(first) else col[0].as_py()
        raise MscgError(
            f"{path} column '{name}' holds {value!r}, not a number or an ISO 8601 date-time; "
            "convert it, or set prepare.columns.timestamp: null to use the file order."
        )
    raise MscgError(f"{path} column '{name}' holds {kind} values, not timestamps.")


def _cache_bytes(blob: bytes) -> str:
    """Write image bytes once to $MSCG_CACHE/images/<sha256> and return the file's path."""
    from mscg_lightning.data.recbole_wheel import cache_dir

    folder = cache_dir() / "images"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / hashlib.sha256(blob).hexdigest()
    if not path.is_file():
        tmp = folder / f".{path.name}.{os.getpid()}.tmp"
        tmp.write_bytes(blob)
        tmp.replace(path)  # atomic: concurrent runs write the same content
    return str(path)


def _image_column(values: pa.ChunkedArray, folder: Path, dropped: dict[str, int]) -> pa.Array:
    """Absolute image paths [n_items] (null when absent) from relative paths or image bytes."""
    col = values.combine_chunks()
    out: list[str | None] = []
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        for blob in col.to_pylist():
            out.append(_cache_bytes(blob) if blob else None)
        return pa.array(out, pa.string())
    if pa.types.is_struct(col.type) and "bytes" in [f.name for f in col.type]:
        return _image_column(pa.chunked_array([col.field("bytes")]), folder, dropped)
    for rel in blank_to_null(col).to_pylist():
        if rel is None:
            out.append(None)
            continue
        path = Path(rel).expanduser()
        path = path if path.is_absolute() else folder / path
        if path.is_file() and path.stat().st_size > 0:
            out.append(str(path.resolve()))
        else:
            dropped["missing_image_file"] = dropped.get("missing_image_file", 0) + 1
            out.append(None)
    return pa.array(out, pa.string())


def _items_table(
    cfg: PrepareConfig, cols: InteractionColumns, folder: Path, t: _Tables
) -> tuple[pa.Table, list[str]]:
    """The catalogue (natural order of ids) with text and image columns, and the text names."""
    assert t.item_path is not None
    id_col = cols.item_id or cols.item
    wanted = [id_col, *(cols.text or [])]
    present = tables.column_names(t.item_path)
    image = cols.image if cols.image in present else None
    others = [c for c in present if c not in wanted and c != image]
    optional = [*([image] if image else []), *(others if cols.text is None else [])]
    info = tables.read_table(
        t.item_path, wanted, string_columns=[id_col], optional=optional, dropped=t.item_dropped
    )
    if info.num_rows == 0:
        raise MscgError(f"{t.item_path} lists no items.")
    info = drop_missing(info, {id_col: "row_without_item_id"}, t.item_dropped)
    check_unique(info.column(id_col), t.item_path, id_col)
    keys, order = catalogue_from_keys(info.column(id_col).combine_chunks())
    info = info.take(pa.array(order))
    text_columns = list(cols.text) if cols.text is not None else []
    if cols.text is None:  # every other column holding strings (or lists of strings)
        for name in others:
            kind = info.schema.field(name).type
            if pa.types.is_string(kind) or pa.types.is_large_string(kind):
                text_columns.append(name)
            elif pa.types.is_list(kind) and pa.types.is_string(kind.value_type):
                text_columns.append(name)
    columns: dict[str, pa.Array] = {"item_id": keys}
    for name in text_columns:
        if name in ("item_id", "image_path", "item_idx"):
            raise MscgError(
                f"{t.item_path} text column '{name}' clashes with a column prepare writes; "
                "rename it."
            )
        col = info.column(name)
        if not (pa.types.is_list(col.type) or pa.types.is_string(col.type)):
            col = col.cast(pa.string())
        columns[name] = join_list(col, " ")
    if image:
        columns["image_path"] = _image_column(info.column(image), folder, t.item_dropped)
    elif cfg.image_dir:
        columns["image_path"] = image_column(folder / cfg.image_dir, keys, t.item_dropped)
    return pa.table(columns), text_columns


def read_interactions(cfg: PrepareConfig, folder: Path) -> RawData:
    """Read the `interactions` layout (module docstring) into `RawData`."""
    cols = cfg.columns or InteractionColumns()
    if isinstance(cols, dict):
        cols = InteractionColumns(**cols)
    t = _Tables(
        inter_path=_find(folder, cfg.interactions_file, "interactions", required=True),  # type: ignore[arg-type]
        item_path=_find(folder, cfg.items_file, "items", required=False),
    )
    required = [cols.user, cols.item, *([cols.timestamp] if cols.timestamp else [])]
    need_rating = cfg.min_rating is not None
    if need_rating and not cols.rating:
        raise MscgError("prepare.min_rating is set but prepare.columns.rating is null.")
    rating_col = cols.rating
    table = tables.read_table(
        t.inter_path,
        [*required, *([rating_col] if need_rating and rating_col else [])],
        string_columns=[cols.user, cols.item],
        optional=[rating_col] if rating_col else [],
        dropped=t.dropped,
    )
    rows_read = table.num_rows + t.dropped.get("malformed_row", 0)
    if table.num_rows == 0:
        raise MscgError(f"{t.inter_path} holds no interaction rows.")
    missing = {cols.user: "missing_user", cols.item: "missing_item"}
    if cols.timestamp:
        missing[cols.timestamp] = "missing_timestamp"
    if need_rating:
        missing[rating_col] = "missing_rating"  # type: ignore[index]
    table = drop_missing(table, missing, t.dropped)
    if table.num_rows == 0:
        raise MscgError(f"{t.inter_path} holds no row with a user, an item and a timestamp.")
    time = (
        to_seconds(table.column(cols.timestamp), t.inter_path, cols.timestamp)
        if cols.timestamp
        else None
    )
    rating = None
    if rating_col and rating_col in table.column_names:
        try:
            rating = pc.cast(table.column(rating_col), pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise MscgError(
                f"{t.inter_path} column '{rating_col}' holds a value that is not a number ({err})."
            ) from err
    text_columns: list[str] = []
    if t.item_path is not None:
        items, text_columns = _items_table(cfg, cols, folder, t)
        item, keep = map_keys(
            table.column(cols.item),
            items.column("item_id"),
            path=t.inter_path,
            column=cols.item,
            catalogue=t.item_path,
            on_unknown=cfg.on_unknown_items,
            dropped=t.dropped,
        )
    else:
        if cols.text:
            raise MscgError(
                f"prepare.columns.text names item text columns but {folder} has no items "
                "table (items.csv, .tsv, .parquet or .jsonl); add one or set prepare.items_file."
            )
        item, keys = encode_ids(table.column(cols.item))
        keep = None
        columns: dict[str, pa.Array] = {"item_id": keys}
        if cfg.image_dir:
            columns["image_path"] = image_column(folder / cfg.image_dir, keys, t.item_dropped)
        items = pa.table(columns)
    return build_raw_data(
        table.column(cols.user),
        item,
        keep,
        time=time,
        rating=rating,
        items=items,
        text_columns=text_columns,
        rows_read=rows_read,
        rows_dropped=t.dropped,
        item_rows_dropped=t.item_dropped,
        source_files=[p for p in (t.inter_path, t.item_path) if p is not None],
        dataset=cfg.dataset or folder.name,
        content_required=False,
    )
