"""RecBole atomic files (ml-100k and the embedded default)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from mscg_lightning.data.adapters.common import (
    RawData,
    blank_to_null,
    build_raw_data,
    catalogue_from_keys,
    check_unique,
    drop_missing,
    encode_ids,
    map_keys,
)
from mscg_lightning.data.adapters.files import _header_names, find_stem, need_file, read_delimited
from mscg_lightning.errors import MscgError

if TYPE_CHECKING:
    from mscg_lightning.data.prepare_config import PrepareConfig


RECBOLE_RENAMES = {"movie_title": "title", "release_year": "year", "class": "genres"}


def _recbole_header(path: Path) -> dict[str, str]:
    """`name:type` header of a RecBole atomic file -> {full header name: type}."""
    need_file(path)
    names = _header_names(path, "\t")
    out = {}
    for name in names:
        base, _, kind = name.partition(":")
        out[name] = kind or "token"
    return out


def _recbole_field(header: dict[str, str], field_name: str, path: Path) -> str | None:
    for name in header:
        if name.partition(":")[0] == field_name:
            return name
    return None


def read_recbole(cfg: PrepareConfig, folder: Path) -> RawData:
    """RecBole atomic files: `<dataset>.inter` (+ optional `<dataset>.item` for text).

    `.inter` needs `user_id` and `item_id` token fields; `timestamp:float` orders each user's
    rows (file order breaks ties; without it, file order is the chronology) and
    `rating:float` feeds `min_rating`. `.item` token/token_seq fields become text columns
    (ml-100k: `movie_title`, `release_year`, `class` -> `title`, `year`, `genres`); float fields
    are not text and are skipped. Without `.item` the catalogue is the items seen in `.inter`.
    """
    dataset = cfg.dataset or find_stem(folder, ".inter")
    inter_path = folder / (cfg.interactions_file or f"{dataset}.inter")
    item_path = folder / (cfg.items_file or f"{dataset}.item")
    dropped: dict[str, int] = {}
    item_dropped: dict[str, int] = {}
    header = _recbole_header(inter_path)
    cols = {}
    for want in ("user_id", "item_id", "timestamp", "rating"):
        cols[want] = _recbole_field(header, want, inter_path)
    for want in ("user_id", "item_id"):
        if cols[want] is None:
            raise MscgError(f"{inter_path} has no column '{want}' (header: {list(header)}).")
    types = {cols["user_id"]: pa.string(), cols["item_id"]: pa.string()}
    for want in ("timestamp", "rating"):
        if cols[want] is not None:
            types[cols[want]] = pa.float64()
    include = [c for c in cols.values() if c is not None]
    table = read_delimited(
        inter_path, delimiter="\t", column_types=types, include=include, dropped=dropped
    )
    table = table.rename_columns([n.partition(":")[0] for n in table.column_names])
    rows_read = table.num_rows + dropped.get("malformed_row", 0)
    if table.num_rows == 0:
        raise MscgError(f"{inter_path} holds no interaction rows.")
    table = drop_missing(table, {"user_id": "missing_user", "item_id": "missing_item"}, dropped)
    if "timestamp" in table.column_names:
        table = drop_missing(table, {"timestamp": "missing_timestamp"}, dropped)
    if "rating" in table.column_names and cfg.min_rating is not None:
        table = drop_missing(table, {"rating": "missing_rating"}, dropped)

    if item_path.exists():
        item_header = _recbole_header(item_path)
        id_col = _recbole_field(item_header, "item_id", item_path)
        if id_col is None:
            raise MscgError(f"{item_path} has no column 'item_id' (header: {list(item_header)}).")
        text_cols = [
            n for n, k in item_header.items() if n != id_col and k in ("token", "token_seq")
        ]
        items_raw = read_delimited(
            item_path,
            delimiter="\t",
            column_types={n: pa.string() for n in [id_col, *text_cols]},
            include=[id_col, *text_cols],
            dropped=item_dropped,
        )
        if items_raw.num_rows == 0:
            raise MscgError(f"{item_path} lists no items.")
        keys = items_raw.column(id_col).combine_chunks()
        check_unique(keys, item_path, "item_id")
        keys, order = catalogue_from_keys(keys)
        items_raw = items_raw.take(pa.array(order))
        item, keep = map_keys(
            table.column("item_id"),
            keys,
            path=inter_path,
            column="item_id",
            catalogue=item_path,
            on_unknown=cfg.on_unknown_items,
            dropped=dropped,
        )
        columns = {"item_id": keys}
        text_columns = []
        for name in text_cols:
            base = name.partition(":")[0]
            out = RECBOLE_RENAMES.get(base, base)
            columns[out] = blank_to_null(items_raw.column(name))
            text_columns.append(out)
        items = pa.table(columns)
        sources = [inter_path, item_path]
    else:
        item, vocab = encode_ids(table.column("item_id"))
        keep = None
        items = pa.table({"item_id": vocab})
        text_columns = []
        sources = [inter_path]
    time = table.column("timestamp").to_numpy() if "timestamp" in table.column_names else None
    rating = table.column("rating").to_numpy() if "rating" in table.column_names else None
    return build_raw_data(
        table.column("user_id"),
        item,
        keep,
        time=time,
        rating=rating,
        items=items,
        text_columns=text_columns,
        rows_read=rows_read,
        rows_dropped=dropped,
        item_rows_dropped=item_dropped,
        source_files=sources,
        dataset=dataset,
    )


def read_ml100k_wheel(cfg: PrepareConfig, folder: Path) -> RawData:
    """The embedded default: ml-100k read from the `recbole` PyPI wheel (see recbole_wheel)."""
    from dataclasses import replace

    from mscg_lightning.data.recbole_wheel import ml100k_dir

    return read_recbole(replace(cfg, dataset="ml-100k"), ml100k_dir(folder))
