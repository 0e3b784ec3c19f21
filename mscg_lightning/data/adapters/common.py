"""The canonical form `RawData` and the in-memory helpers every adapter shares.

Raw ids become positions (`encode_ids`, `map_keys`, the unknown-item policy of
`resolve_unknown`), string columns are cleaned (`blank_to_null`, `join_list`, `drop_missing`) and
every layout assembles its result with `build_raw_data` (the timestamped layouts through their
shared tail, `_interaction_table_to_raw`). Reading the files is `files.py`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mscg_lightning.errors import MscgError

if TYPE_CHECKING:
    from mscg_lightning.data.prepare_config import PrepareConfig


@dataclass
class RawData:
    """The canonical form of a raw dataset, before k-core and splitting.

    Interactions are N parallel arrays: `user` [N] int32 (index into `user_ids`), `item` [N]
    int32 (row of `items`), `time` [N] float64 or None (None: rows are already chronological
    within each user, as in the P5/MQL4GRec/UniSRec layouts), `rating` [N] float64 or None.
    `items` has one row per catalogue item in catalogue order: `item_id` (string) plus optional
    text columns (string, null when missing), `image_path` (absolute string or null),
    `emb_<name>` fixed_size_list<float32>[D] and `codes_<name>` list<int32> columns.

    `rows_read` counts interactions read plus source lines that yielded none (malformed lines,
    users without items); `rows_dropped` counts the same units by reason, so that
    ``rows_read == len(user) + sum(rows_dropped.values())`` always holds. Problems of the item
    table (malformed lines, rows without an id, empty image files) go to `item_rows_dropped`.
    """

    user: np.ndarray
    item: np.ndarray
    time: np.ndarray | None
    user_ids: pa.Array
    items: pa.Table
    text_columns: list[str]
    rows_read: int
    rows_dropped: dict[str, int] = field(default_factory=dict)
    item_rows_dropped: dict[str, int] = field(default_factory=dict)
    rating: np.ndarray | None = None
    source_files: list[Path] = field(default_factory=list)
    dataset: str = ""
    # False: items without text/image are kept (the interactions adapter: content is optional)
    content_required: bool = True


def natural_order(ids: pa.Array) -> np.ndarray:
    """Permutation sorting string ids numerically when all are integers, else lexicographically."""
    if len(ids) == 0:
        return np.zeros(0, dtype=np.int64)
    if pc.all(pc.match_substring_regex(ids, r"^-?\d{1,18}$")).as_py():
        return np.argsort(pc.cast(ids, pa.int64()).to_numpy(), kind="stable")
    return pc.sort_indices(ids).to_numpy()


def plain_ints(values: pa.Array | pa.ChunkedArray) -> np.ndarray | None:
    """int64 [N] when every string is a canonical decimal integer ("12", "-3"), else None.

    "012", " 1" or "+1" are not canonical: their string identity would be lost as ints.
    Casting and comparing lengths is much cheaper than hashing 10M strings.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], pa.string())
    if len(values) == 0 or values.null_count or not pa.types.is_string(values.type):
        return None
    try:
        ints = pc.cast(values, pa.int64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    powers = 10 ** np.arange(1, 19, dtype=np.int64)
    digits = 1 + np.searchsorted(powers, np.abs(ints), side="right")
    lengths = pc.binary_length(values).to_numpy(zero_copy_only=False)
    return ints if np.array_equal(lengths, digits + (ints < 0)) else None


def _dense_int_codes(ints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes [N] int32, sorted distinct values [V]) of an int64 array."""
    lo, hi = int(ints.min()), int(ints.max())
    if hi - lo < max(4 * len(ints), 1 << 20):  # O(N) table lookup when the range is small
        present = np.zeros(hi - lo + 1, dtype=bool)
        present[ints - lo] = True
        rank = np.cumsum(present, dtype=np.int64) - 1
        return rank[ints - lo].astype(np.int32), np.flatnonzero(present) + lo
    uniq, codes = np.unique(ints, return_inverse=True)
    return codes.astype(np.int32), uniq


def int_positions(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Position [N] int32 of each of `values` in the distinct int64 `keys`, -1 when absent."""
    if len(keys) == 0:
        return np.full(len(values), -1, dtype=np.int32)
    lo = int(min(keys.min(), values.min())) if len(values) else int(keys.min())
    hi = int(max(keys.max(), values.max())) if len(values) else int(keys.max())
    if hi - lo < max(4 * (len(values) + len(keys)), 1 << 20):
        table = np.full(hi - lo + 1, -1, dtype=np.int32)
        table[keys - lo] = np.arange(len(keys), dtype=np.int32)
        return table[values - lo]
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    pos = np.minimum(np.searchsorted(sorted_keys, values), len(keys) - 1)
    return np.where(sorted_keys[pos] == values, order[pos], -1).astype(np.int32)


def encode_ids(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Dense codes [N] int32 and the vocabulary [V] string in natural order (codes index it)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], pa.string())
    values = values.cast(pa.string())
    ints = plain_ints(values)
    if ints is not None:
        codes, uniq = _dense_int_codes(ints)
        return codes, pa.array(uniq).cast(pa.string())
    encoded = pc.dictionary_encode(values)
    vocab = encoded.dictionary
    order = natural_order(vocab)
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    codes = rank[encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)]
    return codes, vocab.take(pa.array(order))


def resolve_unknown(
    pos: np.ndarray,
    first_bad: object,
    *,
    path: Path,
    column: str,
    catalogue: Path,
    on_unknown: str,
    dropped: dict[str, int],
) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply the unknown-item policy to positions `pos` [N] (-1 = unknown item).

    Returns (pos, keep-mask or None). ``on_unknown == "error"`` raises an MscgError naming the
    first unknown value; "drop" counts them in ``dropped["unknown_item"]``.
    """
    keep = pos >= 0
    if keep.all():
        return pos, None
    n_bad = int((~keep).sum())
    if on_unknown == "error":
        raise MscgError(
            f"{path} column '{column}' references item '{first_bad}', which is not in "
            f"{catalogue} ({n_bad} rows in all); fix the data or set prepare.on_unknown_items: drop."
        )
    dropped["unknown_item"] = dropped.get("unknown_item", 0) + n_bad
    return pos, keep


def map_keys(
    values: pa.Array | pa.ChunkedArray,
    keys: pa.Array,
    *,
    path: Path,
    column: str,
    catalogue: Path,
    on_unknown: str,
    dropped: dict[str, int],
) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions [N] int32 of string `values` in the distinct string `keys` (see resolve_unknown)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], pa.string())
    ints = plain_ints(values)
    key_ints = plain_ints(keys) if ints is not None else None
    if ints is not None and key_ints is not None:
        pos = int_positions(ints, key_ints)
        first = int(ints[np.argmax(pos < 0)]) if (pos < 0).any() else None
    else:
        # Encode first so the hash lookup runs over distinct values only.
        encoded = pc.dictionary_encode(values)
        vocab_pos = pc.fill_null(pc.index_in(encoded.dictionary, value_set=keys), -1)
        pos = vocab_pos.to_numpy(zero_copy_only=False).astype(np.int32)[
            encoded.indices.to_numpy(zero_copy_only=False)
        ]
        first = values[int(np.argmax(pos < 0))].as_py() if (pos < 0).any() else None
    return resolve_unknown(
        pos,
        first,
        path=path,
        column=column,
        catalogue=catalogue,
        on_unknown=on_unknown,
        dropped=dropped,
    )


def _map_int_ids(
    values: np.ndarray,
    ids: np.ndarray,
    *,
    path: Path,
    column: str,
    catalogue: Path,
    on_unknown: str,
    dropped: dict[str, int],
) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions of integer ids `values` [N] in the distinct ids `ids` (see resolve_unknown)."""
    pos = int_positions(values, ids)
    first = int(values[np.argmax(pos < 0)]) if (pos < 0).any() else None
    return resolve_unknown(
        pos,
        first,
        path=path,
        column=column,
        catalogue=catalogue,
        on_unknown=on_unknown,
        dropped=dropped,
    )


def blank_to_null(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A string column with empty or whitespace-only values turned into nulls."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    column = column.cast(pa.string())
    blank = pc.fill_null(_is_blank(column), False)
    return pc.if_else(blank, pa.scalar(None, pa.string()), column)


def _is_blank(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """True where a string is empty or whitespace only (cheaper than a regex on 10M rows)."""
    return pc.or_(pc.equal(pc.binary_length(column), 0), pc.utf8_is_space(column))


def join_list(column: pa.Array | pa.ChunkedArray, sep: str) -> pa.Array:
    """A list<string> column joined into one string per row (empty lists become null)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        column = pc.binary_join(column, sep)
    return blank_to_null(column)


def require_columns(table: pa.Table, path: Path, columns: list[str]) -> None:
    for name in columns:
        if name not in table.column_names:
            raise MscgError(f"{path} has no column '{name}' (columns: {table.column_names}).")


def check_unique(values: pa.Array | pa.ChunkedArray, path: Path, column: str) -> None:
    """Raise if `values` holds a duplicate (names the first duplicate value)."""
    counts = pc.value_counts(values)
    dup = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(dup):
        raise MscgError(f"{path} column '{column}' lists '{dup[0].as_py()}' more than once.")


def drop_missing(table: pa.Table, columns: dict[str, str], dropped: dict[str, int]) -> pa.Table:
    """Drop rows whose column is null or blank, counted as ``dropped[reason]``."""
    for column, reason in columns.items():
        col = table.column(column)
        missing = pc.is_null(col)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            missing = pc.or_(missing, pc.fill_null(_is_blank(col), True))
        n = pc.sum(missing).as_py() or 0
        if n:
            dropped[reason] = dropped.get(reason, 0) + n
            table = table.filter(pc.invert(missing))
    return table


def apply_mask(arrays: list[np.ndarray | None], keep: np.ndarray | None) -> list:
    return [a if (a is None or keep is None) else a[keep] for a in arrays]


def build_raw_data(
    user_col: pa.Array | pa.ChunkedArray,
    item: np.ndarray,
    keep: np.ndarray | None,
    *,
    time: np.ndarray | None = None,
    rating: np.ndarray | None = None,
    **fields: Any,
) -> RawData:
    """`RawData` of N interaction rows: raw user ids `user_col` [N] encoded (`encode_ids`),
    catalogue rows `item` [N]; `keep` [N] (None: all) drops rows of unknown items from users,
    items, `time` and `rating`. `fields`: RawData's other fields (`items`, `rows_read`, ...)."""
    user, user_ids = encode_ids(user_col)
    user, item, time, rating = apply_mask([user, item, time, rating], keep)
    return RawData(user=user, item=item, time=time, user_ids=user_ids, rating=rating, **fields)


def catalogue_from_keys(keys: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Natural-order a key column; returns the sorted keys and the permutation applied."""
    order = natural_order(keys)
    return keys.take(pa.array(order)), order


def fixed_size_embeddings(values: np.ndarray) -> pa.Array:
    """[N, D] float32 -> fixed_size_list<float32>[D] Arrow array."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _interaction_table_to_raw(
    table: pa.Table,
    items: pa.Table,
    text_columns: list[str],
    *,
    cfg: PrepareConfig,
    inter_path: Path,
    item_path: Path,
    rows_read: int,
    dropped: dict[str, int],
    item_dropped: dict[str, int],
    dataset: str,
) -> RawData:
    """Shared tail of the timestamped layouts: map ids, convert time and rating (sources: the
    interactions and items files)."""
    keys = items.column("item_id")
    item, keep = map_keys(
        table.column("item_id"),
        keys,
        path=inter_path,
        column="item_id",
        catalogue=item_path,
        on_unknown=cfg.on_unknown_items,
        dropped=dropped,
    )
    ts = table.column("timestamp")
    if pa.types.is_timestamp(ts.type) or pa.types.is_date(ts.type):
        ts = pc.cast(pc.cast(ts, pa.timestamp("s")), pa.int64())
    time = pc.cast(ts, pa.float64()).to_numpy()
    rating = None
    if "rating" in table.column_names:
        rating = pc.cast(table.column("rating"), pa.float64()).to_numpy()
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
        source_files=[inter_path, item_path],
        dataset=dataset,
    )
