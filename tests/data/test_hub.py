"""prepare.hub: the amazon2023 adapter reading through Hugging Face `datasets`, offline, from
tiny local datasets that `datasets` itself wrote (a hub mirror and save_to_disk folders); the
prepared splits must equal those of the plain local-file path."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from mscg_lightning.artifacts import atomic_artifact, read_table
from mscg_lightning.data.fixtures import fixture_config, make_fixture
from mscg_lightning.data.prepare import prepare
from mscg_lightning.errors import MscgError

datasets = pytest.importorskip("datasets")


def _rows(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def _prepared(cfg, tmp_path: Path, name: str) -> dict:
    target = tmp_path / name / "prepared"
    with atomic_artifact(target) as out:
        prepare(cfg, out, tmp_path, "h")
    return {t: read_table(target / t).to_pydict() for t in ("items", "train", "valid", "test")}


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    return make_fixture("amazon2023", tmp_path / "raw")


@pytest.mark.parametrize("layout", ["mirror", "saved"])
@pytest.mark.parametrize("streaming", [True, False])
def test_hub_equals_local_files(raw: Path, tmp_path: Path, layout: str, streaming: bool) -> None:
    reviews = datasets.Dataset.from_list(_rows(raw / "All_Beauty.jsonl.gz"))
    meta = datasets.Dataset.from_list(_rows(raw / "meta_All_Beauty.jsonl"))
    hub = tmp_path / "hub"
    if layout == "mirror":  # the file layout of McAuley-Lab/Amazon-Reviews-2023
        reviews.to_json(hub / "raw/review_categories/All_Beauty.jsonl", lines=True)
        meta.to_json(hub / "raw/meta_categories/meta_All_Beauty.jsonl", lines=True)
    else:
        reviews.save_to_disk(str(hub / "All_Beauty"))
        meta.save_to_disk(str(hub / "meta_All_Beauty"))
    want = _prepared(fixture_config("amazon2023", raw), tmp_path, "local")
    images = tmp_path / "images_only"
    shutil.copytree(raw / "images", images / "images")  # `path` holds only the images now
    cfg = fixture_config("amazon2023", images, hub=str(hub), hub_streaming=streaming)
    got = _prepared(cfg, tmp_path, "hub")
    assert got["train"] == want["train"] and got["test"] == want["test"]
    assert got["items"]["item_id"] == want["items"]["item_id"]
    assert got["items"]["title"] == want["items"]["title"]


def test_hub_errors_name_the_file(raw: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    cfg = fixture_config("amazon2023", raw, hub=str(tmp_path / "empty"))
    with pytest.raises(MscgError, match=r"review_categories/All_Beauty.jsonl does not exist"):
        _prepared(cfg, tmp_path, "a")
    cfg = fixture_config("amazon2023", raw, hub=str(tmp_path / "empty"), dataset=None)
    with pytest.raises(MscgError, match=r"prepare.hub needs prepare.dataset"):
        _prepared(cfg, tmp_path, "b")
    bad = fixture_config("pixelrec", raw, hub="x/y")
    with pytest.raises(MscgError, match=r"prepare.hub works with adapter amazon2023"):
        bad.validate()
