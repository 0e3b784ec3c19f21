"""UniSRec layout."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mscg_lightning.data.adapters.common import (
    RawData,
    _map_int_ids,
    blank_to_null,
    build_raw_data,
    check_unique,
    drop_missing,
    fixed_size_embeddings,
)
from mscg_lightning.data.adapters.files import _read_id_map, find_stem, need_file, read_delimited
from mscg_lightning.data.adapters.recbole import _recbole_field, _recbole_header
from mscg_lightning.errors import MscgError

if TYPE_CHECKING:
    from mscg_lightning.data.prepare_config import PrepareConfig


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
    return build_raw_data(
        user_col,
        item,
        keep,
        items=pa.table(columns),
        text_columns=text_columns,
        rows_read=rows_read,
        rows_dropped=dropped,
        item_rows_dropped=item_dropped,
        source_files=sources,
        dataset=dataset,
    )
