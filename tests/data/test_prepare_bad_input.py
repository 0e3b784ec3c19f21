"""Bad input, per adapter (issue 2, item 7): each case is one MscgError sentence naming the file
and the column or value, and leaves no artifact (nor temp dir) behind."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mscg_lightning.artifacts import atomic_artifact, read_manifest
from mscg_lightning.data.fixtures import fixture_config, make_fixture
from mscg_lightning.data.prepare import prepare
from mscg_lightning.errors import MscgError


def append(name: str, text: str) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        with open(folder / name, "a", encoding="utf-8") as f:
            f.write(text)

    return mutate


def replace(name: str, old: str, new: str) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        text = (folder / name).read_text()
        assert old in text, (name, old)
        (folder / name).write_text(text.replace(old, new, 1))

    return mutate


def delete(*names: str) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        for name in names:
            for path in folder.glob(name):
                path.unlink()

    return mutate


def edit_line(name: str, prefix: str, new: str) -> Callable[[Path], None]:
    """Replace the one line of `name` that starts with `prefix`."""

    def mutate(folder: Path) -> None:
        lines = (folder / name).read_text().splitlines(keepends=True)
        hits = [k for k, line in enumerate(lines) if line.startswith(prefix)]
        assert len(hits) == 1, (name, prefix)
        lines[hits[0]] = new + "\n"
        (folder / name).write_text("".join(lines))

    return mutate


def write(name: str, text: str) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        (folder / name).write_text(text)

    return mutate


def truncate(name: str) -> Callable[[Path], None]:
    """Cut a file in the middle of its content (a half-written download)."""

    def mutate(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2 + 3])

    return mutate


def edit_json(name: str, fn: Callable[[dict], None]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        fn(data)
        (folder / name).write_text(json.dumps(data))

    return mutate


def edit_gz_lines(name: str, fn: Callable[[list[dict]], list[dict]]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        with gzip.open(folder / name, "rt") as f:
            rows = [json.loads(line) for line in f]
        with gzip.open(folder / name, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in fn(rows))

    return mutate


def chain(*mutations: Callable[[Path], None]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        for m in mutations:
            m(folder)

    return mutate


def blank_meta_item(folder: Path) -> None:
    """amazon2023: item 4 loses all text; its image goes too."""
    path = folder / "meta_All_Beauty.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        if r["parent_asin"] == "B000000004":
            r.update(title=None, features=[], description=[], categories=[], store=None)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for p in (folder / "images").glob("B000000004.*"):
        p.unlink()


def blank_pixel_item(folder: Path) -> None:
    edit_line("item_info/Pixel200K.csv", "i4,", "i4,104,4,,,")(folder)
    for p in (folder / "cover").glob("i4.*"):
        p.unlink()


NO_CONTENT = "has no text and no image"
# (layout, case id, mutation, config overrides, substrings the message must contain)
CASES = [
    # RecBole atomic files
    ("recbole", "missing_file", delete("tiny.inter"), {}, ["tiny.inter does not exist"]),
    (
        "recbole",
        "missing_column",
        replace("tiny.inter", "item_id:token", "movie_id:token"),
        {},
        ["tiny.inter has no column 'item_id'"],
    ),
    (
        "recbole",
        "wrong_type",
        append("tiny.inter", "1\t2\t3\tabc\n"),
        {},
        ["tiny.inter column 'timestamp:float'", "abc"],
    ),
    ("recbole", "empty_file", write("tiny.inter", ""), {}, ["tiny.inter is empty"]),
    (
        "recbole",
        "header_only",
        write("tiny.inter", "user_id:token\titem_id:token\n"),
        {},
        ["tiny.inter holds no interaction rows"],
    ),
    (
        "recbole",
        "duplicate_ids",
        append("tiny.item", "3\tAgain\t1999\tDrama\n"),
        {},
        ["tiny.item column 'item_id' lists '3' more than once"],
    ),
    (
        "recbole",
        "no_content",
        edit_line("tiny.item", "5\t", "5\t\t\t"),
        {},
        ["item '5'", NO_CONTENT, "tiny.item"],
    ),
    (
        "recbole",
        "unknown_item",
        append("tiny.inter", "1\t999\t3\t1600000000\n"),
        {},
        ["tiny.inter column 'item_id' references item '999'", "tiny.item"],
    ),
    # Amazon 2014 (P5)
    ("amazon2014", "missing_file", delete("Beauty.txt"), {}, ["Beauty.txt does not exist"]),
    (
        "amazon2014",
        "missing_item_file",
        delete("items_joined.tsv"),
        {},
        ["items_joined.tsv does not exist"],
    ),
    (
        "amazon2014",
        "missing_column",
        replace("items_joined.tsv", "item_id\tasin", "id\tasin"),
        {},
        ["items_joined.tsv has no column 'item_id'"],
    ),
    (
        "amazon2014",
        "wrong_type",
        append("Beauty.txt", "61 1 2 x3 4 5\n"),
        {},
        ["Beauty.txt", "references item 'x3'"],
    ),
    ("amazon2014", "empty_file", write("Beauty.txt", ""), {}, ["Beauty.txt is empty"]),
    (
        "amazon2014",
        "duplicate_user",
        append("Beauty.txt", "1 2 3 4 5 6\n"),
        {},
        ["Beauty.txt", "lists '1' more than once"],
    ),
    (
        "amazon2014",
        "duplicate_ids",
        append("items_joined.tsv", "3\tBX\tdup\tA|B\n"),
        {},
        ["items_joined.tsv column 'item_id' lists '3' more than once"],
    ),
    (
        "amazon2014",
        "truncated_json",
        truncate("LETTER_Beauty.index.json"),
        {"given_codes": {"letter": "LETTER_Beauty.index.json"}},
        ["LETTER_Beauty.index.json is not valid JSON"],
    ),
    (
        "amazon2014",
        "no_content",
        edit_line("items_joined.tsv", "5\tB000000004\t", "5\tB000000004\t\t"),
        {},
        ["item 'B000000004'", NO_CONTENT],
    ),
    (
        "amazon2014",
        "unknown_item",
        append("Beauty.txt", "61 1 2 999 4 5\n"),
        {},
        ["Beauty.txt", "references item '999'", "items_joined.tsv"],
    ),
    # Amazon 2018 (MQL4GRec)
    (
        "amazon2018",
        "missing_file",
        delete("Instruments.inter.json"),
        {},
        ["Instruments.inter.json does not exist"],
    ),
    (
        "amazon2018",
        "missing_item_file",
        delete("Instruments.item2id"),
        {},
        ["Instruments.item2id does not exist"],
    ),
    (
        "amazon2018",
        "missing_column",
        write("items_text.jsonl", json.dumps({"id": "B000000000", "title": "t"}) + "\n"),
        {},
        ["items_text.jsonl has no field 'asin'"],
    ),
    (
        "amazon2018",
        "wrong_type",
        edit_json("Instruments.inter.json", lambda d: d.update({"0": ["x"]})),
        {},
        ["Instruments.inter.json user '0'", "not a list of ints"],
    ),
    (
        "amazon2018",
        "wrong_type_id_map",
        append("Instruments.item2id", "BZZZ\tnotanint\n"),
        {},
        ["Instruments.item2id column 'id'", "notanint"],
    ),
    (
        "amazon2018",
        "empty_file",
        write("Instruments.inter.json", ""),
        {},
        ["Instruments.inter.json is empty"],
    ),
    (
        "amazon2018",
        "truncated_json",
        truncate("Instruments.inter.json"),
        {},
        ["Instruments.inter.json is not valid JSON", "truncated"],
    ),
    (
        "amazon2018",
        "truncated_codes",
        truncate("Instruments.index_lemb.json"),
        {},
        ["Instruments.index_lemb.json is not valid JSON"],
    ),
    (
        "amazon2018",
        "truncated_jsonl",
        truncate("items_text.jsonl"),
        {},
        ["items_text.jsonl is not valid JSON Lines"],
    ),
    (
        "amazon2018",
        "duplicate_user",
        replace("Instruments.inter.json", "{", '{"0": [1, 2, 3],'),
        {},
        ["Instruments.inter.json has the key '0' twice"],
    ),
    (
        "amazon2018",
        "duplicate_ids",
        append("Instruments.item2id", "B000000001\t999\n"),
        {},
        ["Instruments.item2id column 'asin' lists 'B000000001' more than once"],
    ),
    (
        "amazon2018",
        "no_content",
        chain(
            delete("Instruments.index_*.json"),
            edit_line(
                "items_text.jsonl",
                '{"asin": "B000000004"',
                json.dumps({"asin": "B000000004", "title": "", "brand": "", "categories": ""}),
            ),
        ),
        {},
        ["item 'B000000004'", NO_CONTENT],
    ),
    (
        "amazon2018",
        "unknown_item",
        edit_json("Instruments.inter.json", lambda d: d["0"].append(999)),
        {},
        ["Instruments.inter.json", "references item '999'", "Instruments.item2id"],
    ),
    # UniSRec
    (
        "unisrec",
        "missing_file",
        delete("Scientific.test.inter"),
        {},
        ["Scientific.test.inter does not exist"],
    ),
    (
        "unisrec",
        "missing_column",
        replace("Scientific.test.inter", "item_id_list:token_seq", "items:token_seq"),
        {},
        ["Scientific.test.inter has no column 'item_id_list'"],
    ),
    (
        "unisrec",
        "wrong_type",
        append("Scientific.test.inter", "998\t1 x2\t3\n"),
        {},
        ["Scientific.test.inter", "non-integer item", "x2"],
    ),
    (
        "unisrec",
        "empty_file",
        write("Scientific.item2index", ""),
        {},
        ["Scientific.item2index is empty"],
    ),
    (
        "unisrec",
        "duplicate_user",
        append("Scientific.test.inter", "0\t1 2\t3\n"),
        {},
        ["Scientific.test.inter column 'user_id' lists '0' more than once"],
    ),
    (
        "unisrec",
        "duplicate_ids",
        append("Scientific.item2index", "B000000001\t99\n"),
        {},
        ["Scientific.item2index column 'asin' lists 'B000000001' more than once"],
    ),
    (
        "unisrec",
        "bad_feature_file",
        append("Scientific.feat1CLS", "abcd"),
        {},
        ["Scientific.feat1CLS holds 321 float32 values, not a multiple of the 40 items"],
    ),
    (
        "unisrec",
        "no_content",
        delete("Scientific.text", "Scientific.feat*"),
        {},
        ["item 'B000000000'", NO_CONTENT],
    ),
    (
        "unisrec",
        "unknown_item",
        append("Scientific.test.inter", "998\t1 2\t999\n"),
        {},
        ["Scientific.test.inter", "references item '999'", "Scientific.item2index"],
    ),
    # Amazon 2023
    (
        "amazon2023",
        "missing_file",
        delete("All_Beauty.jsonl.gz"),
        {},
        ["All_Beauty.jsonl.gz does not exist"],
    ),
    (
        "amazon2023",
        "missing_column",
        edit_gz_lines(
            "All_Beauty.jsonl.gz",
            lambda rows: [{k: v for k, v in r.items() if k != "parent_asin"} for r in rows],
        ),
        {},
        ["All_Beauty.jsonl.gz has no field 'parent_asin'"],
    ),
    (
        "amazon2023",
        "wrong_type",
        edit_gz_lines("All_Beauty.jsonl.gz", lambda rows: [*rows, {**rows[0], "timestamp": "abc"}]),
        {},
        ["All_Beauty.jsonl.gz column 'timestamp'"],
    ),
    (
        "amazon2023",
        "empty_file",
        write("meta_All_Beauty.jsonl", ""),
        {},
        ["meta_All_Beauty.jsonl is empty"],
    ),
    (
        "amazon2023",
        "truncated_gz",
        truncate("All_Beauty.jsonl.gz"),
        {},
        ["All_Beauty.jsonl.gz is not valid JSON Lines"],
    ),
    (
        "amazon2023",
        "truncated_jsonl",
        truncate("meta_All_Beauty.jsonl"),
        {},
        ["meta_All_Beauty.jsonl is not valid JSON Lines"],
    ),
    (
        "amazon2023",
        "duplicate_ids",
        append(
            "meta_All_Beauty.jsonl", json.dumps({"parent_asin": "B000000001", "title": "x"}) + "\n"
        ),
        {},
        ["meta_All_Beauty.jsonl column 'parent_asin' lists 'B000000001' more than once"],
    ),
    ("amazon2023", "no_content", blank_meta_item, {}, ["item 'B000000004'", NO_CONTENT]),
    (
        "amazon2023",
        "unknown_item",
        edit_gz_lines(
            "All_Beauty.jsonl.gz", lambda rows: [*rows, {**rows[0], "parent_asin": "BZZZ"}]
        ),
        {},
        ["All_Beauty.jsonl.gz column 'item_id' references item 'BZZZ'"],
    ),
    # PixelRec
    (
        "pixelrec",
        "missing_file",
        delete("interactions/Pixel200K.csv"),
        {},
        ["Pixel200K.csv does not exist"],
    ),
    (
        "pixelrec",
        "missing_column",
        replace("interactions/Pixel200K.csv", "item_id,user_id,timestamp", "item_id,user_id,time"),
        {},
        ["interactions/Pixel200K.csv has no column 'timestamp'"],
    ),
    (
        "pixelrec",
        "wrong_type",
        append("interactions/Pixel200K.csv", "i1,u1,yesterday\n"),
        {},
        ["interactions/Pixel200K.csv column 'timestamp' holds 'yesterday'"],
    ),
    (
        "pixelrec",
        "empty_file",
        write("item_info/Pixel200K.csv", ""),
        {},
        ["item_info/Pixel200K.csv is empty"],
    ),
    (
        "pixelrec",
        "duplicate_ids",
        append("item_info/Pixel200K.csv", "i3,1,1,dup,tag,desc\n"),
        {},
        ["item_info/Pixel200K.csv column 'item_id' lists 'i3' more than once"],
    ),
    ("pixelrec", "no_content", blank_pixel_item, {}, ["item 'i4'", NO_CONTENT]),
    (
        "pixelrec",
        "unknown_item",
        append("interactions/Pixel200K.csv", "i999,u1,1600000000\n"),
        {},
        ["Pixel200K.csv column 'item_id' references item 'i999'"],
    ),
]


@pytest.mark.parametrize(
    ("layout", "mutate", "overrides", "needles"),
    [c[:1] + c[2:] for c in CASES],
    ids=[f"{c[0]}-{c[1]}" for c in CASES],
)
def test_bad_input(
    layout, mutate, overrides, needles, tmp_path: Path, assert_fails_cleanly
) -> None:
    folder = make_fixture(layout, tmp_path / "raw")
    mutate(folder)
    assert_fails_cleanly(fixture_config(layout, folder, **overrides), tmp_path, needles)


def run_ok(cfg, tmp_path: Path) -> dict:
    target = tmp_path / "run" / "prepared"
    with atomic_artifact(target) as out:
        prepare(cfg, out, tmp_path, "h")
    read_manifest(target, stage="prepare")
    return json.loads((target / "stats.json").read_text())


@pytest.mark.parametrize("layout", ["recbole", "amazon2018", "pixelrec"])
def test_unknown_items_can_be_dropped_and_counted(layout: str, tmp_path: Path) -> None:
    folder = make_fixture(layout, tmp_path / "raw")
    case = next(c for c in CASES if c[0] == layout and c[1] == "unknown_item")
    case[2](folder)
    stats = run_ok(fixture_config(layout, folder, on_unknown_items="drop"), tmp_path)
    assert stats["rows_dropped"]["unknown_item"] == 1
    assert stats["rows_read"] == stats["interactions"] + sum(stats["rows_dropped"].values())


def test_items_without_content_can_be_allowed(tmp_path: Path) -> None:
    folder = make_fixture("pixelrec", tmp_path / "raw")
    blank_pixel_item(folder)
    stats = run_ok(fixture_config("pixelrec", folder, allow_items_without_content=True), tmp_path)
    assert stats["coverage"]["text"] < 1.0


def test_output_dir_with_foreign_content_is_left_alone(tmp_path: Path) -> None:
    folder = make_fixture("recbole", tmp_path / "raw")
    target = tmp_path / "run" / "prepared"
    target.mkdir(parents=True)
    (target / "notes.txt").write_text("mine")
    with pytest.raises(MscgError, match="prepared exists and is not an mscg artifact"):
        with atomic_artifact(target) as out:
            prepare(fixture_config("recbole", folder), out, tmp_path, "h")
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["prepared"]


def test_output_dir_that_cannot_be_created(tmp_path: Path) -> None:
    folder = make_fixture("recbole", tmp_path / "raw")
    (tmp_path / "run").write_text("a file where the run directory should be")
    with pytest.raises(MscgError, match="cannot create the directory"):
        with atomic_artifact(tmp_path / "run" / "prepared") as out:
            prepare(fixture_config("recbole", folder), out, tmp_path, "h")
    assert (tmp_path / "run").is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only directories")
def test_output_dir_not_writable(tmp_path: Path) -> None:
    folder = make_fixture("recbole", tmp_path / "raw")
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o500)
    try:
        with pytest.raises(MscgError, match="is not writable"):
            with atomic_artifact(run / "prepared") as out:
                prepare(fixture_config("recbole", folder), out, tmp_path, "h")
        assert list(run.iterdir()) == []
    finally:
        run.chmod(0o700)


def test_failed_redo_keeps_the_previous_artifact(tmp_path: Path) -> None:
    folder = make_fixture("recbole", tmp_path / "raw")
    run_ok(fixture_config("recbole", folder), tmp_path)
    before = read_manifest(tmp_path / "run" / "prepared").content_hash
    append("tiny.inter", "1\t999\t3\t1600000000\n")(folder)
    with pytest.raises(MscgError, match="references item '999'"):
        with atomic_artifact(tmp_path / "run" / "prepared") as out:
            prepare(fixture_config("recbole", folder), out, tmp_path, "h")
    assert read_manifest(tmp_path / "run" / "prepared").content_hash == before
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["prepared"]


def test_bad_config_values(tmp_path: Path, assert_fails_cleanly) -> None:
    folder = make_fixture("recbole", tmp_path / "raw")
    for overrides, needles in (
        ({"max_history": 0}, ["prepare.max_history must be >= 1"]),
        ({"k_core": -1}, ["prepare.k_core must be >= 0"]),
        ({"dataset": "nothing"}, ["nothing.inter does not exist"]),
        ({"k_core": 50}, ["no user keeps 50 interactions after the 50-core", "tiny.inter"]),
    ):
        assert_fails_cleanly(fixture_config("recbole", folder, **overrides), tmp_path, needles)
    cfg = fixture_config("recbole", folder)
    cfg.path = str(tmp_path / "nowhere")
    assert_fails_cleanly(cfg, tmp_path, ["nowhere does not exist (prepare.path)"])
    beauty = make_fixture("amazon2014", tmp_path / "raw")
    assert_fails_cleanly(
        fixture_config("amazon2014", beauty, min_rating=3.0),
        tmp_path,
        ["prepare.min_rating is set but", "Beauty.txt has no rating"],
    )
