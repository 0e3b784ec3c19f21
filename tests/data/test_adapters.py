"""Adapter helpers and layout-specific parsing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mscg_lightning.data.adapters import (
    encode_ids,
    find_stem,
    int_positions,
    map_keys,
    natural_order,
    parse_code_file,
    plain_ints,
    read_amazon2014,
    read_recbole,
    read_unisrec,
    scan_images,
)
from mscg_lightning.data.fixtures import fixture_config, fixture_truth, make_fixture
from mscg_lightning.errors import MscgError


def test_plain_ints_accepts_only_canonical_integers() -> None:
    assert plain_ints(pa.array(["12", "-3", "0", "999999999999"])).tolist() == [
        12,
        -3,
        0,
        999999999999,
    ]
    for bad in (["012"], ["1", " 2"], ["+1"], ["-0"], ["1a"], ["1.0"], ["10", None]):
        assert plain_ints(pa.array(bad, pa.string())) is None, bad


@pytest.mark.parametrize(
    "values",
    [
        ["10", "2", "10", "33", "2"],  # integers: numeric order (2 < 10 < 33)
        ["b", "a10", "a2", "b"],  # text: lexicographic order
        ["007", "7", "10"],  # leading zeros: not canonical ints, still distinct ids
        [str(x) for x in np.random.default_rng(0).integers(0, 10**15, 50)],  # wide range
    ],
)
def test_encode_ids_round_trips_in_natural_order(values: list[str]) -> None:
    codes, vocab = encode_ids(pa.array(values))
    assert [vocab[int(c)].as_py() for c in codes] == values
    vocab_list = vocab.to_pylist()
    assert len(set(vocab_list)) == len(vocab_list) == len(set(values))
    if all(v.isdigit() for v in vocab_list):
        assert [int(v) for v in vocab_list] == sorted(int(v) for v in vocab_list)
    else:
        assert vocab_list == sorted(vocab_list)


def test_natural_order() -> None:
    assert natural_order(pa.array(["10", "9", "100"])).tolist() == [1, 0, 2]
    assert natural_order(pa.array(["i10", "i9"])).tolist() == [0, 1]


@pytest.mark.parametrize("wide", [False, True])
def test_int_positions(wide: bool) -> None:
    scale = 10**12 if wide else 1  # wide range: the searchsorted path instead of a table
    keys = np.array([30, 10, 20]) * scale
    values = np.array([10, 20, 30, 40, 10]) * scale
    assert int_positions(values, keys).tolist() == [1, 2, 0, -1, 1]


def test_map_keys_unknown_policy() -> None:
    keys = pa.array(["a", "b"])
    kwargs = dict(path=Path("x.inter"), column="item_id", catalogue=Path("x.item"))
    dropped: dict[str, int] = {}
    with pytest.raises(MscgError, match="x.inter column 'item_id' references item 'z'.*x.item"):
        map_keys(pa.array(["a", "z", "b"]), keys, on_unknown="error", dropped=dropped, **kwargs)
    pos, keep = map_keys(
        pa.array(["a", "z", "b"]), keys, on_unknown="drop", dropped=dropped, **kwargs
    )
    assert pos[keep].tolist() == [0, 1] and dropped == {"unknown_item": 1}


def test_parse_code_file(tmp_path: Path) -> None:
    path = tmp_path / "codes.json"
    path.write_text(json.dumps({"0": ["<a_12>", "<b_3>"], "2": ["<a_0>", "<b_255>"]}))
    codes = parse_code_file(path, 3, "error", lambda k: int(k))
    assert codes.to_pylist() == [[12, 3], None, [0, 255]]
    path.write_text(json.dumps({"0": ["<a_1>", "<b_2>"], "1": ["<a_1>"]}))
    with pytest.raises(MscgError, match="item '1' has 1 codes, others have 2"):
        parse_code_file(path, 3, "error", lambda k: int(k))


def test_scan_images_prefers_jpg_and_skips_empty(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"png")
    (tmp_path / "a.jpg").write_bytes(b"jpg")
    (tmp_path / "b.png").write_bytes(b"png")
    (tmp_path / "c.jpg").write_bytes(b"")
    (tmp_path / "d.txt").write_bytes(b"not an image")
    paths, empty = scan_images(tmp_path, pa.array(["a", "b", "c", "d", "e"]))
    names = [None if p is None else Path(p).name for p in paths.to_pylist()]
    assert names == ["a.jpg", "b.png", None, None, None] and empty == 1


def test_find_stem_ignores_source_txt(tmp_path: Path) -> None:
    (tmp_path / "Beauty.txt").write_text("1 1 2\n")
    (tmp_path / "SOURCE.txt").write_text("where it came from")
    assert find_stem(tmp_path, ".txt") == "Beauty"
    (tmp_path / "Other.txt").write_text("1 1 2\n")
    with pytest.raises(MscgError, match="exactly one"):
        find_stem(tmp_path, ".txt")


def test_recbole_reads_text_columns_and_order(tmp_path: Path) -> None:
    folder = make_fixture("recbole", tmp_path)
    raw = read_recbole(fixture_config("recbole", folder), folder)
    assert raw.text_columns == ["title", "year", "genres"]
    assert raw.items.column("item_id").to_pylist() == [str(i) for i in range(1, 41)]
    assert raw.rows_read == len(raw.user) and raw.time is not None
    # Interactions keep the (shuffled) file order; each row maps back to the right ids.
    truth = fixture_truth()
    pairs = {(u + 1, i + 1) for u, s in enumerate(truth.sequences) for i in s}
    got = {
        (int(raw.user_ids[int(u)].as_py()), int(raw.items.column("item_id")[int(i)].as_py()))
        for u, i in zip(raw.user[:50], raw.item[:50])
    }
    assert got <= pairs


def test_recbole_malformed_rows_are_counted(tmp_path: Path) -> None:
    folder = make_fixture("recbole", tmp_path)
    with open(folder / "tiny.inter", "a") as f:
        f.write("1\t2\n")  # too few fields
        f.write("\t3\t4\t1600000000\n")  # no user
    raw = read_recbole(fixture_config("recbole", folder), folder)
    assert raw.rows_dropped == {"malformed_row": 1, "missing_user": 1}
    assert raw.rows_read == len(raw.user) + 2


def test_amazon2014_given_codes_follow_catalogue_rows(tmp_path: Path) -> None:
    folder = make_fixture("amazon2014", tmp_path)
    cfg = fixture_config("amazon2014", folder, given_codes={"letter": "LETTER_Beauty.index.json"})
    raw = read_amazon2014(cfg, folder)
    codes = raw.items.column("codes_letter").to_pylist()
    assert codes[12] == [12 % 7, 12 % 5, 12 % 3, 12]
    assert raw.items.column("item_id")[12].as_py() == "B000000012"
    assert raw.items.column("attributes")[0].as_py() == "Brand0, Beauty, red"
    assert raw.items.column("title")[3].as_py() is None  # empty title -> null, not ""


def test_unisrec_sequence_is_history_plus_target(tmp_path: Path) -> None:
    folder = make_fixture("unisrec", tmp_path)
    # A user whose test history is empty has just the target.
    with open(folder / "Scientific.test.inter", "a") as f:
        f.write("999\t\t7\n")
    raw = read_unisrec(fixture_config("unisrec", folder), folder)
    truth = fixture_truth()
    seqs: dict[str, list[int]] = {}
    for u, i in zip(raw.user, raw.item):
        seqs.setdefault(raw.user_ids[int(u)].as_py(), []).append(int(i))
    assert seqs["999"] == [7]
    for u, s in enumerate(truth.sequences):
        assert seqs[str(u)] == s
