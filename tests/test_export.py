"""`mscg export` on a run of configs/interactions.yaml over a bare user_id,item_id,timestamp CSV
(no items table, no flag): codes and predictions with raw ids, Parquet and CSV, checked against
the run's own artifacts."""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mscg_lightning.artifacts import read_codes, read_manifest, read_table
from mscg_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, list[str]]:
    tmp = tmp_path_factory.mktemp("export")
    data = tmp / "data" / "mine"
    data.mkdir(parents=True)
    shutil.copy(REPO / "tests/fixtures/tiny-interactions/interactions.csv", data)
    args = ["--config", str(REPO / "configs/interactions.yaml"), "--run_dir", str(tmp / "run")]
    args += ["--data_root", str(tmp / "data"), "--prepare.path", "mine"]
    fit = list(args)
    for stage in ("sasrec", "rq_collab", "genrec"):
        fit += [f"--{stage}.trainer.max_epochs", "1", f"--{stage}.trainer.accelerator", "cpu"]
    fit += ["--genrec.trainer.check_val_every_n_epoch", "1"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["fit", *fit]) == 0
    (tmp / "fit.out").write_text(out.getvalue())
    return tmp / "run", args


def test_the_interactions_config_runs_without_items_table(run) -> None:
    run_dir, _ = run
    assert read_manifest(run_dir / "prepared").extra["text_columns"] == []
    assert (run_dir / "genrec" / "predictions.parquet").is_file()
    out = (run_dir.parent / "fit.out").read_text()
    # the console: mscg's own narrow table, not Lightning's test table (console.py)
    assert "Test metrics" in out and "sasrec " in out and "DataLoader 0" not in out
    table = [line for line in out.splitlines() if not line.startswith("[mscg]")]  # paths
    assert max(len(line) for line in table) <= 120
    assert "recall@1" in (run_dir / "metrics.md").read_text()


def test_export_parquet_matches_the_artifacts(run, tmp_path: Path) -> None:
    run_dir, args = run
    assert main(["export", *args, "--out", str(tmp_path)]) == 0
    codes = pq.read_table(tmp_path / "codes.parquet").to_pydict()
    items = read_table(run_dir / "prepared" / "items").to_pydict()
    assert codes["item_id"] == items["item_id"]
    ref = read_codes(run_dir / "rq_collab")
    by_idx = dict(zip(ref.item_idx.tolist(), ref.codes.tolist()))
    for idx, got in zip(codes["item_idx"], codes["codes_collab"]):
        assert got == by_idx.get(idx)
    pred = pq.read_table(tmp_path / "predictions.parquet").to_pydict()
    raw = pq.read_table(run_dir / "genrec" / "predictions.parquet").to_pydict()
    users = read_table(run_dir / "prepared" / "users").to_pydict()["user_id"]
    assert pred["user_id"] == [users[u] for u in raw["user_idx"]]
    assert pred["items"] == [[items["item_id"][i] for i in row] for row in raw["items"]]
    assert pred["scores"] == raw["scores"]


def test_export_csv_has_space_separated_lists(run, tmp_path: Path) -> None:
    _, args = run
    assert main(["export", *args, "--out", str(tmp_path), "--format", "csv"]) == 0
    parquet = tmp_path / "p"
    assert main(["export", *args, "--out", str(parquet)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    ref = pq.read_table(parquet / "predictions.parquet").to_pydict()
    assert [r["items"].split(" ") for r in rows] == ref["items"]
    codes = list(csv.DictReader(open(tmp_path / "codes.csv")))
    ref_codes = pq.read_table(parquet / "codes.parquet").to_pydict()["codes_collab"]
    assert [[int(c) for c in r["codes_collab"].split()] or None for r in codes] == ref_codes


def test_export_bad_format_and_missing_run(run, tmp_path: Path, capsys) -> None:
    _, args = run
    assert main(["export", *args, "--out", str(tmp_path), "--format", "xlsx"]) == 2
    assert "--format 'xlsx' is not parquet or csv" in capsys.readouterr().err
    empty = ["--config", str(REPO / "configs/interactions.yaml"), "--run_dir", str(tmp_path / "r")]
    assert main(["export", *empty]) == 2
    assert "run `mscg fit` (or `mscg prepare`) first" in capsys.readouterr().err
    assert not (tmp_path / "codes.parquet").exists()
