"""benchmarks/genrec_encoder_attention.py: per-user metrics and paired differences by hand."""

import importlib.util
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mscg_lightning.artifacts import write_shards

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "genrec_encoder_attention", REPO / "benchmarks" / "genrec_encoder_attention.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(root: Path, name: str, predictions: list[list[int]]) -> Path:
    run = root / name
    write_shards(pa.table({"user_idx": [0, 1, 2], "target": [5, 6, 7]}), run / "prepared" / "test")
    (run / "genrec").mkdir(parents=True)
    table = pa.table({"user_idx": [0, 1, 2], "items": predictions})
    pq.write_table(table, run / "genrec" / "predictions.parquet")
    return run


def test_user_metrics_and_paired_difference(tmp_path, monkeypatch):
    bench = _bench()
    # target at rank 0, rank 6, missing
    a = _run(tmp_path, "a", [[5, 1], [1, 2, 3, 4, 9, 8, 6], [1, 2]])
    b = _run(tmp_path, "b", [[1, 5], [6], [7]])  # ranks 1, 0, 0
    got = bench.user_metrics(a)
    assert got[0].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert got[1].tolist() == pytest.approx([0.0, 0.0, 1.0, 1 / math.log2(8)])
    assert got[2].tolist() == [0.0, 0.0, 0.0, 0.0]
    monkeypatch.setattr(bench, "write_result", lambda name, payload: tmp_path / f"{name}.json")
    monkeypatch.setattr(bench, "append_row", lambda *a, **k: None)
    out = bench.main(["--arm", f"a={a}", "--arm", f"b={b}", "--name", "t"])
    assert out["variants"]["a"]["test"]["recall@10"]["mean"] == pytest.approx(2 / 3)
    assert out["variants"]["b"]["test"]["recall@10"]["mean"] == pytest.approx(1.0)
    diff = out["paired"]["b-a"]["ndcg@10"]["diff"]
    expected = ((1 / math.log2(3) - 1) + (1 - 1 / math.log2(8)) + 1) / 3
    assert diff == pytest.approx(expected)
