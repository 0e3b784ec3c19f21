"""The embedded default data set: MovieLens-100K as shipped inside the `recbole` PyPI wheel.

`pip download` fetches the wheel (no dependencies, nothing installed) into the cache directory
(`$MSCG_CACHE`, else `~/.cache/mscg_lightning`); the RecBole atomic files are then read straight
out of the wheel's zip with `zipfile`. recbole itself is never imported.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

from mscg_lightning.errors import MscgError

RECBOLE_VERSION = "1.2.1"
WHEEL_NAME = f"recbole-{RECBOLE_VERSION}-py3-none-any.whl"
# sha256 of the PyPI file (PyPI files are immutable): a different file is not the data we expect.
WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
MEMBER_DIR = "recbole/dataset_example/ml-100k"
MEMBERS = ("ml-100k.inter", "ml-100k.item")
FALLBACK = (
    "or prepare the same files from a folder instead: "
    "--prepare.adapter recbole --prepare.path ../shared/data/ml-100k"
)


def cache_dir() -> Path:
    """`$MSCG_CACHE`, else `~/.cache/mscg_lightning`."""
    return Path(os.environ.get("MSCG_CACHE") or Path.home() / ".cache" / "mscg_lightning")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run_pip(dest: Path) -> subprocess.CompletedProcess:
    """`python -m pip download --no-deps recbole==1.2.1 -d dest` (a seam for tests)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        f"recbole=={RECBOLE_VERSION}",
        "-d",
        str(dest),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


def download_wheel(cache: Path | None = None) -> Path:
    """The cached recbole wheel, downloaded with pip when absent; returns its path."""
    cache = Path(cache) if cache is not None else cache_dir()
    wheel = cache / WHEEL_NAME
    if wheel.is_file():
        return wheel
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MscgError(f"cannot create the cache directory {cache}: {err.strerror}.") from err
    tmp = cache / f".download-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        try:
            result = _run_pip(tmp)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise MscgError(
                f"could not run pip to download {WHEEL_NAME} ({err}); {FALLBACK}."
            ) from err
        got = tmp / WHEEL_NAME
        if result.returncode != 0 or not got.is_file():
            last = (result.stderr or result.stdout or "").strip().splitlines()[-1:] or ["no output"]
            raise MscgError(
                f"pip could not download {WHEEL_NAME} into {cache} ({last[0]}); {FALLBACK}."
            )
        digest = _sha256(got)
        if digest != WHEEL_SHA256:
            raise MscgError(
                f"the downloaded {WHEEL_NAME} has sha256 {digest}, not {WHEEL_SHA256}; {FALLBACK}."
            )
        got.replace(wheel)  # atomic within the cache dir: never a half wheel under the real name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return wheel


def ml100k_dir(cache: Path | None = None) -> Path:
    """A folder holding `ml-100k.inter` and `ml-100k.item` taken out of the recbole wheel.

    Downloads the wheel on first use; later calls reuse the extracted files.
    """
    cache = Path(cache) if cache is not None else cache_dir()
    out = cache / f"ml-100k-recbole-{RECBOLE_VERSION}"
    if all((out / name).is_file() for name in MEMBERS):
        return out
    wheel = download_wheel(cache)
    tmp = cache / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        try:
            with zipfile.ZipFile(wheel) as zf:
                for name in MEMBERS:
                    (tmp / name).write_bytes(zf.read(f"{MEMBER_DIR}/{name}"))
        except KeyError as err:
            raise MscgError(
                f"{wheel} has no member {err}; delete it and retry, {FALLBACK}."
            ) from err
        except zipfile.BadZipFile as err:
            raise MscgError(f"{wheel} is not a valid wheel ({err}); delete it and retry.") from err
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
