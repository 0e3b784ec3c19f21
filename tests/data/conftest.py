"""Shared helpers of the prepare tests: the contract of a refused input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mscg_lightning.artifacts import atomic_artifact
from mscg_lightning.data.prepare import prepare
from mscg_lightning.data.prepare_config import PrepareConfig
from mscg_lightning.errors import MscgError


def prepare_fails_cleanly(cfg: PrepareConfig, tmp_path: Path, needles: list[str]) -> str:
    """prepare(cfg) into ``tmp_path/run/prepared`` raises one MscgError sentence holding every
    needle, and leaves no artifact nor temp dir behind; that sentence."""
    target = tmp_path / "run" / "prepared"
    with pytest.raises(MscgError) as info:
        with atomic_artifact(target) as out:
            prepare(cfg, out, tmp_path, "h")
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, msg
    assert "\n" not in msg
    assert not target.exists()
    assert list((tmp_path / "run").iterdir()) == []  # the temp dir went too
    return msg


@pytest.fixture(scope="session")
def assert_fails_cleanly() -> Callable[..., str]:
    """``assert_fails_cleanly(cfg, tmp_path, needles)``: :func:`prepare_fails_cleanly`, for test
    modules (importlib mode cannot import conftest)."""
    return prepare_fails_cleanly
