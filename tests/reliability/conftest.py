"""Shared helpers of the bad-input and fault suite (issue 21): run ``mscg`` in-process and
check the contract of a refusal: the exit code, one sentence naming what is wrong, no
traceback, no artifact, and no change to the user's files."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mscg_lightning.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
FIXTURES = REPO / "tests" / "fixtures"


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def mscg(capsys) -> Callable[..., Result]:
    """``mscg(*args)``: main(args) in this process; never a traceback on stderr."""

    def run(*args: str) -> Result:
        _reattach_log_handlers()
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert "Traceback" not in err, err
        return Result(code, out, err)

    return run


def _reattach_log_handlers() -> None:
    """Point stream handlers that a previous test's capture left on a closed stream (Lightning
    adds them on import) at the current stderr, so their 'Logging error' noise is not read
    as a traceback of the command."""
    import logging
    import sys

    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and getattr(stream, "closed", False):
                handler.stream = sys.stderr  # setStream would flush the closed one


def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root`` (the user's files, to compare)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_refused(result: Result, code: int, phrase: str) -> None:
    """Exit ``code`` with one sentence on stderr that contains ``phrase``."""
    assert result.code == code, (result.code, result.err)
    # Lightning's own INFO lines (seed, devices) may precede the refusal when a stage had started
    lines = [line for line in result.err.splitlines() if line.startswith("mscg")]
    assert len(lines) == 1, result.err
    assert phrase in lines[0], lines[0]


def assert_no_artifact(run: Path) -> None:
    """No stage artifact (manifest) and no temporary directory was left in ``run``."""
    if not run.exists():
        return
    assert not list(run.rglob("manifest.json")), list(run.rglob("manifest.json"))
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]


@pytest.fixture(scope="session")
def trained_run(upstream, tmp_path_factory) -> Path:
    """A finished tiny run with genrec trained (the session's ``upstream`` plus genrec)."""
    run = tmp_path_factory.mktemp("reliability") / "run"
    shutil.copytree(upstream, run)
    args = ["genrec", "--config", str(TINY), "--run_dir", str(run), "--data_root", str(FIXTURES)]
    assert main(args) == 0
    return run


def tiny_args(run: Path, *extra: str) -> list[str]:
    return ["--config", str(TINY), "--run_dir", str(run), "--data_root", str(FIXTURES), *extra]


@pytest.fixture
def rel():
    """The helpers above, for test modules (importlib mode cannot import conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        tree_digest=tree_digest,
        assert_refused=assert_refused,
        assert_no_artifact=assert_no_artifact,
        tiny_args=tiny_args,
        TINY=TINY,
        FIXTURES=FIXTURES,
    )
