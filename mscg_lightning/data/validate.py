"""Checks of raw input that no single adapter can make alone (issue 21): one MscgError sentence
naming the file, item, row or value, raised by ``prepare`` before anything is written.

* :func:`check_config`: ``prepare.given_codes`` only on layouts that read code files, and
  ``prepare.given_codebook_size`` >= 1 (called by ``PrepareConfig.validate``, at parse time);
* :func:`check_raw`: after the adapter read a layout: given codes within the declared codebook
  (never negative), raw feature files finite, the unisrec split files consistent;
* :func:`check_utf8`: a JSON Lines table's strings are UTF-8 (pyarrow accepts invalid bytes);
* :func:`extra_files`: the files these checks read, for the raw-file fingerprints.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mscg_lightning.errors import MscgError

if TYPE_CHECKING:
    from mscg_lightning.data.adapters import RawData
    from mscg_lightning.data.prepare_config import PrepareConfig

#: Layouts whose adapter reads ``prepare.given_codes`` (others would silently ignore it).
GIVEN_CODES_LAYOUTS = ("amazon2014", "amazon2018")


def check_config(cfg: PrepareConfig) -> None:
    """Settings about given codes that are wrong whatever the files hold."""
    if cfg.given_codes and cfg.adapter not in GIVEN_CODES_LAYOUTS:
        raise MscgError(
            f"prepare.given_codes is read only by the layouts {', '.join(GIVEN_CODES_LAYOUTS)}, "
            f"not by '{cfg.adapter}': remove it (or convert the data to one of those layouts)."
        )
    size = getattr(cfg, "given_codebook_size", None)
    if size is not None and size < 1:
        raise MscgError(f"prepare.given_codebook_size must be >= 1 or null, got {size}.")


def extra_files(cfg: PrepareConfig, folder: Path, dataset: str) -> list[Path]:
    """Raw files prepare reads that stats.json's ``source_files`` do not list."""
    files = [folder / f for f in (cfg.given_codes or {}).values()]
    if cfg.adapter == "unisrec" and cfg.interactions_file is None:
        files += [folder / f"{dataset}.{split}.inter" for split in ("train", "valid")]
    return [f for f in files if f.is_file()]


def check_raw(cfg: PrepareConfig, raw: RawData, folder: Path) -> None:
    """Checks of what the adapter read, before any filtering (rows are catalogue rows)."""
    check_given_codes(cfg, raw)
    check_feature_files(cfg, raw, folder)
    if cfg.adapter == "unisrec" and cfg.interactions_file is None:
        check_unisrec_splits(folder, raw.dataset)


def _code_file(cfg: PrepareConfig, raw: RawData, name: str) -> str:
    if cfg.given_codes and name in cfg.given_codes:
        return cfg.given_codes[name]
    return f"{raw.dataset}.index_{name}.json"  # amazon2018's default file of codes_<name>


def check_given_codes(cfg: PrepareConfig, raw: RawData) -> None:
    """Given codes must lie in [0, prepare.given_codebook_size) (in [0, inf) when it is null)."""
    size = getattr(cfg, "given_codebook_size", None)
    for column in raw.items.column_names:
        if not column.startswith("codes_"):
            continue
        values = raw.items.column(column).combine_chunks()
        flat = pc.list_flatten(values).to_numpy(zero_copy_only=False).astype(np.int64)
        bad = (flat < 0) | (flat >= size) if size is not None else flat < 0
        if not bad.any():
            continue
        pos = int(np.flatnonzero(bad)[0])
        parents = pc.list_parent_indices(values).to_numpy(zero_copy_only=False)
        row = int(parents[pos])
        level = pos - int(np.flatnonzero(parents == row)[0])
        item = raw.items.column("item_id")[row].as_py()
        where = f"{_code_file(cfg, raw, column[6:])} gives item '{item}' the code {int(flat[pos])}"
        if size is None:
            raise MscgError(
                f"{where} at level {level + 1}, but codes cannot be negative "
                f"({int(bad.sum())} negative codes in all)."
            )
        raise MscgError(
            f"{where} at level {level + 1}, outside the codebook of prepare.given_codebook_size "
            f"{size} (codes 0..{size - 1}; {int(bad.sum())} codes outside in all)."
        )


def check_feature_files(cfg: PrepareConfig, raw: RawData, folder: Path) -> None:
    """The adapter's raw feature files (unisrec ``.feat*CLS``) hold only finite values."""
    from mscg_lightning.data.given_embeddings import is_id_keyed

    files = {n: f for n, f in (cfg.given_embeddings or {}).items() if not is_id_keyed(f)}
    if cfg.given_embeddings is None and cfg.adapter == "unisrec":
        files = {"text": f"{raw.dataset}.feat1CLS", "image": f"{raw.dataset}.feat3CLS"}
    for column in raw.items.column_names:
        if not column.startswith("emb_"):
            continue
        emb = raw.items.column(column).combine_chunks()
        dim = emb.type.list_size
        values = pc.list_flatten(emb).to_numpy(zero_copy_only=False).reshape(-1, dim)
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            source = folder / files.get(column[4:], column)
            item = raw.items.column("item_id")[row].as_py()
            raise MscgError(
                f"{source} has NaN or inf in row {row} (item '{item}'; {int(bad.sum())} rows "
                "in all): fix or regenerate the feature file."
            )


# ----------------------------------------------------------------------------------------------
# UniSRec split files


def _read_split(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user ids [R] str, history length [R], last history item [R] str, target [R] str)."""
    from mscg_lightning.data.adapters import _recbole_field, _recbole_header, read_delimited

    header = _recbole_header(path)
    names = [_recbole_field(header, f, path) for f in ("user_id", "item_id_list", "item_id")]
    if None in names:
        raise MscgError(
            f"{path} needs columns user_id, item_id_list and item_id (header: {list(header)})."
        )
    table = read_delimited(
        path,
        delimiter="\t",
        column_types={n: pa.string() for n in names},
        include=names,
        dropped={},
    )
    users, hist, target = (table.column(n).combine_chunks() for n in names)
    lengths = pc.count_substring_regex(hist, pattern=r"\S+").to_numpy(zero_copy_only=False)
    last = pc.struct_field(pc.extract_regex(hist, pattern=r"(?P<last>\S*)\s*$"), "last")

    def strings(arr: pa.Array) -> np.ndarray:
        return np.asarray(pc.fill_null(pc.utf8_trim_whitespace(arr), "").to_pylist(), dtype=object)

    return strings(users), lengths.astype(np.int64), strings(last), strings(target)


def check_unisrec_splits(folder: Path, dataset: str) -> None:
    """Cross-check ``<dataset>.{train,valid,test}.inter`` (a truncated file loses users silently).

    valid and test list the same users; a user's valid target is the last item of its test
    history; a user's longest train row ends with the last item of its valid history, and every
    user whose valid history has two items or more has train rows. Absent files are not checked.
    """
    paths = {s: folder / f"{dataset}.{s}.inter" for s in ("train", "valid", "test")}
    if not paths["test"].is_file() or not paths["valid"].is_file():
        return
    test_u, test_len, test_last, _ = _read_split(paths["test"])
    valid_u, valid_len, valid_last, valid_target = _read_split(paths["valid"])
    _same_users(valid_u, paths["valid"], test_u, paths["test"])
    test_row = {u: i for i, u in enumerate(test_u)}
    for i, user in enumerate(valid_u):
        j = test_row[user]
        if test_len[j] and test_last[j] != valid_target[i]:
            raise MscgError(
                f"{paths['valid']} gives user '{user}' the target '{valid_target[i]}', but the "
                f"history of '{user}' in {paths['test']} ends with '{test_last[j]}': the split "
                "files do not belong together."
            )
    if not paths["train"].is_file():
        return
    train_u, train_len, _, train_target = _read_split(paths["train"])
    valid_row = {u: i for i, u in enumerate(valid_u)}
    stray = [u for u in dict.fromkeys(train_u) if u not in valid_row]
    if stray:
        raise MscgError(
            f"{paths['train']} has rows for {len(stray)} users that {paths['valid']} lacks, "
            f"such as '{stray[0]}': is {paths['valid'].name} truncated?"
        )
    # the longest train row of each user (ties: the first in file order)
    names, code = np.unique(train_u, return_inverse=True)
    order = np.lexsort((np.arange(len(train_u)), -train_len, code))
    longest = order[np.r_[True, code[order][1:] != code[order][:-1]]]
    seen = set(names)
    need = [u for u, n in zip(valid_u, valid_len) if n >= 2 and u not in seen]
    if need:
        raise MscgError(
            f"{paths['train']} has no row for {len(need)} users of {paths['valid']}, such as "
            f"'{need[0]}': is {paths['train'].name} truncated?"
        )
    for r in longest:
        i = valid_row[train_u[r]]
        if valid_len[i] and train_target[r] != valid_last[i]:
            raise MscgError(
                f"the longest row of user '{train_u[r]}' in {paths['train']} ends with item "
                f"'{train_target[r]}', but its history in {paths['valid']} ends with "
                f"'{valid_last[i]}': is {paths['train'].name} truncated?"
            )


def _same_users(a: np.ndarray, a_path: Path, b: np.ndarray, b_path: Path) -> None:
    set_a, set_b = set(a), set(b)
    for have, have_path, other, other_path in (
        (a, a_path, set_b, b_path),
        (b, b_path, set_a, a_path),
    ):
        missing = [u for u in have if u not in other]
        if missing:
            raise MscgError(
                f"{other_path} has no row for {len(missing)} of the {len(have)} users of "
                f"{have_path}, such as '{missing[0]}': is {other_path.name} truncated?"
            )


# ----------------------------------------------------------------------------------------------
# Text encoding


def check_utf8(table: pa.Table, path: Path) -> None:
    """Raise, naming the line, when a string of ``table`` (read from ``path``) is not UTF-8.

    pyarrow's JSON reader keeps invalid bytes in string columns, and its CSV reader turns a
    column with invalid bytes into a binary one (a text file has no binary columns).
    """
    binary = [
        f.name
        for f in table.schema
        if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)
    ]
    if not binary:
        try:
            table.validate(full=True)
            return
        except pa.ArrowInvalid:
            pass
    raise_not_utf8(path, f" (column '{binary[0]}')" if binary else "")


def raise_not_utf8(path: Path, column: str = "") -> None:
    """The MscgError of a text file that is not UTF-8, naming the first bad line."""
    line, offset = first_non_utf8_line(path)
    where = f" at line {line} (byte {offset} of that line)" if line else ""
    raise MscgError(f"{path} is not UTF-8 text{where}{column}: convert the file to UTF-8.")


def first_non_utf8_line(path: Path) -> tuple[int, int]:
    """(1-based line number, byte offset in it) of the first line that is not UTF-8; (0, 0)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                return number, err.start
    return 0, 0


# ----------------------------------------------------------------------------------------------
# mscg predict --user_histories

#: Columns that ``mscg predict`` adds to its output (the input must not have them already).
PREDICT_COLUMNS = ("items", "scores", "cold_start")


def encode_user_histories(
    table: pa.Table, src: Path, items: pa.Table
) -> tuple[list[np.ndarray], np.ndarray, str]:
    """The ``history`` column of ``--user_histories`` as catalogue rows, schema checked.

    ``history`` must be a list of raw item ids (integers or strings) per user, oldest first;
    ``items`` is the prepared item table (``item_idx``, ``item_id``). Unknown ids are skipped.
    Returns (histories: [U] int64 arrays of item_idx, cold_start [U] bool: no known item,
    a summary with the counts of unknown ids, empty histories and cold-start users).
    """
    if "history" not in table.column_names:
        raise MscgError(
            f"{src} has no column 'history' (a list of item ids per user, oldest first)."
        )
    for name in PREDICT_COLUMNS:
        if name in table.column_names:
            raise MscgError(f"{src} already has a column '{name}', which predict writes.")
    column = table.column("history").combine_chunks()
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        example = next((v for v in column.to_pylist() if v is not None), None)
        raise MscgError(
            f"{src} column 'history' holds {kind} values such as {example!r}, not lists of "
            "item ids: write one list per user (e.g. [12, 7, 31])."
        )
    value_type = kind.value_type
    if not (
        pa.types.is_integer(value_type)
        or pa.types.is_string(value_type)
        or pa.types.is_large_string(value_type)
        or pa.types.is_null(value_type)
    ):
        raise MscgError(
            f"{src} column 'history' holds lists of {value_type}, not lists of item ids "
            "(integers or strings)."
        )
    n_users = len(column)
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(column)
    known_ids = items.column("item_id").combine_chunks()
    pos = pc.index_in(pc.cast(flat, pa.string()), value_set=known_ids)
    known = pos.is_valid().to_numpy(zero_copy_only=False)
    item_idx = items.column("item_idx").to_numpy().astype(np.int64)
    idx = item_idx[pc.fill_null(pos, 0).to_numpy(zero_copy_only=False)]
    parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
    counts = np.bincount(parents[known], minlength=n_users)
    histories = np.split(idx[known], np.cumsum(counts)[:-1]) if n_users else []
    cold_start = counts == 0
    unknown = int((~known).sum())
    empty = int((lengths == 0).sum())
    summary = (
        f"{unknown} unknown item ids skipped, {empty} empty histories, "
        f"{int(cold_start.sum())} cold-start users (no known item; column cold_start)"
    )
    return histories, cold_start, summary


def check_prepare_section(section: object) -> None:
    """``PrepareConfig.validate`` of one prepare instance's section (a parsed chain config's
    mapping), so that a bad prepare setting fails before any stage runs (also when prepare
    itself is up to date)."""
    from mscg_lightning.data.prepare_config import PrepareConfig
    from mscg_lightning.pipeline import section_as

    if section is None:
        return
    try:
        cfg = section_as(section, PrepareConfig)
    except TypeError as err:  # the parser knows every key; a hand-built Namespace may not
        raise MscgError(f"the prepare section is not valid ({err}).") from err
    cfg.validate()
