"""The `interactions` adapter (your own data) and tables.py: every format against the fixture
generator's ground truth, content optional, and a clear error for each usual mistake."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mscg_lightning.artifacts import atomic_artifact, read_manifest, read_table
from mscg_lightning.data.fixtures import fixture_truth
from mscg_lightning.data.fixtures_interactions import make_interactions_fixture
from mscg_lightning.data.interactions import InteractionColumns, to_seconds
from mscg_lightning.data.prepare import prepare
from mscg_lightning.data.prepare_config import PrepareConfig
from mscg_lightning.data.tables import table_format
from mscg_lightning.errors import MscgError


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSCG_CACHE", str(tmp_path / "cache"))


def run(folder: Path, tmp_path: Path, **kw: object) -> Path:
    cfg = PrepareConfig(adapter="interactions", path=str(folder), **kw)  # type: ignore[arg-type]
    target = tmp_path / "run" / "prepared"
    with atomic_artifact(target) as out:
        prepare(cfg, out, tmp_path, "h")
    return target


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "jsonl", "csv.gz"])
@pytest.mark.parametrize("items", [True, False])
def test_every_format_reproduces_the_ground_truth(fmt: str, items: bool, tmp_path: Path) -> None:
    folder = make_interactions_fixture(tmp_path / "raw", fmt=fmt, items=items)
    target = run(folder, tmp_path, k_core=0, max_history=4, dedup_images=False)
    truth = fixture_truth()
    table = read_table(target / "items").to_pydict()
    item_truth = [int(s[1:]) for s in table["item_id"]]
    user_truth = [int(s[1:]) for s in read_table(target / "users").to_pydict()["user_id"]]
    train = read_table(target / "train").to_pydict()
    valid = read_table(target / "valid").to_pydict()
    test = read_table(target / "test").to_pydict()
    for u, raw_u in enumerate(user_truth):
        seq = truth.sequences[raw_u]
        got = [item_truth[i] for i in train["items"][u]]
        got += [item_truth[valid["target"][u]], item_truth[test["target"][u]]]
        assert got == seq
    extra = read_manifest(target).extra
    if items:
        assert extra["text_columns"] == ["title"]
        assert table["title"][0].startswith("Item ")
        # every 5th item has no image; the others point at existing files
        for raw_i, path in zip(item_truth, table["image_path"]):
            assert (path is None) == (raw_i % 5 == 4 or raw_i in truth.no_image)
            assert path is None or Path(path).is_file()
    else:
        assert extra["text_columns"] == [] and extra["image_column"] is None


def test_ties_in_time_keep_the_file_order(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    rows = ["user_id,item_id,timestamp"] + [f"u,{i},5" for i in (3, 1, 2, 9)] + ["u,7,1"]
    (folder / "interactions.csv").write_text("\n".join(rows) + "\n")
    target = run(folder, tmp_path, k_core=0)
    ids = read_table(target / "items").to_pydict()["item_id"]
    test = read_table(target / "test").to_pydict()
    assert [ids[i] for i in test["history"][0]] + [ids[test["target"][0]]] == list("73129")


def test_configurable_columns_rating_and_no_timestamp(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    lines = ["who\twhat\tstars"] + [f"a\t{i}\t{5 if i != 4 else 1}" for i in range(6)]
    (folder / "events.tsv").write_text("\n".join(lines) + "\n")
    cols = InteractionColumns(user="who", item="what", timestamp=None, rating="stars")
    target = run(
        folder, tmp_path, k_core=0, interactions_file="events.tsv", columns=cols, min_rating=3
    )
    stats = json.loads((target / "stats.json").read_text())
    assert stats["rows_dropped"] == {"rating_below_min_rating": 1}
    ids = read_table(target / "items").to_pydict()["item_id"]
    test = read_table(target / "test").to_pydict()
    assert [ids[i] for i in test["history"][0]] + [ids[test["target"][0]]] == list("01235")


def test_image_bytes_are_cached_by_content(tmp_path: Path) -> None:
    folder = make_interactions_fixture(tmp_path / "raw", fmt="parquet")
    items = pq.read_table(folder / "items.parquet").to_pydict()
    blobs = [(folder / p).read_bytes() if p else None for p in items["image"]]
    pq.write_table(
        pa.table({"item_id": items["item_id"], "title": items["title"], "picture": blobs}),
        folder / "items.parquet",
    )
    cols = InteractionColumns(image="picture")
    target = run(folder, tmp_path, k_core=0, dedup_images=False, columns=cols)
    got = read_table(target / "items").to_pydict()
    by_id = dict(zip(items["item_id"], blobs))
    for item_id, path in zip(got["item_id"], got["image_path"]):
        want = by_id[item_id] or None  # empty bytes = no image
        assert (path is None) == (want is None)
        assert path is None or Path(path).read_bytes() == want


def test_timestamps_numbers_and_iso_dates() -> None:
    col = pa.chunked_array([["1970-01-02", " 1970-01-01T00:01:00 ", "1970-01-01 00:00:01.5"]])
    assert to_seconds(col, Path("f.csv"), "t").tolist() == [86400.0, 60.0, 1.5]
    assert to_seconds(pa.chunked_array([["12", "3.5"]]), Path("f"), "t").tolist() == [12, 3.5]
    with pytest.raises(MscgError, match=r"f.csv column 't' holds 'yesterday', not a number"):
        to_seconds(pa.chunked_array([["1", "yesterday"]]), Path("f.csv"), "t")


def write(folder: Path, name: str, text: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)


INTER = "user_id,item_id,timestamp\n" + "".join(
    f"u{u},{i},{t}\n" for u in (1, 2) for t, i in enumerate("abc")
)


@pytest.mark.parametrize(
    "inter,items,kw,match",
    [
        (
            "uid,item_id,timestamp\nu,a,1\n",
            None,
            {},
            r"interactions.csv has no column 'user_id' \(it has \['uid', 'item_id', 'timestamp'\]\); name the column with prepare.columns",
        ),
        (
            "user_id,item_id,timestamp\nu,a,1\nu,b,last week\n",
            None,
            {},
            r"column 'timestamp' holds 'last week', not a number",
        ),
        (
            INTER,
            "item_id,title\na,A\nb,B\na,C\nc,D\n",
            {},
            r"items.csv column 'item_id' lists 'a' more than once",
        ),
        (
            INTER,
            "item_id,title\na,A\nb,B\n",
            {},
            r"interactions.csv column 'item_id' references item 'c', which is not in .*items.csv",
        ),
        (INTER, "id,title\na,A\n", {}, r"items.csv has no column 'item_id'"),
        (
            INTER,
            None,
            {"columns": InteractionColumns(text=["title"])},
            r"prepare.columns.text names item text columns but .* has no items table",
        ),
        (INTER, None, {"min_rating": 3.0}, r"interactions.csv has no column 'rating'"),
    ],
)
def test_usual_mistakes_are_one_sentence(
    inter: str, items: str | None, kw: dict, match: str, tmp_path: Path
) -> None:
    folder = tmp_path / "d"
    write(folder, "interactions.csv", inter)
    if items is not None:
        write(folder, "items.csv", items)
    with pytest.raises(MscgError, match=match):
        run(folder, tmp_path, k_core=0, **kw)
    assert not (tmp_path / "run" / "prepared").exists()  # no half-written artifact


def test_missing_and_ambiguous_files(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    write(folder, "other.csv", INTER)
    with pytest.raises(MscgError, match=r"has no interactions.csv .* prepare.interactions_file"):
        run(folder, tmp_path)
    write(folder, "interactions.csv", INTER)
    with gzip.open(folder / "interactions.tsv.gz", "wt") as f:
        f.write(INTER.replace(",", "\t"))
    with pytest.raises(MscgError, match=r"several interactions tables"):
        run(folder, tmp_path)


def test_table_format_by_suffix() -> None:
    assert table_format(Path("a.CSV")) == "csv"
    assert table_format(Path("x.y.tsv.gz")) == "tsv"
    assert table_format(Path("a.ndjson")) == "jsonl"
    for bad in ("a.xlsx", "a.parquet.gz", "noext"):
        with pytest.raises(MscgError, match="cannot tell the format"):
            table_format(Path(bad))
