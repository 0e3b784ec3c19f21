"""Readers of raw dataset layouts; each returns the same canonical in-memory form, `RawData`.

An adapter only reads and validates: it maps raw ids to positions in the layout's item catalogue,
counts the rows it cannot use (`rows_dropped`) and raises `MscgError` for input it cannot trust
(missing file or column, wrong type, truncated JSON, duplicate ids, unknown items by default).
k-core, image dedup, ordering and the splits are `prepare.py`'s job and the same for every layout.

Catalogue order (which becomes `item_idx` order) is the layout's own item numbering where it has
one (P5 id, MQL4GRec id, UniSRec index); otherwise raw ids sorted numerically when they are all
integers, else lexicographically. Users follow the same "natural" order of their raw ids.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson

from mscg_lightning.data.validate import check_utf8, raise_not_utf8
from mscg_lightning.errors import MscgError

if TYPE_CHECKING:
    from mscg_lightning.data.prepare import PrepareConfig

NOT_DATA = {"SOURCE", "README", "LICENSE", "NOTICE"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


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


# ----------------------------------------------------------------------------------------------
# Small shared helpers


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


def catalogue_from_keys(keys: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Natural-order a key column; returns the sorted keys and the permutation applied."""
    order = natural_order(keys)
    return keys.take(pa.array(order)), order


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


def fixed_size_embeddings(values: np.ndarray) -> pa.Array:
    """[N, D] float32 -> fixed_size_list<float32>[D] Arrow array."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


# ----------------------------------------------------------------------------------------------
# RecBole atomic files (ml-100k and the embedded default)

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
    user, user_ids = encode_ids(table.column("user_id"))
    time = table.column("timestamp").to_numpy() if "timestamp" in table.column_names else None
    rating = table.column("rating").to_numpy() if "rating" in table.column_names else None
    user, item, time, rating = apply_mask([user, item, time, rating], keep)
    return RawData(
        user=user,
        item=item,
        time=time,
        user_ids=user_ids,
        items=items,
        text_columns=text_columns,
        rows_read=rows_read,
        rows_dropped=dropped,
        item_rows_dropped=item_dropped,
        rating=rating,
        source_files=sources,
        dataset=dataset,
    )


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
    user, user_ids = encode_ids(user_col)
    user, item = apply_mask([user, item], keep)
    return RawData(
        user=user,
        item=item,
        time=None,
        user_ids=user_ids,
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
    user, user_ids = encode_ids(user_col)
    user, item = apply_mask([user, item], keep)
    return RawData(
        user=user,
        item=item,
        time=None,
        user_ids=user_ids,
        items=pa.table(columns),
        text_columns=text_columns,
        rows_read=rows_read,
        rows_dropped=dropped,
        source_files=sources,
        dataset=dataset,
    )


# ----------------------------------------------------------------------------------------------
# UniSRec layout


def read_unisrec(cfg: PrepareConfig, folder: Path) -> RawData:
    """UniSRec layout: `<dataset>.test.inter` (`user_id`, `item_id_list`, `item_id`; a user's full
    sequence is the test history followed by the test target), `<dataset>.item2index`
    (ASIN \\t index), optional `<dataset>.text` (ASIN \\t text) and float32 raw feature files
    carried through as given embeddings: `given_embeddings` {name: file}, default
    {text: `<dataset>.feat1CLS`, image: `<dataset>.feat3CLS`} where present; row i = index i.

    UniSRec truncates stored histories to its max length (50); sequences longer than that are
    cut in the source files already, so they are cut here too.
    """
    dataset = cfg.dataset or find_stem(folder, ".test.inter")
    inter_path = folder / (cfg.interactions_file or f"{dataset}.test.inter")
    item_path = folder / (cfg.items_file or f"{dataset}.item2index")
    text_path = folder / f"{dataset}.text"
    dropped: dict[str, int] = {}
    item_dropped: dict[str, int] = {}
    header = _recbole_header(inter_path)
    names = {
        f: _recbole_field(header, f, inter_path) for f in ("user_id", "item_id_list", "item_id")
    }
    for want, name in names.items():
        if name is None:
            raise MscgError(f"{inter_path} has no column '{want}' (header: {list(header)}).")
    table = read_delimited(
        inter_path,
        delimiter="\t",
        column_types={n: pa.string() for n in names.values()},
        include=list(names.values()),
        dropped=dropped,
    )
    table = table.rename_columns([n.partition(":")[0] for n in table.column_names])
    if table.num_rows == 0:
        raise MscgError(f"{inter_path} holds no user rows.")
    table = drop_missing(table, {"user_id": "missing_user", "item_id": "missing_item"}, dropped)
    check_unique(table.column("user_id"), inter_path, "user_id")
    hist = pc.utf8_split_whitespace(table.column("item_id_list").combine_chunks())
    # Splitting "" (or stray spaces) yields empty tokens: drop them before counting lengths.
    tokens_ok = pc.not_equal(hist.flatten(), "")
    hist_vals = pc.filter(hist.flatten(), tokens_ok)
    parents = pc.list_parent_indices(hist).to_numpy(zero_copy_only=False)
    hist_len = np.bincount(
        parents[tokens_ok.to_numpy(zero_copy_only=False)], minlength=table.num_rows
    )
    # Interleave: each user's history values, then its target.
    n_users = table.num_rows
    total = hist_len + 1
    ends = np.cumsum(total)
    target_pos = ends - 1
    is_target = np.zeros(int(ends[-1]), dtype=bool)
    is_target[target_pos] = True
    src = np.empty(int(ends[-1]), dtype=np.int64)
    src[~is_target] = np.arange(len(hist_vals))
    src[is_target] = len(hist_vals) + np.arange(n_users)
    all_vals = pa.concat_arrays([hist_vals, table.column("item_id").combine_chunks()])
    tokens = all_vals.take(pa.array(src))
    try:
        flat = pc.cast(tokens, pa.int64()).to_numpy()
    except pa.ArrowInvalid as err:
        raise MscgError(
            f"{inter_path} columns 'item_id_list'/'item_id' hold a non-integer item ({err})."
        ) from err
    user_col = (
        table.column("user_id")
        .combine_chunks()
        .take(pa.array(np.repeat(np.arange(n_users), total)))
    )
    rows_read = len(flat) + sum(v for k, v in dropped.items())

    asins, ids = _read_id_map(item_path, "asin")
    item, keep = _map_int_ids(
        flat,
        ids,
        path=inter_path,
        column="item_id",
        catalogue=item_path,
        on_unknown=cfg.on_unknown_items,
        dropped=dropped,
    )
    columns: dict[str, pa.Array] = {"item_id": asins}
    text_columns: list[str] = []
    sources = [inter_path, item_path]
    if text_path.exists():
        th = _recbole_header(text_path)
        id_col, text_col = (
            _recbole_field(th, "item_id", text_path),
            _recbole_field(th, "text", text_path),
        )
        if id_col is None or text_col is None:
            raise MscgError(f"{text_path} needs columns 'item_id' and 'text' (header: {list(th)}).")
        text = read_delimited(
            text_path,
            delimiter="\t",
            column_types={id_col: pa.string(), text_col: pa.string()},
            include=[id_col, text_col],
            dropped=item_dropped,
        )
        check_unique(text.column(id_col), text_path, "item_id")
        pos = pc.index_in(asins, value_set=text.column(id_col).combine_chunks())
        columns["text"] = blank_to_null(pc.take(text.column(text_col).combine_chunks(), pos))
        text_columns.append("text")
        sources.append(text_path)
    emb_files = cfg.given_embeddings
    if emb_files is None:
        emb_files = {
            name: f"{dataset}.{suffix}"
            for name, suffix in (("text", "feat1CLS"), ("image", "feat3CLS"))
            if (folder / f"{dataset}.{suffix}").exists()
        }
    n_items = len(asins)
    for name, file in emb_files.items():
        path = need_file(folder / file, f"given '{name}' embedding file")
        if not np.array_equal(ids, np.arange(n_items)):
            raise MscgError(
                f"{item_path} indices are not 0..{n_items - 1}, so {path} rows "
                "cannot be matched to items."
            )
        values = np.fromfile(path, dtype=np.float32)
        if values.size % n_items:
            raise MscgError(
                f"{path} holds {values.size} float32 values, not a multiple of the {n_items} "
                f"items in {item_path}."
            )
        columns[f"emb_{name}"] = fixed_size_embeddings(values.reshape(n_items, -1))
        sources.append(path)
    user, user_ids = encode_ids(user_col)
    user, item = apply_mask([user, item], keep)
    return RawData(
        user=user,
        item=item,
        time=None,
        user_ids=user_ids,
        items=pa.table(columns),
        text_columns=text_columns,
        rows_read=rows_read,
        rows_dropped=dropped,
        item_rows_dropped=item_dropped,
        source_files=sources,
        dataset=dataset,
    )


# ----------------------------------------------------------------------------------------------
# Amazon 2023 reviews + meta JSONL and PixelRec CSV: both with an image folder


def _first_existing(folder: Path, names: list[str]) -> Path:
    for name in names:
        if (folder / name).exists():
            return folder / name
    return folder / names[0]


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
    sources: list[Path],
    dataset: str,
) -> RawData:
    """Shared tail of the timestamped layouts: map ids, convert time and rating."""
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
    user, user_ids = encode_ids(table.column("user_id"))
    ts = table.column("timestamp")
    if pa.types.is_timestamp(ts.type) or pa.types.is_date(ts.type):
        ts = pc.cast(pc.cast(ts, pa.timestamp("s")), pa.int64())
    time = pc.cast(ts, pa.float64()).to_numpy()
    rating = None
    if "rating" in table.column_names:
        rating = pc.cast(table.column("rating"), pa.float64()).to_numpy()
    user, item, time, rating = apply_mask([user, item, time, rating], keep)
    return RawData(
        user=user,
        item=item,
        time=time,
        user_ids=user_ids,
        items=items,
        text_columns=text_columns,
        rows_read=rows_read,
        rows_dropped=dropped,
        item_rows_dropped=item_dropped,
        rating=rating,
        source_files=sources,
        dataset=dataset,
    )


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
    columns["image_path"], empty = scan_images(image_dir, keys)
    if empty:
        item_dropped["empty_image_file"] = empty
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
        sources=[inter_path, item_path],
        dataset=dataset,
    )


PIXELREC_TEXT = ("title", "title_en", "tag", "description")


def read_pixelrec(cfg: PrepareConfig, folder: Path) -> RawData:
    """PixelRec: `interactions/<dataset>.csv` (`item_id`, `user_id`, `timestamp`),
    `item_info/<dataset>.csv` (`item_id` + text columns `title`, `title_en`, `tag`,
    `description` where present; counts are ignored) and covers `cover/<item_id>.jpg`.
    File names are overridable (`interactions_file`, `items_file`, `image_dir`). PixelRec's own
    protocol uses only the last item of a sequence as target: set `target_mode: last_item`.

    No real PixelRec data exists on this machine: this adapter is tested on the fixture
    generator's miniature layout only.
    """
    dataset = cfg.dataset or find_stem(folder / "interactions", ".csv")
    inter_path = folder / (cfg.interactions_file or f"interactions/{dataset}.csv")
    item_path = folder / (cfg.items_file or f"item_info/{dataset}.csv")
    dropped: dict[str, int] = {}
    table = read_delimited(
        inter_path,
        delimiter=",",
        quoted=True,
        dropped=dropped,
        column_types={"item_id": pa.string(), "user_id": pa.string()},
    )
    require_columns(table, inter_path, ["item_id", "user_id", "timestamp"])
    ts_type = table.column("timestamp").type
    if not (
        pa.types.is_integer(ts_type)
        or pa.types.is_floating(ts_type)
        or pa.types.is_timestamp(ts_type)
        or pa.types.is_null(ts_type)
    ):
        ts = table.column("timestamp").cast(pa.string())
        numeric = pc.match_substring_regex(ts, r"^\s*-?\d+(\.\d*)?\s*$")
        first = pc.filter(ts, pc.invert(pc.fill_null(numeric, True)))[0].as_py()
        raise MscgError(
            f"{inter_path} column 'timestamp' holds {first!r}, not a number or a date-time."
        )
    rows_read = table.num_rows + dropped.get("malformed_row", 0)
    if table.num_rows == 0:
        raise MscgError(f"{inter_path} holds no interaction rows.")
    table = table.select(["user_id", "item_id", "timestamp"])
    table = drop_missing(
        table,
        {"user_id": "missing_user", "item_id": "missing_item", "timestamp": "missing_timestamp"},
        dropped,
    )
    item_dropped: dict[str, int] = {}
    info = read_delimited(
        item_path,
        delimiter=",",
        quoted=True,
        dropped=item_dropped,
        column_types={"item_id": pa.string()},
    )
    require_columns(info, item_path, ["item_id"])
    if info.num_rows == 0:
        raise MscgError(f"{item_path} lists no items.")
    check_unique(info.column("item_id"), item_path, "item_id")
    keys, order = catalogue_from_keys(info.column("item_id").combine_chunks())
    info = info.take(pa.array(order))
    text_columns = [c for c in PIXELREC_TEXT if c in info.column_names]
    columns: dict[str, pa.Array] = {"item_id": keys}
    for name in text_columns:
        columns[name] = blank_to_null(info.column(name).cast(pa.string()))
    columns["image_path"], empty = scan_images(folder / (cfg.image_dir or "cover"), keys)
    if empty:
        item_dropped["empty_image_file"] = empty
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
        sources=[inter_path, item_path],
        dataset=dataset,
    )


def read_ml100k_wheel(cfg: PrepareConfig, folder: Path) -> RawData:
    """The embedded default: ml-100k read from the `recbole` PyPI wheel (see recbole_wheel)."""
    from dataclasses import replace

    from mscg_lightning.data.recbole_wheel import ml100k_dir

    return read_recbole(replace(cfg, dataset="ml-100k"), ml100k_dir(folder))


def read_interactions(cfg: PrepareConfig, folder: Path) -> RawData:
    """Your own data: one interactions table (+ optional items table); see interactions.py."""
    from mscg_lightning.data.interactions import read_interactions as read

    return read(cfg, folder)


ADAPTERS: dict[str, Callable[[PrepareConfig, Path], RawData]] = {
    "interactions": read_interactions,
    "recbole": read_recbole,
    "ml100k_wheel": read_ml100k_wheel,
    "amazon2014": read_amazon2014,
    "amazon2018": read_amazon2018,
    "unisrec": read_unisrec,
    "amazon2023": read_amazon2023,
    "pixelrec": read_pixelrec,
}
