"""`mscg predict --user_histories` (issue 21 item 2): the history column's schema is checked,
unknown ids and empty histories are counted, cold-start users are flagged in the output."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mscg_lightning.data.validate import encode_user_histories
from mscg_lightning.errors import MscgError

ITEMS = pa.table(
    {"item_idx": pa.array([0, 1, 2, 3], pa.int32()), "item_id": ["10", "11", "a", "b"]}
)


def reference(rows: list) -> tuple[list[list[int]], list[bool], int]:
    """The plain loop: known ids in order, unknown ones skipped and counted."""
    to_idx = {"10": 0, "11": 1, "a": 2, "b": 3}
    out, unknown = [], 0
    for row in rows:
        known = [to_idx[str(i)] for i in (row or []) if str(i) in to_idx]
        unknown += len(row or []) - len(known)
        out.append(known)
    return out, [not h for h in out], unknown


@pytest.mark.parametrize(
    "rows, kind",
    [
        ([[10, 11], [99], [], None, [11, 10, 10]], pa.list_(pa.int64())),
        ([["a", "zz", "b"], ["10"], [], ["nope"]], pa.list_(pa.string())),
        ([[10], [11, 12]], pa.large_list(pa.int32())),
        ([], pa.list_(pa.int64())),
    ],
)
def test_histories_match_the_plain_loop(rows, kind, tmp_path):
    table = pa.table({"history": pa.array(rows, kind)})
    histories, cold, summary = encode_user_histories(table, tmp_path / "h.parquet", ITEMS)
    want, want_cold, unknown = reference(rows)
    assert [h.tolist() for h in histories] == want
    assert cold.tolist() == want_cold
    assert summary.startswith(f"{unknown} unknown item ids skipped")
    empty = sum(1 for r in rows if not r)
    assert f"{empty} empty histories" in summary and f"{sum(want_cold)} cold-start" in summary
    assert all(h.dtype == np.int64 for h in histories)


@pytest.mark.parametrize(
    "column, phrase",
    [
        (pa.array(["10 11", "a"]), "column 'history' holds string values such as '10 11'"),
        (pa.array([10, 11]), "column 'history' holds int64 values such as 10"),
        (pa.array([[1.5], [2.0]]), "holds lists of double"),
        (pa.array([[[10]], [[11]]]), "holds lists of list<item: int64>"),
    ],
)
def test_a_history_that_is_not_a_list_of_ids_is_refused(column, phrase, tmp_path):
    with pytest.raises(MscgError, match="not lists of item ids") as info:
        encode_user_histories(pa.table({"history": column}), tmp_path / "h.parquet", ITEMS)
    assert phrase in str(info.value) and "h.parquet" in str(info.value)


def test_missing_and_clashing_columns_are_refused(tmp_path):
    with pytest.raises(MscgError, match="has no column 'history'"):
        encode_user_histories(pa.table({"hist": [[10]]}), tmp_path / "h.parquet", ITEMS)
    clash = pa.table({"history": [[10]], "cold_start": [True]})
    with pytest.raises(MscgError, match="already has a column 'cold_start'"):
        encode_user_histories(clash, tmp_path / "h.parquet", ITEMS)


def test_predict_help_documents_the_schema(mscg):
    result = mscg("predict", "--help")
    assert result.code == 0
    text = " ".join(result.out.split())
    assert "one list of raw item ids" in text and "cold_start" in text and "refused" in text


def _catalogue_ids(run) -> list[str]:
    from mscg_lightning.artifacts import read_table

    return read_table(run / "prepared" / "items", columns=["item_id"]).column("item_id").to_pylist()


@pytest.mark.parametrize(
    "history, phrase",
    [
        (pa.array(["1 2 3", "4"]), "holds string values"),
        (pa.array([3, 4]), "holds int64 values"),
    ],
)
def test_predict_refuses_a_wrong_history_type(history, phrase, trained_run, tmp_path, mscg, rel):
    src = tmp_path / "h.parquet"
    pq.write_table(pa.table({"user_id": ["u1", "u2"], "history": history}), src)
    before = rel.tree_digest(tmp_path)
    result = mscg("predict", *rel.tiny_args(trained_run, "--user_histories", src))
    rel.assert_refused(result, 2, phrase)
    assert rel.tree_digest(tmp_path) == before  # no output file, input untouched


def test_predict_flags_cold_start_users(trained_run, tmp_path, mscg, rel):
    ids = _catalogue_ids(trained_run)
    src = tmp_path / "h.parquet"
    histories = [[ids[0], ids[3]], [], ["not-an-item"], None, [ids[5], "nope"]]
    table = pa.table({"user_id": [f"u{i}" for i in range(5)], "history": histories})
    pq.write_table(table, src)
    result = mscg("predict", *rel.tiny_args(trained_run, "--user_histories", src))
    assert result.code == 0, result.err
    assert "2 unknown item ids skipped, 2 empty histories, 3 cold-start users" in result.out
    out = pq.read_table(tmp_path / "h.predictions.parquet")
    assert out.column("cold_start").to_pylist() == [False, True, True, True, False]
    assert out.column("user_id").to_pylist() == [f"u{i}" for i in range(5)]
    assert all(len(items) > 0 for items in out.column("items").to_pylist())
