"""Bad raw input through `mscg prepare` (issue 21 items 3, 4, 5, 8), one row per case: the
layout, how its miniature is spoiled, extra options, the exit code and a phrase the one-sentence
message must contain. Every case leaves no artifact and no change to the user's files."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mscg_lightning.data.fixtures import FIXTURE_DATASETS, make_fixture

Mutate = Callable[[Path], None]


def nothing(folder: Path) -> None:
    pass


def set_code(file: str, item: str, level: int, token: str) -> Mutate:
    def mutate(folder: Path) -> None:
        data = json.loads((folder / file).read_text())
        data[item][level] = token
        (folder / file).write_text(json.dumps(data))

    return mutate


def write_json(file: str, obj: object) -> Mutate:
    def mutate(folder: Path) -> None:
        (folder / file).write_text(json.dumps(obj))

    return mutate


def drop_last_lines(file: str, n: int) -> Mutate:
    def mutate(folder: Path) -> None:
        lines = (folder / file).read_text().splitlines(keepends=True)
        (folder / file).write_text("".join(lines[:-n]))

    return mutate


def drop_user_rows(file: str, user: str) -> Mutate:
    def mutate(folder: Path) -> None:
        lines = (folder / file).read_text().splitlines(keepends=True)
        (folder / file).write_text("".join(x for x in lines if x.split("\t")[0] != user))

    return mutate


def set_valid_target(file: str, row: int, target: str) -> Mutate:
    def mutate(folder: Path) -> None:
        lines = (folder / file).read_text().splitlines(keepends=True)
        user, hist, _ = lines[row].rstrip("\n").split("\t")
        lines[row] = f"{user}\t{hist}\t{target}\n"
        (folder / file).write_text("".join(lines))

    return mutate


def poison_floats(file: str, row: int, value: float) -> Mutate:
    def mutate(folder: Path) -> None:
        path = folder / file
        values = np.fromfile(path, dtype=np.float32).reshape(40, -1)  # the fixture's 40 items
        values[row, 1] = value
        values.tofile(path)

    return mutate


def bad_bytes(file: str, line: int, key: str) -> Mutate:
    """Put a Latin-1 byte into the string value of ``key`` on line ``line`` (1-based)."""

    def mutate(folder: Path) -> None:
        path = folder / file
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            lines = f.read().split(b"\n")
        lines[line - 1] = lines[line - 1].replace(
            f'"{key}": "'.encode(), f'"{key}": "caf'.encode() + b"\xe9 "
        )
        with opener(path, "wb") as f:
            f.write(b"\n".join(lines))

    return mutate


def npy_with_nan(folder: Path) -> None:
    values = np.ones((40, 4), dtype=np.float32)
    values[7, 2] = np.nan
    np.save(folder / "emb.npy", values)
    items = [line.split("\t")[0] for line in (folder / "tiny.item").read_text().splitlines()[1:]]
    (folder / "emb.ids.txt").write_text("\n".join(items) + "\n")


GIVEN_CODES = ["--prepare.given_codes", '{"lemb": "codes.json"}']
LETTER = {str(i): [f"<a_{i % 7}>", f"<b_{i % 5}>"] for i in range(40)}

# (id, layout, mutate, extra options, exit code, phrase)
CASES = [
    # item 3: given codes checked against the declared codebook, naming file, item and level
    (
        "amazon2018-code-above-codebook",
        "amazon2018",
        set_code("Instruments.index_lemb.json", "3", 0, "<a_50000>"),
        ["--prepare.given_codebook_size", "256"],
        2,
        "Instruments.index_lemb.json gives item 'B000000003' the code 50000 at level 1",
    ),
    (
        "amazon2018-negative-code",
        "amazon2018",
        set_code("Instruments.index_vitemb.json", "5", 2, "<c_-1>"),
        [],
        2,
        "the code -1 at level 3, but codes cannot be negative",
    ),
    (
        "amazon2018-codebook-too-small",
        "amazon2018",
        nothing,
        ["--prepare.given_codebook_size", "8"],
        2,
        "outside the codebook of prepare.given_codebook_size 8",
    ),
    (
        "amazon2014-negative-code",
        "amazon2014",
        write_json("codes.json", {**LETTER, "4": ["<a_-2>", "<b_1>"]}),
        GIVEN_CODES,
        2,
        "codes.json gives item",
    ),
    (
        "amazon2014-code-above-codebook",
        "amazon2014",
        write_json("codes.json", {**LETTER, "9": ["<a_1>", "<b_300>"]}),
        [*GIVEN_CODES, "--prepare.given_codebook_size", "256"],
        2,
        "the code 300 at level 2, outside the codebook",
    ),
    (
        "codebook-size-zero",
        "amazon2018",
        nothing,
        ["--prepare.given_codebook_size", "0"],
        2,
        "prepare.given_codebook_size must be >= 1",
    ),
    # item 4: given_codes on a layout that reads no code files is refused before any reading
    *[
        (
            f"{layout}-given-codes-unsupported",
            layout,
            write_json("codes.json", LETTER),
            GIVEN_CODES,
            2,
            f"prepare.given_codes is read only by the layouts amazon2014, amazon2018, not by "
            f"'{layout}'",
        )
        for layout in ("recbole", "unisrec", "amazon2023", "pixelrec", "ml100k_wheel")
    ],
    # item 5: the unisrec split files are cross-checked
    (
        "unisrec-test-truncated",
        "unisrec",
        drop_last_lines("Scientific.test.inter", 3),
        [],
        2,
        "is Scientific.test.inter truncated?",
    ),
    (
        "unisrec-valid-truncated",
        "unisrec",
        drop_last_lines("Scientific.valid.inter", 1),
        [],
        2,
        "is Scientific.valid.inter truncated?",
    ),
    (
        "unisrec-train-truncated",
        "unisrec",
        drop_last_lines("Scientific.train.inter", 2),
        [],
        2,
        "is Scientific.train.inter truncated?",
    ),
    (
        "unisrec-train-user-missing",
        "unisrec",
        drop_user_rows("Scientific.train.inter", "7"),
        [],
        2,
        "Scientific.train.inter has no row for 1 users",
    ),
    (
        "unisrec-valid-target-disagrees",
        "unisrec",
        set_valid_target("Scientific.valid.inter", 5, "39"),
        [],
        2,
        "the split files do not belong together",
    ),
    # item 8: NaN/inf in raw feature files and non-UTF-8 text, named by source file and row
    (
        "unisrec-feature-nan",
        "unisrec",
        poison_floats("Scientific.feat1CLS", 5, float("nan")),
        [],
        2,
        "Scientific.feat1CLS has NaN or inf in row 5",
    ),
    (
        "unisrec-feature-inf",
        "unisrec",
        poison_floats("Scientific.feat3CLS", 11, float("inf")),
        [],
        2,
        "Scientific.feat3CLS has NaN or inf in row 11",
    ),
    (
        "recbole-given-npy-nan",
        "recbole",
        npy_with_nan,
        ["--prepare.given_embeddings", '{"text": "emb.npy"}'],
        2,
        "emb.npy has non-finite values",
    ),
    (
        "amazon2023-meta-not-utf8",
        "amazon2023",
        bad_bytes("meta_All_Beauty.jsonl", 3, "title"),
        [],
        2,
        "meta_All_Beauty.jsonl is not UTF-8 text at line 3",
    ),
    (
        "amazon2023-reviews-gz-not-utf8",
        "amazon2023",
        bad_bytes("All_Beauty.jsonl.gz", 10, "user_id"),
        [],
        2,
        "All_Beauty.jsonl.gz is not UTF-8 text at line 10",
    ),
]


def no_dataset_folder(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder)


def latin1(file: str, line: int) -> Mutate:
    """Write 'Item' of line ``line`` (1-based) of a text file as Latin-1 'It\\xe9m'."""

    def mutate(folder: Path) -> None:
        lines = (folder / file).read_bytes().split(b"\n")
        lines[line - 1] = lines[line - 1].replace(b"Item", b"It\xe9m", 1)
        (folder / file).write_bytes(b"\n".join(lines))

    return mutate


# non-UTF-8 text in the delimited layouts (pyarrow: a conversion error, or a binary column)
CASES += [
    (
        f"{layout}-text-not-utf8",
        layout,
        latin1(file, 4),
        [],
        2,
        f"{file} is not UTF-8 text at line 4",
    )
    for layout, file in (
        ("recbole", "tiny.item"),
        ("pixelrec", "item_info/Pixel200K.csv"),
        ("unisrec", "Scientific.text"),
        ("amazon2014", "items_joined.tsv"),
    )
]

# every layout: a dataset folder that is not there (removed after the fixture was made)
CASES += [
    (f"{layout}-no-dataset-folder", layout, no_dataset_folder, [], 2, "does not exist")
    for layout in ("recbole", "amazon2014", "amazon2018", "unisrec", "amazon2023", "pixelrec")
]


def prepare_args(layout: str, folder: Path, run: Path, *extra: str) -> list[str]:
    return [
        "prepare",
        "--prepare.adapter",
        layout,
        "--prepare.path",
        str(folder),
        "--prepare.dataset",
        FIXTURE_DATASETS[layout],
        "--run_dir",
        str(run),
        *extra,
    ]


@pytest.mark.parametrize(
    ("layout", "mutate", "extra", "code", "phrase"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_raw_input(layout, mutate, extra, code, phrase, tmp_path, mscg, rel):
    folder = make_fixture(layout, tmp_path / "raw")
    mutate(folder)
    before = rel.tree_digest(folder) if folder.exists() else {}
    run = tmp_path / "run"
    result = mscg(*prepare_args(layout, folder, run, *extra))
    rel.assert_refused(result, code, phrase)
    rel.assert_no_artifact(run)
    assert (rel.tree_digest(folder) if folder.exists() else {}) == before


@pytest.mark.parametrize(
    ("layout", "extra"),
    [
        ("unisrec", []),  # the three split files agree
        ("amazon2018", ["--prepare.given_codebook_size", "40"]),  # the fixture's codes: 0..39
        ("amazon2014", [*GIVEN_CODES, "--prepare.given_codebook_size", "7"]),
    ],
)
def test_consistent_input_passes_the_checks(layout, extra, tmp_path, mscg):
    folder = make_fixture(layout, tmp_path / "raw")
    if layout == "amazon2014":
        write_json("codes.json", LETTER)(folder)
    result = mscg(*prepare_args(layout, folder, tmp_path / "run", *extra))
    assert result.code == 0, result.err
    assert (tmp_path / "run" / "prepared" / "manifest.json").is_file()
