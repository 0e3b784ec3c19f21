import json

import numpy as np
import pytest

from mscg_lightning.artifacts import (
    Manifest,
    atomic_artifact,
    read_codes,
    read_embeddings,
    read_manifest,
    write_codes,
    write_embeddings,
)
from mscg_lightning.errors import MscgError


def _manifest(stage="rq_text", **extra):
    return Manifest(stage=stage, config_hash="abc", extra=extra)


def test_manifest_round_trip_and_content_hash_ignores_time(tmp_path):
    m = _manifest(modality="text")
    m.write(tmp_path)
    back = Manifest.read(tmp_path)
    assert back == m
    later = Manifest(**{**back.__dict__, "created_at": "2030-01-01T00:00:00+00:00"})
    assert later.content_hash == m.content_hash
    assert json.loads((tmp_path / "manifest.json").read_text())["content_hash"] == m.content_hash
    with pytest.raises(MscgError, match="made by stage 'rq_text', but stage 'sasrec'"):
        read_manifest(tmp_path, stage="sasrec")


def test_atomic_artifact_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_artifact(target) as tmp:
            (tmp / "half.parquet").write_text("x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_artifact_replaces_an_old_artifact(tmp_path):
    target = tmp_path / "out"
    for value in ("old", "new"):
        with atomic_artifact(target) as tmp:
            (tmp / "value.txt").write_text(value)
            _manifest().write(tmp)
    assert (target / "value.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_artifact_never_replaces_foreign_content(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "my_notes.txt").write_text("keep me")
    with pytest.raises(MscgError, match="is not an mscg artifact"):
        with atomic_artifact(target):
            pass
    assert (target / "my_notes.txt").read_text() == "keep me"


def test_atomic_artifact_requires_a_manifest(tmp_path):
    with pytest.raises(RuntimeError, match="no manifest.json"):
        with atomic_artifact(tmp_path / "out"):
            pass
    assert not (tmp_path / "out").exists()


def test_unwritable_parent_is_a_clear_error(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        import os

        if os.access(parent, os.W_OK):  # root ignores permissions
            pytest.skip("running as a user that can write anywhere")
        with pytest.raises(MscgError, match="not writable"):
            with atomic_artifact(parent / "out"):
                pass
    finally:
        parent.chmod(0o700)


def test_codes_round_trip_and_validation(tmp_path):
    codes = np.array([[0, 1, 0], [0, 1, 1], [2, 3, 0]])
    write_codes(tmp_path, np.array([0, 1, 2]), codes)
    _manifest(modality="text", codebook_size=4, collision_size=2).write(tmp_path)
    table = read_codes(tmp_path, num_items=3)
    assert table.codes.tolist() == codes.tolist()
    assert table.levels == 2 and table.modality == "text"
    with pytest.raises(MscgError, match="not in the catalogue of 2 items"):
        read_codes(tmp_path, num_items=2)
    write_codes(tmp_path, np.array([0, 1, 2]), np.array([[0, 1, 0], [0, 1, 0], [2, 3, 0]]))
    with pytest.raises(MscgError, match="duplicate code tuples"):
        read_codes(tmp_path)
    write_codes(tmp_path, np.array([0, 1, 2]), np.array([[0, 1, 0], [0, 9, 0], [2, 3, 0]]))
    with pytest.raises(MscgError, match="outside the codebook sizes"):
        read_codes(tmp_path)


def test_embeddings_validation(tmp_path):
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_embeddings(tmp_path, np.array([2, 0, 1]), emb)
    _manifest(stage="text_embed").write(tmp_path)
    table = read_embeddings(tmp_path, num_items=3)
    assert table.embeddings.shape == (3, 4) and table.item_idx.tolist() == [2, 0, 1]
    emb[1, 2] = np.nan
    write_embeddings(tmp_path, np.array([2, 0, 1]), emb)
    with pytest.raises(MscgError, match="non-finite values .* item_idx 0"):
        read_embeddings(tmp_path)
    write_embeddings(tmp_path, np.array([2, 2, 1]), np.zeros((3, 4), np.float32))
    with pytest.raises(MscgError, match="duplicate item_idx"):
        read_embeddings(tmp_path)
