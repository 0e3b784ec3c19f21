"""Given embedding files keyed by raw item id (`prepare.given_embeddings`, any layout): joined
onto the catalogue, passed through by `text_embed.given` unchanged, missing items reported, and
every bad file one MscgError sentence naming it, with no `prepared/` left behind."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mscg_lightning.artifacts import atomic_artifact, read_manifest, read_table
from mscg_lightning.data.fixtures import fixture_config, make_fixture
from mscg_lightning.data.given_embeddings import (
    fingerprints,
    join_embeddings,
    read_embedding_file,
)
from mscg_lightning.data.prepare import prepare
from mscg_lightning.data.prepare_config import config_for
from mscg_lightning.errors import MscgError

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = str(REPO / "configs" / "tiny.yaml")
DIM = 6


def tiny_copy(tmp_path: Path) -> Path:
    """A private copy of the tiny unisrec fixture (the given files are written into it)."""
    folder = tmp_path / "data" / "tiny-unisrec"
    shutil.copytree(REPO / "tests" / "fixtures" / "tiny-unisrec", folder)
    return folder


def raw_item_ids(folder: Path) -> list[str]:
    lines = (folder / "Tiny.item2index").read_text().splitlines()
    return [line.split("\t")[0] for line in lines]


def write_parquet(path: Path, ids: list, values: object, list_type: pa.DataType | None = None):
    column = pa.array(list(values), list_type or pa.list_(pa.float32()))
    pq.write_table(pa.table({"item_id": ids, "embedding": column}), path)


def file_rows(folder: Path, seed: int = 0) -> tuple[list[str], np.ndarray, list[str]]:
    """(ids, values, dropped ids): every catalogue id but three, plus two unknown ids, shuffled."""
    ids = raw_item_ids(folder)
    dropped = [ids[1], ids[7], ids[20]]
    rows = [i for i in ids if i not in dropped] + ["NOT_AN_ITEM_1", "NOT_AN_ITEM_2"]
    rng = np.random.default_rng(seed)
    rows = [rows[k] for k in rng.permutation(len(rows))]  # the join must go by id, not order
    return rows, rng.normal(size=(len(rows), DIM)).astype(np.float32), dropped


def run_prepare(folder: Path, tmp_path: Path, files: dict[str, str]) -> Path:
    target = tmp_path / "run" / "prepared"
    cfg = config_for("unisrec", folder, dataset="Tiny", given_embeddings=files)
    with atomic_artifact(target) as out:
        prepare(cfg, out, tmp_path, "h")
    return target


# ----------------------------------------------------------------------------------------------
# The whole path through the CLI: prepare joins, text_embed passes through


def test_file_rows_reach_text_embed_unchanged(tmp_path: Path, capsys) -> None:
    from mscg_lightning.artifacts import read_embeddings
    from mscg_lightning.cli import main

    folder = tiny_copy(tmp_path)
    ids, values, dropped = file_rows(folder)
    write_parquet(folder / "llama.parquet", ids, values)
    args = [
        "--config",
        TINY_CONFIG,
        "--run_dir",
        str(tmp_path / "run"),
        "--data_root",
        str(tmp_path / "data"),
        # relative: resolved against the dataset folder, like the layout's own files
        "--prepare.given_embeddings",
        '{"llama": "llama.parquet"}',
        "--text_embed.given",
        "llama",
    ]
    assert main(["fit", *args, "--stages", "prepare,text_embed"]) == 0  # one parse: faster
    out = capsys.readouterr().out

    prepared = tmp_path / "run" / "prepared"
    items = read_table(prepared / "items", columns=["item_idx", "item_id"])
    item_ids = items.column("item_id").to_pylist()
    row_of = {i: k for k, i in enumerate(ids)}
    expected_missing = sorted(k for k, i in enumerate(item_ids) if i in dropped)
    assert expected_missing  # the fixture keeps the dropped items through its 5-core

    table = read_embeddings(tmp_path / "run" / "text_embed", num_items=len(item_ids))
    got_idx = table.item_idx.numpy()
    assert sorted(set(range(len(item_ids))) - set(got_idx.tolist())) == expected_missing
    want = np.stack([values[row_of[item_ids[k]]] for k in got_idx])
    np.testing.assert_array_equal(table.embeddings.numpy(), want)  # exact: no normalisation

    missing = pq.read_table(tmp_path / "run" / "text_embed" / "missing.parquet")
    assert sorted(missing.column("item_idx").to_pylist()) == expected_missing
    assert set(missing.column("reason").to_pylist()) == {"not in given embeddings 'llama'"}
    assert read_manifest(tmp_path / "run" / "text_embed").extra["missing"] == len(expected_missing)
    extra = read_manifest(prepared, stage="prepare").extra
    assert extra["given_embeddings"] == {"llama": DIM}
    report = extra["given_embedding_files"]["llama"]
    assert report["ids_not_in_catalogue"] == 2
    assert report["items_missing"] == len(expected_missing)
    assert report["file_rows"] == len(ids) and report["dim"] == DIM
    assert "path" not in report  # moving the data folder must not change the content hash
    stats = json.loads((prepared / "stats.json").read_text())
    assert stats["given_embedding_files"]["llama"]["path"] == str(folder / "llama.parquet")
    assert f"{len(expected_missing)} missing, 2 file ids not in the catalogue" in out


def test_pixelrec_layout_takes_a_given_file(tmp_path: Path) -> None:
    folder = make_fixture("pixelrec", tmp_path / "raw")
    ids = [f"i{k}" for k in range(40) if k != 5]
    values = np.arange(len(ids) * 3, dtype=np.float32).reshape(-1, 3)
    write_parquet(folder / "authors_text.parquet", ids, values)
    cfg = fixture_config("pixelrec", folder, given_embeddings={"authors": "authors_text.parquet"})
    target = tmp_path / "run" / "prepared"
    with atomic_artifact(target) as out:
        prepare(cfg, out, tmp_path, "h")
    items = read_table(target / "items")
    got = dict(zip(items.column("item_id").to_pylist(), items.column("emb_authors").to_pylist()))
    compared = [k for k, item in enumerate(ids) if item in got]
    assert len(compared) >= len(got) - 1  # every prepared item but i5 is in the file
    for k in compared:
        assert got[ids[k]] == values[k].tolist()
    assert got.get("i5", None) is None
    assert items.schema.field("emb_authors").type == pa.list_(pa.float32(), 3)


# ----------------------------------------------------------------------------------------------
# Reading and joining (pure functions)


def test_join_goes_by_id_and_counts_unknown_ids() -> None:
    values = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32)
    column, unknown = join_embeddings(
        pa.array(["a", "b", "c"]), pa.array(["c", "x", "a"]), values, Path("f.parquet")
    )
    assert column.to_pylist() == [[5.0, 6.0], None, [1.0, 2.0]]
    assert unknown == 1
    assert column.type == pa.list_(pa.float32(), 2)


def test_npy_and_parquet_forms_read_the_same(tmp_path: Path) -> None:
    ids = ["7", "3", "11"]
    values = np.random.default_rng(1).normal(size=(3, 4))  # float64 in both files
    np.save(tmp_path / "emb.npy", values)
    (tmp_path / "emb.ids.txt").write_text("7\n3\n11\n")
    # integer ids, float64 fixed-size lists: cast to string ids / float32
    write_parquet(tmp_path / "emb.parquet", [7, 3, 11], values, pa.list_(pa.float64(), 4))
    for name in ("emb.npy", "emb.parquet"):
        got_ids, got = read_embedding_file(tmp_path / name)
        assert got_ids.to_pylist() == ids
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, values.astype(np.float32))


def test_changed_file_changes_the_prepared_content_hash(tmp_path: Path) -> None:
    folder = tiny_copy(tmp_path)
    ids, values, _ = file_rows(folder)
    path = folder / "llama.parquet"
    files = {"llama": "llama.parquet"}
    write_parquet(path, ids, values)
    before = fingerprints(files, folder)
    first = read_manifest(run_prepare(folder, tmp_path, files)).content_hash
    again = read_manifest(run_prepare(folder, tmp_path, files)).content_hash
    assert first == again  # same file, same artifact content
    values[0, 0] += 1.0
    write_parquet(path, ids, values)
    assert read_manifest(run_prepare(folder, tmp_path, files)).content_hash != first
    assert fingerprints(files, folder) != before  # the cheap key for the pipeline sees it too
    assert fingerprints({"text": "Tiny.feat1CLS"}, folder) == {}  # only id-keyed files


# ----------------------------------------------------------------------------------------------
# Bad input: one sentence naming the file and the column or value, no artifact left


def _write(ids_fn: Callable[[list[str]], list], values_fn=None, list_type=None):
    """A Parquet writer from catalogue ids (`ids_fn`) and a [N, DIM] matrix (`values_fn`)."""

    def make(folder: Path) -> str:
        ids = ids_fn(raw_item_ids(folder))
        values = np.ones((len(ids), DIM), np.float32)
        rows = values_fn(ids, values) if values_fn else values
        write_parquet(folder / "e.parquet", ids, rows, list_type)
        return "e.parquet"

    return make


def _ragged(ids: list[str], values: np.ndarray) -> list:
    rows = [list(map(float, v)) for v in values]
    rows[4] = rows[4][:-1]
    return rows


def _nan(ids: list[str], values: np.ndarray) -> np.ndarray:
    values[9, 2] = np.nan
    return values


def _raw_bytes(name: str, data: bytes):
    def make(folder: Path) -> str:
        (folder / name).write_bytes(data)
        return name

    return make


def _table(**columns: object):
    def make(folder: Path) -> str:
        pq.write_table(pa.table(columns), folder / "e.parquet")
        return "e.parquet"

    return make


def _npy(n_ids: int, data: bytes | None = None):
    """A .npy matrix of every catalogue id (or `data` bytes) and an id list of `n_ids` lines."""

    def make(folder: Path) -> str:
        ids = raw_item_ids(folder)
        if data is None:
            np.save(folder / "e.npy", np.ones((len(ids), DIM), np.float32))
        else:
            (folder / "e.npy").write_bytes(data)
        if n_ids >= 0:
            (folder / "e.ids.txt").write_text("\n".join(ids[:n_ids]) + "\n")
        return "e.npy"

    return make


BAD = [
    ("missing_file", lambda folder: "absent.parquet", ["absent.parquet does not exist"]),
    ("unreadable", _raw_bytes("e.parquet", b"not parquet at all"), ["e.parquet", "readable"]),
    ("no_item_id", _table(id=["a"], embedding=[[1.0]]), ["e.parquet has no column 'item_id'"]),
    ("no_embedding", _table(item_id=["a"], vec=[[1.0]]), ["e.parquet has no column 'embedding'"]),
    (
        "not_floats",
        _table(item_id=["a"], embedding=["x"]),
        ["e.parquet column 'embedding' is string"],
    ),
    ("ragged", _write(lambda ids: ids, _ragged), ["e.parquet", "ragged", "'B000000004'"]),
    ("nan", _write(lambda ids: ids, _nan), ["e.parquet", "non-finite", "'B000000009'"]),
    (
        "overflow_to_inf",
        _write(lambda ids: ids, lambda i, v: v.astype(np.float64) * 1e300, pa.list_(pa.float64())),
        ["e.parquet", "non-finite", "'B000000000'"],
    ),
    (
        "duplicate_id",
        _write(lambda ids: ids + [ids[3]]),
        ["e.parquet column 'item_id' lists 'B000000003' more than once"],
    ),
    (
        "null_id",
        _write(lambda ids: [None, *ids[1:]]),
        ["e.parquet column 'item_id' is null in row 0"],
    ),
    (
        "zero_overlap",
        _write(lambda ids: [f"x{i}" for i in ids]),
        ["e.parquet shares no item id with the catalogue", "'xB000000000'", "'B000000000'"],
    ),
    ("npy_without_ids", _npy(-1), ["e.ids.txt does not exist"]),
    ("npy_id_count", _npy(5), ["e.ids.txt lists 5 item ids", "e.npy has 40 rows"]),
    ("npy_not_npy", _npy(40, b"garbage"), ["e.npy is not a readable .npy file"]),
]


@pytest.mark.parametrize(("make", "needles"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_file_fails_cleanly(
    make, needles: list[str], tmp_path: Path, assert_fails_cleanly
) -> None:
    folder = tiny_copy(tmp_path)
    name = make(folder)
    cfg = config_for("unisrec", folder, dataset="Tiny", given_embeddings={"llama": name})
    assert_fails_cleanly(cfg, tmp_path, needles)


def test_raw_feature_file_is_refused_outside_unisrec_and_names_are_checked(
    tmp_path: Path,
) -> None:
    cfg = fixture_config("recbole", tmp_path, given_embeddings={"t": "x.feat1CLS"})
    with pytest.raises(MscgError, match=r"given_embeddings.t: x.feat1CLS is neither"):
        prepare(cfg, tmp_path / "out", tmp_path, "h")
    cfg = fixture_config("unisrec", tmp_path, given_embeddings={"a:b": "x.parquet"})
    with pytest.raises(MscgError, match="name 'a:b'"):
        prepare(cfg, tmp_path / "out", tmp_path, "h")


def test_bad_file_through_the_cli_exits_2(tmp_path: Path, capsys) -> None:
    from mscg_lightning.cli import main

    folder = tiny_copy(tmp_path)
    (folder / "e.parquet").write_bytes(b"PAR1 truncated")
    args = [
        "--config",
        TINY_CONFIG,
        "--run_dir",
        str(tmp_path / "run"),
        "--data_root",
        str(tmp_path / "data"),
        "--prepare.given_embeddings",
        '{"llama": "e.parquet"}',
    ]
    assert main(["prepare", *args]) == 2
    err = capsys.readouterr().err
    assert "e.parquet is not a readable Parquet file" in err and err.count("\n") <= 2
    assert not (tmp_path / "run" / "prepared").exists()


def test_replacing_a_file_in_place_reruns_prepare(tmp_path):
    """The chain's up-to-date check sees a given file rewritten under the same name."""
    from mscg_lightning.cli import main

    folder = tiny_copy(tmp_path)
    ids = raw_item_ids(folder)
    values = np.random.default_rng(0).normal(size=(len(ids), DIM)).astype(np.float32)
    write_parquet(folder / "llama.parquet", ids, values)
    args = [
        "fit",
        "--config",
        TINY_CONFIG,
        "--run_dir",
        str(tmp_path / "run"),
        "--data_root",
        str(folder.parent),
        "--prepare.path",
        folder.name,
        "--prepare.given_embeddings",
        '{"llama": "llama.parquet"}',
        "--stages",
        "prepare",
    ]
    assert main(args) == 0
    first = read_manifest(tmp_path / "run" / "prepared").content_hash
    assert main(args) == 0  # unchanged: up to date
    assert read_manifest(tmp_path / "run" / "prepared").content_hash == first
    values[0, 0] += 1.0
    time.sleep(0.01)
    write_parquet(folder / "llama.parquet", ids, values)
    assert main(args) == 0
    assert read_manifest(tmp_path / "run" / "prepared").content_hash != first
