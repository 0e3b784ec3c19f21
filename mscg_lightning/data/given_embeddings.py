"""Given item embeddings keyed by raw item id, for any layout (`prepare.given_embeddings`).

Embeddings computed elsewhere (the PixelRec authors' text embeddings, LLaMA embeddings of Amazon
items, ...) are joined onto the adapter's item catalogue by raw `item_id` and stored as the items
column `emb_<name>` (fixed_size_list<float32>[D]); `text_embed.given: <name>` or
`image_embed.given: <name>` then passes them through unchanged.

Two file forms, chosen by suffix:
- `.parquet` / `.pq`: a column `item_id` (anything castable to string) and a column `embedding`
  (list, large_list or fixed_size_list of floats), one row per item;
- `.npy`: a 2-D float matrix [N, D] plus a sibling `<stem>.ids.txt` with N lines, line i = the raw
  item id of row i.

Any other file name is left to the layout: the unisrec adapter reads raw float32 feature files
(`.feat1CLS`, row i = item index i); other layouts reject it.

The file usually covers the raw data set before k-core: ids that are not in the catalogue are
counted and ignored; catalogue items the file lacks get a null (the embedding stage lists them as
missing). A file that matches no catalogue item is an error (usually an id format mismatch).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mscg_lightning.data.adapters import check_unique
from mscg_lightning.errors import MscgError

ID_KEYED_SUFFIXES = (".parquet", ".pq", ".npy")
_NAME = re.compile(r"[A-Za-z0-9_-]+")


def is_id_keyed(file: str | Path) -> bool:
    """True when `file` is a form this module reads (Parquet or .npy), by its suffix."""
    return Path(file).suffix.lower() in ID_KEYED_SUFFIXES


def split_files(
    adapter: str, files: dict[str, str] | None
) -> tuple[dict[str, str] | None, dict[str, str]]:
    """Split `prepare.given_embeddings` into (the adapter's part, the id-keyed part).

    The adapter's part stays None when `files` is None, so that a layout keeps its defaults (the
    unisrec `.feat*CLS` files); a given mapping replaces the defaults as a whole.
    """
    if files is None:
        return None, {}
    for name in files:
        if not _NAME.fullmatch(name):
            raise MscgError(
                f"prepare.given_embeddings name '{name}' must use only letters, digits, _ and -."
            )
    own = {n: f for n, f in files.items() if is_id_keyed(f)}
    rest = {n: f for n, f in files.items() if not is_id_keyed(f)}
    if rest and adapter != "unisrec":
        name, file = next(iter(rest.items()))
        raise MscgError(
            f"prepare.given_embeddings.{name}: {file} is neither a .parquet nor a .npy file "
            f"(layout '{adapter}' reads no raw feature files)."
        )
    return rest, own


def resolve(folder: Path, file: str) -> Path:
    """A given file's path: relative to the dataset folder unless absolute (as `given_codes`)."""
    return Path(folder) / Path(file).expanduser()


def npy_ids_path(path: Path) -> Path:
    """The id list beside a `.npy` matrix: `<stem>.ids.txt`."""
    return path.with_name(f"{path.stem}.ids.txt")


def files_of(path: Path) -> list[Path]:
    """Every file that makes up one given embedding file (the .npy and its id list)."""
    return [path, npy_ids_path(path)] if path.suffix.lower() == ".npy" else [path]


def file_hash(path: Path) -> str:
    """blake2b-128 of the bytes of `path` and, for .npy, its id list (streamed: files are large)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in files_of(path):
        with open(part, "rb") as f:
            while block := f.read(1 << 23):
                digest.update(block)
    return digest.hexdigest()


def fingerprints(files: dict[str, str] | None, folder: Path) -> dict[str, list]:
    """{name: [[file name, size, mtime_ns] per file]} of the id-keyed files: a cheap staleness key.

    Part of the pipeline's prepare config hash, so that replacing a file in place reruns
    prepare; absent files give [name, None, None] (prepare then fails with a clear message).
    File names, not paths: moving the data folder alone does not rerun prepare.
    """
    out: dict[str, list] = {}
    for name, file in sorted((files or {}).items()):
        if not is_id_keyed(file):
            continue
        entry: list = []
        for part in files_of(resolve(folder, file)):
            try:
                st = part.stat()
                entry.append([part.name, st.st_size, st.st_mtime_ns])
            except OSError:
                entry.append([part.name, None, None])
        out[name] = entry
    return out


def _need(path: Path, name: str) -> None:
    if not path.is_file():
        raise MscgError(
            f"{path} does not exist (given embedding file '{name}'); check "
            "prepare.given_embeddings (relative paths start at the dataset folder)."
        )


def _read_parquet(path: Path) -> tuple[pa.Array, pa.Array]:
    """(item ids as strings, embedding column) of a Parquet embedding file."""
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as err:
        raise MscgError(f"{path} is not a readable Parquet file ({err}).") from err
    for column in ("item_id", "embedding"):
        if column not in names:
            raise MscgError(f"{path} has no column '{column}' (columns: {names}).")
    try:
        table = pq.read_table(path, columns=["item_id", "embedding"])
    except (pa.ArrowException, OSError) as err:
        raise MscgError(f"{path} is not a readable Parquet file ({err}).") from err
    emb = table.column("embedding").combine_chunks()
    if not (
        pa.types.is_list(emb.type)
        or pa.types.is_large_list(emb.type)
        or pa.types.is_fixed_size_list(emb.type)
    ) or not pa.types.is_floating(emb.type.value_type):
        raise MscgError(f"{path} column 'embedding' is {emb.type}, not a list of floats.")
    try:
        ids = pc.cast(table.column("item_id").combine_chunks(), pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise MscgError(
            f"{path} column 'item_id' is {table.column('item_id').type}, not castable to string."
        ) from err
    return ids, emb


def _parquet_matrix(path: Path, ids: pa.Array, emb: pa.Array) -> np.ndarray:
    """[N, D] float32 from a list column, checking nulls and equal lengths."""
    if ids.null_count:
        row = int(pc.index(pc.is_null(ids), True).as_py())
        raise MscgError(f"{path} column 'item_id' is null in row {row}.")
    if emb.null_count:
        row = int(pc.index(pc.is_null(emb), True).as_py())
        raise MscgError(f"{path} column 'embedding' is null for item '{ids[row].as_py()}'.")
    if len(emb) == 0:
        raise MscgError(f"{path} holds no rows.")
    lengths = pc.list_value_length(emb).to_numpy(zero_copy_only=False)
    dim = int(lengths[0])
    if dim == 0 or (lengths != dim).any():
        row = int(np.flatnonzero(lengths != dim)[0]) if dim else 0
        raise MscgError(
            f"{path} column 'embedding' has {int(lengths[row])} values for item "
            f"'{ids[row].as_py()}', but {dim} for item '{ids[0].as_py()}' (ragged dimensions)."
        )
    flat = emb.flatten()  # respects slicing offsets, unlike .values
    if flat.null_count:
        row = int(np.flatnonzero(pc.is_null(flat).to_numpy(zero_copy_only=False))[0]) // dim
        raise MscgError(
            f"{path} column 'embedding' holds a null value for item '{ids[row].as_py()}'."
        )
    with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, reported below
        values = flat.to_numpy(zero_copy_only=False).astype(np.float32)
    return values.reshape(len(emb), dim)


def _read_npy(path: Path, name: str) -> tuple[pa.Array, np.ndarray]:
    """(item ids, [N, D] float32) of a .npy matrix and its `<stem>.ids.txt`."""
    ids_path = npy_ids_path(path)
    _need(ids_path, name)
    try:
        values = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise MscgError(f"{path} is not a readable .npy file ({err}).") from err
    if values.ndim != 2 or values.dtype.kind != "f" or values.shape[1] == 0:
        raise MscgError(
            f"{path} holds a {values.dtype} array of shape {values.shape}, "
            "not a 2-D float matrix [items, dim]."
        )
    try:
        lines = ids_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise MscgError(f"{ids_path} is not UTF-8 text (byte {err.start}).") from err
    ids = [line.strip() for line in lines]
    if "" in ids:
        raise MscgError(f"{ids_path} line {ids.index('') + 1} is blank, not an item id.")
    if len(ids) != values.shape[0]:
        raise MscgError(
            f"{ids_path} lists {len(ids)} item ids, but {path} has {values.shape[0]} rows."
        )
    with np.errstate(over="ignore"):
        return pa.array(ids, pa.string()), np.asarray(values, dtype=np.float32)


def read_embedding_file(path: Path, name: str = "") -> tuple[pa.Array, np.ndarray]:
    """Read one id-keyed embedding file: (item ids [N] string, embeddings [N, D] float32).

    Raises MscgError naming the file for a missing or unreadable file, missing columns, ragged
    dimensions, nulls, non-finite values (after the cast to float32) and duplicate ids.
    """
    path = Path(path)
    _need(path, name)
    if path.suffix.lower() == ".npy":
        ids, values = _read_npy(path, name)
        counts = pc.value_counts(ids)
        dup = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
        if len(dup):
            raise MscgError(f"{npy_ids_path(path)} lists '{dup[0].as_py()}' more than once.")
    else:
        ids, emb = _read_parquet(path)
        values = _parquet_matrix(path, ids, emb)
        check_unique(ids, path, "item_id")
    bad = ~np.isfinite(values).all(axis=1)  # float64 beyond float32's range became inf here
    if bad.any():
        raise MscgError(
            f"{path} has non-finite values (NaN or inf as float32) in the embedding of item "
            f"'{ids[int(np.flatnonzero(bad)[0])].as_py()}' ({int(bad.sum())} items in all)."
        )
    return ids, values


def join_embeddings(
    item_ids: pa.Array | pa.ChunkedArray, ids: pa.Array, values: np.ndarray, path: Path
) -> tuple[pa.Array, int]:
    """Align file rows to the catalogue by raw item id.

    `item_ids` [I] the catalogue's raw ids, `ids` [N] / `values` [N, D] the file's. Returns the
    column fixed_size_list<float32>[D] of length I (null for items the file lacks) and the
    number of file ids that are not in the catalogue.
    """
    catalogue = pc.cast(item_ids, pa.string())
    if isinstance(catalogue, pa.ChunkedArray):
        catalogue = catalogue.combine_chunks()
    pos = pc.index_in(catalogue, value_set=ids)  # row of the file per item, null when absent
    matched = len(pos) - pos.null_count
    if matched == 0:
        raise MscgError(
            f"{path} shares no item id with the catalogue (file: '{ids[0].as_py()}', ..., "
            f"catalogue: '{catalogue[0].as_py()}', ...); check the id format."
        )
    dim = values.shape[1]
    rows = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim)
    return rows.take(pos), len(ids) - matched


def add_given_embeddings(
    items: pa.Table, files: dict[str, str], folder: Path
) -> tuple[pa.Table, dict[str, dict]]:
    """Append `emb_<name>` for each id-keyed file to the catalogue table `items` [I rows].

    Returns the new table and a report {name: {file (as configured), path (resolved), hash,
    dim, file_rows, ids_not_in_catalogue}} for stats.json (`manifest_entries` for the manifest).
    """
    report: dict[str, dict] = {}
    for name, file in files.items():
        column = f"emb_{name}"
        if column in items.column_names:
            raise MscgError(
                f"prepare.given_embeddings.{name}: the layout already provides '{column}'; "
                "choose another name."
            )
        path = resolve(folder, file)
        ids, values = read_embedding_file(path, name)
        joined, unknown = join_embeddings(items.column("item_id"), ids, values, path)
        items = items.append_column(column, joined)
        report[name] = {
            "file": file,
            "path": str(path),
            "hash": file_hash(path),
            "dim": int(values.shape[1]),
            "file_rows": int(values.shape[0]),
            "ids_not_in_catalogue": int(unknown),
        }
    return items, report


def count_missing(items: pa.Table, report: dict[str, dict]) -> list[str]:
    """Record per file the prepared items it lacks (`items_missing`); returns summary lines.

    Raises when a file covers none of the items left after filtering.
    """
    lines = []
    for name, entry in report.items():
        missing = int(items.column(f"emb_{name}").null_count)
        if missing == items.num_rows:
            raise MscgError(
                f"{entry['path']} has an embedding for none of the {items.num_rows} items left "
                "after filtering (k-core)."
            )
        entry["items_missing"] = missing
        lines.append(
            f"[mscg] prepare: given embeddings '{name}' ({entry['dim']}-d) from {entry['path']}: "
            f"{items.num_rows - missing} items, {missing} missing, "
            f"{entry['ids_not_in_catalogue']} file ids not in the catalogue"
        )
    return lines


def manifest_entries(report: dict[str, dict]) -> dict[str, dict]:
    """The report without resolved paths, for the manifest's `extra`.

    The content hash of the prepared artifact covers `extra`: with the file hashes in it, a
    changed file changes what every later stage sees as its input (so they rerun), while moving
    the data folder does not.
    """
    return {name: {k: v for k, v in e.items() if k != "path"} for name, e in report.items()}
