"""Placeholder images and the per-layout image protocol of `prepare` (issue 18, items 1 and 6)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from mscg_lightning.artifacts import atomic_artifact, read_table
from mscg_lightning.data.fixtures import (
    fixture_config,
    fixture_truth,
    make_fixture,
    placeholder_bytes,
)
from mscg_lightning.data.placeholders import find_placeholders, representatives
from mscg_lightning.data.prepare import prepare
from mscg_lightning.data.prepare_config import PrepareConfig
from mscg_lightning.errors import MscgError

N_PLACEHOLDERS = 5


def run_prepare(cfg: PrepareConfig, tmp_path: Path) -> tuple[Path, dict]:
    target = tmp_path / "run" / "prepared"
    with atomic_artifact(target) as out:
        prepare(cfg, out, tmp_path, "cfghash")
    return target, json.loads((target / "stats.json").read_text())


def truth_items(target: Path) -> list[int]:
    """Ground-truth index of every prepared item (amazon2023 ids are B<9 digits>)."""
    return [int(s[1:]) for s in read_table(target / "items").column("item_id").to_pylist()]


def interactions_with(items: list[int]) -> int:
    truth = fixture_truth(placeholders=N_PLACEHOLDERS)
    return sum(i in items for s in truth.sequences for i in s)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_fixture("amazon2023", tmp_path / "raw", placeholders=N_PLACEHOLDERS)


def test_placeholders_are_dropped_before_dedup(folder: Path, tmp_path: Path) -> None:
    """Amazon protocol: interactions with placeholder items go; real duplicates still merge."""
    truth = fixture_truth(placeholders=N_PLACEHOLDERS)
    cfg = fixture_config("amazon2023", folder, k_core=0, placeholder_max_titles=N_PLACEHOLDERS - 1)
    target, stats = run_prepare(cfg, tmp_path)
    kept = set(truth_items(target))
    assert not kept & set(truth.placeholder)
    assert stats["rows_dropped"]["item_with_placeholder_image"] == interactions_with(
        truth.placeholder
    )
    info = stats["placeholder_images"]
    assert info["mode"] == "drop" and info["items"] == N_PLACEHOLDERS
    digest = hashlib.sha256(placeholder_bytes()).hexdigest()
    assert info["images"] == [
        {"sha256": digest, "items": N_PLACEHOLDERS, "titles": N_PLACEHOLDERS, "known": False}
    ]
    # Only the real byte-identical pairs were merged, not the placeholder items into one.
    assert stats["items_merged_identical_image"] == sum(d != i for i, d in enumerate(truth.dup_of))
    assert stats["rows_read"] == stats["interactions"] + sum(stats["rows_dropped"].values())


def test_without_detection_placeholders_merge_into_one_item(folder: Path, tmp_path: Path) -> None:
    """The defect the detection fixes: the byte-identical dedup merges every placeholder item."""
    truth = fixture_truth(placeholders=N_PLACEHOLDERS)
    cfg = fixture_config("amazon2023", folder, k_core=0, placeholder_images="keep")
    target, stats = run_prepare(cfg, tmp_path)
    kept = set(truth_items(target))
    assert len(kept & set(truth.placeholder)) == 1
    assert stats["placeholder_images"]["items"] == 0
    assert stats["items_merged_identical_image"] == sum(
        d != i for i, d in enumerate(truth.dup_of)
    ) + (N_PLACEHOLDERS - 1)


def test_placeholders_marked_missing_keep_their_items(folder: Path, tmp_path: Path) -> None:
    truth = fixture_truth(placeholders=N_PLACEHOLDERS)
    cfg = fixture_config(
        "amazon2023",
        folder,
        k_core=0,
        placeholder_images="missing",
        placeholder_max_titles=N_PLACEHOLDERS - 1,
    )
    target, stats = run_prepare(cfg, tmp_path)
    items = read_table(target / "items").to_pydict()
    path_of = {int(i[1:]): p for i, p in zip(items["item_id"], items["image_path"])}
    assert set(truth.placeholder) <= set(path_of)  # kept, each its own item
    assert all(path_of[i] is None for i in truth.placeholder)
    assert "item_with_placeholder_image" not in stats["rows_dropped"]
    assert stats["placeholder_images"]["items"] == N_PLACEHOLDERS
    n_with_image = sum(p is not None for p in items["image_path"])
    assert stats["coverage"]["image"] == pytest.approx(n_with_image / len(items["image_path"]))


def test_known_placeholder_hash_without_the_title_rule(folder: Path, tmp_path: Path) -> None:
    truth = fixture_truth(placeholders=N_PLACEHOLDERS)
    digest = hashlib.sha256(placeholder_bytes()).hexdigest().upper()  # case does not matter
    cfg = fixture_config(
        "amazon2023", folder, k_core=0, placeholder_max_titles=None, placeholder_hashes=[digest]
    )
    target, stats = run_prepare(cfg, tmp_path)
    assert not set(truth_items(target)) & set(truth.placeholder)
    assert stats["placeholder_images"]["images"][0]["known"] is True
    # The default threshold (10 titles) alone does not fire on 5 items.
    _, stats = run_prepare(fixture_config("amazon2023", folder, k_core=0), tmp_path / "b")
    assert stats["placeholder_images"]["items"] == 0


def test_find_placeholders_counts_distinct_titles() -> None:
    digests = ["a", "a", "a", "b", "b", "b", None]
    titles = ["x", "y", "z", "same", "same", "same", "w"]
    mask, details = find_placeholders(digests, titles, 2, set())
    assert mask.tolist() == [True, True, True, False, False, False, False]
    assert details == [{"sha256": "a", "items": 3, "titles": 3, "known": False}]
    mask, _ = find_placeholders(digests, None, 2, set())  # no titles: items count
    assert mask.tolist() == [True] * 6 + [False]
    mask, _ = find_placeholders(digests, [None] * 7, 2, set())  # untitled items are distinct
    assert mask[:6].all()
    assert representatives(["a", None, "a", "b", "b"]).tolist() == [0, 1, 0, 3, 3]


def test_bad_placeholder_options_fail_in_one_sentence(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(MscgError, match="placeholder_hashes: 'abc' is not a SHA-256"):
        run_prepare(fixture_config("amazon2023", folder, placeholder_hashes=["abc"]), tmp_path)
    with pytest.raises(MscgError, match="placeholder_images 'maybe'"):
        run_prepare(fixture_config("amazon2023", folder, placeholder_images="maybe"), tmp_path)
    assert not (tmp_path / "run" / "prepared").exists()


def test_pixelrec_is_not_deduplicated_by_default(tmp_path: Path) -> None:
    """The paper dedups (and removes placeholders) on the Amazon sets only."""
    truth = fixture_truth()
    folder = make_fixture("pixelrec", tmp_path / "raw")
    target, stats = run_prepare(fixture_config("pixelrec", folder, k_core=0), tmp_path)
    kept = {int(s[1:]) for s in read_table(target / "items").column("item_id").to_pylist()}
    dups = {i for i, d in enumerate(truth.dup_of) if d != i}
    assert dups <= kept
    assert stats["items_merged_identical_image"] == 0 and stats["dedup_images"] is False
    assert stats["placeholder_images"]["mode"] == "keep"
    _, stats = run_prepare(
        fixture_config("pixelrec", folder, k_core=0, dedup_images=True), tmp_path / "b"
    )
    assert stats["items_merged_identical_image"] == len(dups)
    assert np.all(np.array(truth.dup_of) <= np.arange(truth.n_items))


def test_configs_follow_the_image_protocol() -> None:
    """configs/pixelrec.yaml says it does not dedup; the Amazon 2023 config removes placeholders."""
    import yaml

    root = Path(__file__).resolve().parents[2] / "configs"
    pixelrec = yaml.safe_load((root / "pixelrec.yaml").read_text())["prepare"]
    assert pixelrec["dedup_images"] is False and pixelrec["placeholder_images"] == "keep"
    amazon = yaml.safe_load((root / "amazon2023-beauty.yaml").read_text())["prepare"]
    assert amazon["dedup_images"] is True and amazon["placeholder_images"] == "drop"
