"""prepare: k-core, ordering, leave-one-out, the artifact layout, and every fixture layout
checked against the generator's ground truth."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mscg_lightning.artifacts import atomic_artifact, read_manifest, read_table
from mscg_lightning.data.fixtures import (
    LAYOUTS,
    fixture_config,
    fixture_truth,
    make_fixture,
)
from mscg_lightning.data.prepare import prepare
from mscg_lightning.data.prepare_config import PrepareConfig
from mscg_lightning.data.split import chronological_order, kcore_mask, leave_one_out
from mscg_lightning.errors import MscgError

# Raw id -> ground-truth index, per layout (see fixtures.py for the spellings).
ITEM_INDEX = {
    "recbole": lambda s: int(s) - 1,
    "ml100k_wheel": lambda s: int(s) - 1,
    "amazon2014": lambda s: int(s[1:]),
    "amazon2018": lambda s: int(s[1:]),
    "unisrec": lambda s: int(s[1:]),
    "amazon2023": lambda s: int(s[1:]),
    "pixelrec": lambda s: int(s[1:]),
}
USER_INDEX = {
    "recbole": lambda s: int(s) - 1,
    "ml100k_wheel": lambda s: int(s) - 1,
    "amazon2014": lambda s: int(s) - 1,
    "amazon2018": int,
    "unisrec": int,
    "amazon2023": lambda s: int(s[2:]),
    "pixelrec": lambda s: int(s[1:]),
}


def run_prepare(cfg: PrepareConfig, tmp_path: Path, data_root: Path | None = None) -> Path:
    target = tmp_path / "run" / "prepared"
    with atomic_artifact(target) as out:
        prepare(cfg, out, data_root or tmp_path, "cfghash")
    return target


def naive_kcore(pairs: list[tuple[int, int]], k_user: int, k_item: int) -> list[bool]:
    keep = [True] * len(pairs)
    while True:
        cu = Counter(u for (u, _), ok in zip(pairs, keep) if ok)
        ci = Counter(i for (_, i), ok in zip(pairs, keep) if ok)
        new = [ok and cu[u] >= k_user and ci[i] >= k_item for (u, i), ok in zip(pairs, keep)]
        if new == keep:
            return keep
        keep = new


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kcore_matches_naive_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 30, 300)
    item = np.minimum(rng.geometric(0.08, 300), 60) - 1
    keep, passes = kcore_mask(user, item, 5, 4)
    expected = naive_kcore(list(zip(user.tolist(), item.tolist())), 5, 4)
    assert keep.tolist() == expected
    assert passes >= 2  # this data needs more than one round
    # Every survivor satisfies the thresholds (the k-core property itself).
    assert (
        np.bincount(user[keep]).max(initial=0) == 0
        or (np.bincount(user[keep])[np.unique(user[keep])] >= 5).all()
    )
    assert (np.bincount(item[keep])[np.unique(item[keep])] >= 4).all()


def test_kcore_cascade_needs_several_passes() -> None:
    # user 1 has 3 interactions, one with item 9 (seen once): removing item 9 drops user 1 to 2.
    user = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    item = np.array([0, 1, 2, 0, 1, 9, 0, 1, 2])
    keep, passes = kcore_mask(user, item, 3, 2)
    assert keep.tolist() == [1, 1, 1, 0, 0, 0, 1, 1, 1]
    assert passes == 3  # round 1 drops item 9, round 2 user 1, round 3 finds nothing to drop


def test_chronological_order_breaks_ties_by_row_order() -> None:
    user = np.array([1, 0, 1, 0, 1, 0])
    time = np.array([5.0, 7.0, 5.0, 3.0, 1.0, 7.0])
    order = chronological_order(user, time)
    assert order.tolist() == [3, 1, 5, 4, 0, 2]
    # Non-integral times take the general path and must agree with a stable lexsort.
    time2 = time + 0.25
    assert chronological_order(user, time2).tolist() == np.lexsort((time2, user)).tolist()
    # Without timestamps the file order is the chronology.
    assert chronological_order(user, None).tolist() == [1, 3, 5, 0, 2, 4]


def test_chronological_order_large_random_matches_lexsort() -> None:
    rng = np.random.default_rng(0)
    user = rng.integers(0, 50, 5000)
    time = rng.integers(0, 20, 5000).astype(np.float64) * 1000.0  # many ties
    assert (chronological_order(user, time) == np.lexsort((time, user))).all()


def test_leave_one_out_against_reference() -> None:
    seqs = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1], [8, 2, 8, 1, 8]]
    user = np.repeat(np.arange(3), [len(s) for s in seqs])
    item = np.concatenate([np.array(s) for s in seqs])
    out = leave_one_out(user, item, 3, max_history=3)
    train = out["train"].to_pydict()
    valid = out["valid"].to_pydict()
    test = out["test"].to_pydict()
    for u, s in enumerate(seqs):
        assert train["items"][u] == s[:-2]
        assert valid["target"][u] == s[-2] and valid["history"][u] == s[:-2][-3:]
        assert test["target"][u] == s[-1] and test["history"][u] == s[:-1][-3:]
    assert out["train"].schema.field("items").type == pa.list_(pa.int32())
    assert out["test"].schema.field("target").type == pa.int32()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_reproduces_the_ground_truth(layout: str, tmp_path: Path) -> None:
    """No filtering (k_core 0, no dedup): the splits must be exactly the generator's sequences."""
    folder = make_fixture(layout, tmp_path / "raw", seed=3)
    cfg = fixture_config(layout, folder, k_core=0, max_history=4, dedup_images=False)
    target = run_prepare(cfg, tmp_path)
    truth = fixture_truth(seed=3)
    items = read_table(target / "items").to_pydict()
    users = read_table(target / "users").to_pydict()
    assert items["item_idx"] == list(range(len(items["item_idx"])))
    item_truth = [ITEM_INDEX[layout](s) for s in items["item_id"]]
    user_truth = [USER_INDEX[layout](s) for s in users["user_id"]]
    assert sorted(user_truth) == list(range(len(truth.sequences)))
    if layout != "pixelrec":  # "i10" < "i2": PixelRec ids are not all-digit, sorted as text
        assert item_truth == sorted(item_truth)
    train = read_table(target / "train").to_pydict()
    valid = read_table(target / "valid").to_pydict()
    test = read_table(target / "test").to_pydict()
    for u in range(len(user_truth)):
        seq = truth.sequences[user_truth[u]]
        got = [item_truth[i] for i in train["items"][u]]
        got += [item_truth[valid["target"][u]], item_truth[test["target"][u]]]
        assert got == seq
        assert [item_truth[i] for i in valid["history"][u]] == seq[:-2][-4:]
        assert [item_truth[i] for i in test["history"][u]] == seq[:-1][-4:]
    manifest = read_manifest(target, stage="prepare")
    n_inter = sum(len(s) for s in truth.sequences)
    assert manifest.rows["interactions"] == n_inter
    assert manifest.extra["num_items"] == len({i for s in truth.sequences for i in s})


@pytest.mark.parametrize("layout", LAYOUTS)
def test_stats_account_for_every_row(layout: str, tmp_path: Path) -> None:
    folder = make_fixture(layout, tmp_path / "raw")
    target = run_prepare(fixture_config(layout, folder), tmp_path)
    stats = json.loads((target / "stats.json").read_text())
    assert stats["rows_read"] == stats["interactions"] + sum(stats["rows_dropped"].values())
    assert stats["rows_read"] == sum(len(s) for s in fixture_truth().sequences)
    assert 0 < stats["sparsity"] < 1
    assert stats["sparsity"] == pytest.approx(
        1 - stats["interactions"] / (stats["users"] * stats["items"])
    )
    assert stats["coverage"]["text"] == 1.0
    manifest = read_manifest(target)
    for key in ("users", "items", "interactions"):
        assert manifest.rows[key] == stats[key]
    assert (
        manifest.rows["train"] == manifest.rows["valid"] == manifest.rows["test"] == stats["users"]
    )


def test_kcore_counts_against_naive_reference_on_fixture(tmp_path: Path) -> None:
    truth = fixture_truth(seed=5, n_users=40, n_items=60)  # sparse: the 5-core bites
    folder = make_fixture("recbole", tmp_path / "raw", seed=5, n_users=40, n_items=60)
    target = run_prepare(fixture_config("recbole", folder, k_core=5), tmp_path)
    pairs = [(u, i) for u, s in enumerate(truth.sequences) for i in s]
    keep = naive_kcore(pairs, 5, 5)
    kept = [p for p, k in zip(pairs, keep) if k]
    manifest = read_manifest(target)
    assert manifest.rows["interactions"] == len(kept)
    assert manifest.rows["users"] == len({u for u, _ in kept})
    assert manifest.rows["items"] == len({i for _, i in kept})
    stats = json.loads((target / "stats.json").read_text())
    assert stats["rows_dropped"]["k_core"] == len(pairs) - len(kept)


def test_artifact_schema_matches_architecture(tmp_path: Path) -> None:
    folder = make_fixture("amazon2018", tmp_path / "raw")
    target = run_prepare(fixture_config("amazon2018", folder, rows_per_shard=7), tmp_path)
    items = read_table(target / "items")
    assert items.schema.field("item_idx").type == pa.int32()
    assert items.schema.field("item_id").type == pa.string()
    assert items.schema.field("codes_lemb").type == pa.list_(pa.int32())
    assert len(list((target / "items").glob("part-*.parquet"))) == -(-items.num_rows // 7)
    assert read_table(target / "users").schema.field("user_idx").type == pa.int32()
    assert read_table(target / "train").schema.field("items").type == pa.list_(pa.int32())
    for split in ("valid", "test"):
        t = read_table(target / split)
        assert t.schema.field("history").type == pa.list_(pa.int32())
        assert t.schema.field("target").type == pa.int32()
    extra = read_manifest(target).extra
    assert extra["given_codes"] == {"lemb": 4, "vitemb": 4}
    assert extra["text_columns"] == ["title", "brand", "categories"]
    assert extra["num_items"] == items.num_rows and extra["target_mode"] == "per_item"
    # Codes carried as given: item B000000012 (truth 12) has lemb codes [36 % 9, 0, 0, 12].
    row = items.to_pydict()["item_id"].index("B000000012")
    assert items.column("codes_lemb")[row].as_py() == [0, 0, 0, 12]


def test_unisrec_given_embeddings_are_carried_row_aligned(tmp_path: Path) -> None:
    folder = make_fixture("unisrec", tmp_path / "raw")
    target = run_prepare(fixture_config("unisrec", folder), tmp_path)
    items = read_table(target / "items")
    assert items.schema.field("emb_text").type == pa.list_(pa.float32(), 8)
    feats = np.fromfile(folder / "Scientific.feat3CLS", dtype=np.float32).reshape(40, 8)
    got = np.array(items.column("emb_image").to_pylist(), dtype=np.float32)
    truth_rows = [int(s[1:]) for s in items.column("item_id").to_pylist()]
    np.testing.assert_array_equal(got, feats[truth_rows])
    assert read_manifest(target).extra["given_embeddings"] == {"text": 8, "image": 8}


@pytest.mark.parametrize("layout", ["amazon2023", "pixelrec"])
def test_image_dedup_maps_identical_images_to_smallest_item(layout: str, tmp_path: Path) -> None:
    folder = make_fixture(layout, tmp_path / "raw")
    # dedup_images explicit: PixelRec's protocol does not dedup (test_placeholders.py)
    target = run_prepare(fixture_config(layout, folder, k_core=0, dedup_images=True), tmp_path)
    truth = fixture_truth()
    items = read_table(target / "items").to_pydict()
    item_truth = [ITEM_INDEX[layout](s) for s in items["item_id"]]
    merged = {i for i in range(truth.n_items) if truth.dup_of[i] != i}
    assert not merged & set(item_truth)  # merged items left the catalogue
    test = read_table(target / "test").to_pydict()
    users = [USER_INDEX[layout](s) for s in read_table(target / "users").to_pydict()["user_id"]]
    for u, t in zip(users, test["target"]):
        assert item_truth[t] == truth.dup_of[truth.sequences[u][-1]]
    stats = json.loads((target / "stats.json").read_text())
    assert stats["items_merged_identical_image"] == len(merged)
    assert stats["item_rows_dropped"] == {"empty_image_file": 1}
    # The empty image file counts as no image.
    no_img = (
        items["item_id"][item_truth.index(truth.no_image[0])]
        if truth.no_image[0] in item_truth
        else None
    )
    paths = dict(zip(items["item_id"], items["image_path"]))
    if no_img is not None:
        assert paths[no_img] is None
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in paths.values() if p)


def test_drop_items_without_image_counts_rows(tmp_path: Path) -> None:
    folder = make_fixture("pixelrec", tmp_path / "raw")
    cfg = fixture_config("pixelrec", folder, k_core=0, drop_items_without_image=True)
    stats = json.loads((run_prepare(cfg, tmp_path) / "stats.json").read_text())
    truth = fixture_truth()
    n_no_image = sum(s.count(truth.no_image[0]) for s in truth.sequences)
    assert stats["rows_dropped"]["item_without_image"] == n_no_image
    assert stats["coverage"]["image"] == 1.0


def test_min_rating_filter(tmp_path: Path) -> None:
    folder = make_fixture("recbole", tmp_path / "raw")
    cfg = fixture_config("recbole", folder, k_core=0, min_rating=3.0)
    stats = json.loads((run_prepare(cfg, tmp_path) / "stats.json").read_text())
    truth = fixture_truth()
    low = sum(1 + (u + i) % 5 < 3 for u, s in enumerate(truth.sequences) for i in s)
    assert stats["rows_dropped"]["rating_below_min_rating"] == low


def test_ml100k_wheel_fixture_reads_the_stand_in_wheel(tmp_path: Path) -> None:
    folder = make_fixture("ml100k_wheel", tmp_path / "cache")
    target = run_prepare(PrepareConfig(adapter="ml100k_wheel", path=str(folder)), tmp_path)
    extra = read_manifest(target).extra
    assert extra["dataset"] == "ml-100k" and extra["text_columns"] == ["title", "year", "genres"]
    title = read_table(target / "items").column("title")[0].as_py()
    assert title.startswith("Item 0 ") and title.endswith('"quoted"')


# ----------------------------------------------------------------------------------------------
# The real data sets (skipped where ../shared/data is absent)

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
REAL = [
    ("amazon2014", "amazon-beauty", (22363, 12101, 198502)),
    ("amazon2018", "amazon-instruments", (17112, 6250, 136226)),
    ("unisrec", "amazon-scientific", (2928, 1585, 19712)),
    ("recbole", "ml-100k", (943, 1349, 99287)),
]


@pytest.mark.data
@pytest.mark.parametrize(("adapter", "folder", "counts"), REAL, ids=[r[1] for r in REAL])
def test_real_data_counts(adapter: str, folder: str, counts: tuple, tmp_path: Path) -> None:
    if not (DATA / folder).is_dir():
        pytest.skip(f"{DATA / folder} is absent")
    cfg = PrepareConfig(adapter=adapter, path=folder)  # type: ignore[arg-type]
    target = run_prepare(cfg, tmp_path, data_root=DATA)
    stats = json.loads((target / "stats.json").read_text())
    assert (stats["users"], stats["items"], stats["interactions"]) == counts
    assert stats["coverage"]["text"] == 1.0


def test_config_for_and_validation() -> None:
    from mscg_lightning.data.prepare_config import config_for

    cfg = config_for("recbole", Path("/data/x"), max_history=7)
    assert (cfg.adapter, cfg.path, cfg.max_history, cfg.k_core) == ("recbole", "/data/x", 7, 5)
    with pytest.raises(MscgError, match="prepare.path is required"):
        config_for("recbole").validate()
    config_for("ml100k_wheel").validate()  # the embedded default needs no path
