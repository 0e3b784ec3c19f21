"""Amazon layouts: 2014 (P5/S3Rec), 2018 (MQL4GRec) and Reviews 2023 (JSONL + image folder)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mscg_lightning.data.adapters.common import (
    RawData,
    _interaction_table_to_raw,
    _map_int_ids,
    blank_to_null,
    build_raw_data,
    catalogue_from_keys,
    check_unique,
    drop_missing,
    join_list,
    map_keys,
    require_columns,
)
from mscg_lightning.data.adapters.files import (
    _header_names,
    _read_id_map,
    find_stem,
    image_column,
    load_json,
    need_file,
    parse_code_file,
    read_delimited,
    read_jsonl,
)
from mscg_lightning.errors import MscgError

if TYPE_CHECKING:
    from mscg_lightning.data.prepare_config import PrepareConfig


# ----------------------------------------------------------------------------------------------
# Amazon 2014, P5/S3Rec layout


def _sequences_to_arrays(users: list[str], seqs: list[list[str]]) -> tuple[pa.Array, pa.Array]:
    """Per-user sequences -> flat (user, item) string arrays, row order = sequence order."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    user_rep = pa.array(users, pa.string()).take(
        pa.array(np.repeat(np.arange(len(users)), lengths))
    )
    flat = pa.array([x for s in seqs for x in s], pa.string())
    return user_rep, flat


def read_amazon2014(cfg: PrepareConfig, folder: Path) -> RawData:
    """P5/S3Rec layout: `<dataset>.txt` ("user item1 item2 ...", chronological, 1-based ids, no
    timestamps) + `items_joined.tsv` (`item_id`, optional `asin`, `title`, attributes) for text.

    `item_id` of the output is the ASIN when the items file has an `asin` column; catalogue order
    is the P5 item id, so `item_idx == P5 id - 1` while no item is filtered. A line with a user
    but no items is counted as `user_without_items`. Optional `given_codes` ({name: file}, keys =
    0-based catalogue rows, e.g. LETTER's `LETTER_Beauty.index.json`) become `codes_<name>`.
    """
    dataset = cfg.dataset or find_stem(folder, ".txt")
    inter_path = folder / (cfg.interactions_file or f"{dataset}.txt")
    item_path = folder / (cfg.items_file or "items_joined.tsv")
    need_file(inter_path)
    dropped: dict[str, int] = {}
    try:
        lines = inter_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise MscgError(f"{inter_path} is not UTF-8 text (byte {err.start}).") from err
    users: list[str] = []
    seqs: list[list[str]] = []
    for line in lines:  # one loop step per user, not per interaction
        parts = line.split()
        if not parts:
            continue
        if len(parts) == 1:
            dropped["user_without_items"] = dropped.get("user_without_items", 0) + 1
            continue
        users.append(parts[0])
        seqs.append(parts[1:])
    if not users:
        raise MscgError(f"{inter_path} holds no user sequences.")
    user_col, item_col = _sequences_to_arrays(users, seqs)
    check_unique(pa.array(users), inter_path, "user (first field of a line)")
    rows_read = len(item_col) + dropped.get("user_without_items", 0)

    need_file(item_path, "item text file")
    item_dropped: dict[str, int] = {}
    table = read_delimited(
        item_path,
        delimiter="\t",
        dropped=item_dropped,
        column_types={n: pa.string() for n in _header_names(item_path, "\t")},
    )
    require_columns(table, item_path, ["item_id"])
    keys = table.column("item_id").combine_chunks()
    check_unique(keys, item_path, "item_id")
    keys, order = catalogue_from_keys(keys)
    table = table.take(pa.array(order))
    item, keep = map_keys(
        item_col,
        keys,
        path=inter_path,
        column="item (fields 2..)",
        catalogue=item_path,
        on_unknown=cfg.on_unknown_items,
        dropped=dropped,
    )
    ids = table.column("asin").combine_chunks() if "asin" in table.column_names else keys
    columns: dict[str, pa.Array] = {"item_id": ids}
    text_columns = []
    for name in table.column_names:
        if name in ("item_id", "asin"):
            continue
        out = "attributes" if name.startswith("attributes") else name
        col = blank_to_null(table.column(name))
        if out == "attributes":  # "OPI|Makeup|Nails" reads better as "OPI, Makeup, Nails"
            col = pc.replace_substring(col, "|", ", ")
        columns[out] = col
        text_columns.append(out)
    n_items = len(keys)
    for name, file in (cfg.given_codes or {}).items():
        path = folder / file

        def row_of(key: str) -> int | None:
            return int(key) if key.isdigit() and int(key) < n_items else None

        columns[f"codes_{name}"] = parse_code_file(path, n_items, cfg.on_unknown_items, row_of)
    return build_raw_data(
        user_col,
        item,
        keep,
        items=pa.table(columns),
        text_columns=text_columns,
        rows_read=rows_read,
        rows_dropped=dropped,
        item_rows_dropped=item_dropped,
        source_files=[inter_path, item_path],
        dataset=dataset,
    )


# ----------------------------------------------------------------------------------------------
# Amazon 2018, MQL4GRec layout


def read_amazon2018(cfg: PrepareConfig, folder: Path) -> RawData:
    """MQL4GRec layout: `<dataset>.inter.json` {user: [item ids]} (0-based, chronological),
    `<dataset>.item2id` (ASIN \\t id), optional `<dataset>.index_<name>.json` given codes
    (`codes_<name>`, "<a_12>" tokens parsed to ints; `given_codes` picks files explicitly) and
    optional `items_text.jsonl` (`asin`, `title`, `brand`, `categories`) for text.
    """
    dataset = cfg.dataset or find_stem(folder, ".inter.json")
    inter_path = folder / (cfg.interactions_file or f"{dataset}.inter.json")
    item_path = folder / (cfg.items_file or f"{dataset}.item2id")
    text_path = folder / "items_text.jsonl"
    dropped: dict[str, int] = {}
    data = load_json(inter_path)
    if not isinstance(data, dict):
        raise MscgError(f"{inter_path} must be a JSON object {{user: [item ids]}}.")
    if not data:
        raise MscgError(f"{inter_path} holds no user sequences.")
    users, seqs = [], []
    for user, seq in data.items():  # one loop step per user
        if not isinstance(seq, list) or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in seq
        ):
            raise MscgError(f"{inter_path} user '{user}' has {str(seq)[:60]}, not a list of ints.")
        if not seq:
            dropped["user_without_items"] = dropped.get("user_without_items", 0) + 1
            continue
        users.append(user)
        seqs.append(seq)
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    flat = np.fromiter((x for s in seqs for x in s), dtype=np.int64, count=int(lengths.sum()))
    user_col = pa.array(users, pa.string()).take(
        pa.array(np.repeat(np.arange(len(users)), lengths))
    )
    rows_read = len(flat) + dropped.get("user_without_items", 0)

    asins, ids = _read_id_map(item_path, "asin")
    item, keep = _map_int_ids(
        flat,
        ids,
        path=inter_path,
        column="[item ids]",
        catalogue=item_path,
        on_unknown=cfg.on_unknown_items,
        dropped=dropped,
    )
    columns: dict[str, pa.Array] = {"item_id": asins}
    text_columns: list[str] = []
    sources = [inter_path, item_path]
    if text_path.exists():
        schema = pa.schema([(n, pa.string()) for n in ("asin", "title", "brand", "categories")])
        text = read_jsonl(text_path, schema)
        if pc.all(pc.is_null(text.column("asin"))).as_py():
            raise MscgError(f"{text_path} has no field 'asin'.")
        check_unique(text.column("asin"), text_path, "asin")
        pos = pc.index_in(asins, value_set=text.column("asin").combine_chunks())
        for name in ("title", "brand", "categories"):
            columns[name] = blank_to_null(pc.take(text.column(name).combine_chunks(), pos))
            text_columns.append(name)
        sources.append(text_path)
    code_files = dict(cfg.given_codes or {})
    if cfg.given_codes is None:
        prefix = f"{dataset}.index_"
        for p in sorted(folder.glob(f"{prefix}*.json")):
            code_files[p.name[len(prefix) : -len(".json")]] = p.name
    id_to_row = {int(v): i for i, v in enumerate(ids)}
    for name, file in code_files.items():
        path = folder / file

        def row_of(key: str) -> int | None:
            return id_to_row.get(int(key)) if key.lstrip("-").isdigit() else None

        columns[f"codes_{name}"] = parse_code_file(path, len(asins), cfg.on_unknown_items, row_of)
        sources.append(path)
    return build_raw_data(
        user_col,
        item,
        keep,
        items=pa.table(columns),
        text_columns=text_columns,
        rows_read=rows_read,
        rows_dropped=dropped,
        source_files=sources,
        dataset=dataset,
    )


# ----------------------------------------------------------------------------------------------
# Amazon Reviews 2023: reviews + meta JSONL with an image folder


def _first_existing(folder: Path, names: list[str]) -> Path:
    for name in names:
        if (folder / name).exists():
            return folder / name
    return folder / names[0]


def _require_field(table: pa.Table, path: Path, name: str) -> None:
    if table.num_rows and pc.all(pc.is_null(table.column(name))).as_py():
        raise MscgError(f"{path} has no field '{name}' in any row.")


def read_amazon2023(cfg: PrepareConfig, folder: Path) -> RawData:
    """Amazon Reviews 2023: `<dataset>.jsonl[.gz]` reviews (`user_id`, `parent_asin`,
    `timestamp` ms, `rating`), `meta_<dataset>.jsonl[.gz]` (`parent_asin`, `title`, `features`,
    `description`, `categories`, `store`; lists joined into text) and an image folder
    (`image_dir`, default `images/`, files `<parent_asin>.jpg|png|...`).

    No real Amazon 2023 data exists on this machine: this adapter is tested on the fixture
    generator's miniature layout only.
    """
    if cfg.hub and not cfg.dataset:
        raise MscgError("prepare.hub needs prepare.dataset, the category (e.g. All_Beauty).")
    dataset = cfg.dataset or find_stem(folder, ".jsonl.gz", ".jsonl", exclude_prefix="meta_")
    inter_path = (
        folder / cfg.interactions_file
        if cfg.interactions_file
        else _first_existing(folder, [f"{dataset}.jsonl.gz", f"{dataset}.jsonl"])
    )
    item_path = (
        folder / cfg.items_file
        if cfg.items_file
        else _first_existing(folder, [f"meta_{dataset}.jsonl.gz", f"meta_{dataset}.jsonl"])
    )
    dropped: dict[str, int] = {}
    schema = pa.schema(
        [
            ("user_id", pa.string()),
            ("parent_asin", pa.string()),
            ("timestamp", pa.int64()),
            ("rating", pa.float64()),
        ]
    )
    lst = pa.list_(pa.string())
    meta_schema = pa.schema(
        [
            ("parent_asin", pa.string()),
            ("title", pa.string()),
            ("features", lst),
            ("description", lst),
            ("categories", lst),
            ("store", pa.string()),
        ]
    )
    if cfg.hub:  # through `datasets` (hub.py)
        from mscg_lightning.data.hub import amazon2023_tables

        table, meta, urls = amazon2023_tables(
            cfg.hub,
            dataset,
            schema,
            meta_schema,
            interactions_file=cfg.interactions_file,
            items_file=cfg.items_file,
            streaming=cfg.hub_streaming,
        )
        inter_path, item_path = Path(urls[0]), Path(urls[1])
    else:
        table = read_jsonl(inter_path, schema)
        meta = read_jsonl(item_path, meta_schema)
    for name in ("user_id", "parent_asin", "timestamp"):
        _require_field(table, inter_path, name)
    table = table.rename_columns(["user_id", "item_id", "timestamp", "rating"])
    rows_read = table.num_rows
    table = drop_missing(
        table,
        {"user_id": "missing_user", "item_id": "missing_item", "timestamp": "missing_timestamp"},
        dropped,
    )
    if cfg.min_rating is not None:
        table = drop_missing(table, {"rating": "missing_rating"}, dropped)
    _require_field(meta, item_path, "parent_asin")
    item_dropped: dict[str, int] = {}
    meta = drop_missing(meta, {"parent_asin": "row_without_parent_asin"}, item_dropped)
    check_unique(meta.column("parent_asin"), item_path, "parent_asin")
    keys, order = catalogue_from_keys(meta.column("parent_asin").combine_chunks())
    meta = meta.take(pa.array(order))
    text_columns = ["title", "features", "description", "categories", "store"]
    columns: dict[str, pa.Array] = {"item_id": keys}
    for name in text_columns:
        columns[name] = join_list(meta.column(name), ", " if name == "categories" else " ")
    image_dir = folder / (cfg.image_dir or "images")
    columns["image_path"] = image_column(image_dir, keys, item_dropped)
    return _interaction_table_to_raw(
        table,
        pa.table(columns),
        text_columns,
        cfg=cfg,
        inter_path=inter_path,
        item_path=item_path,
        rows_read=rows_read,
        dropped=dropped,
        item_dropped=item_dropped,
        dataset=dataset,
    )
