"""Faults (issue 21 items 9, 11): a truncated checkpoint, a full disk, a read-only run directory,
leftover temporary directories, Ctrl-C. One sentence each, no traceback, no half artifact."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mscg_lightning import pipeline, storage
from mscg_lightning.errors import MscgError

# ----------------------------------------------------------------------------------------------
# Truncated or corrupt checkpoints


def test_a_truncated_checkpoint_given_to_predict_is_one_sentence(trained_run, tmp_path, mscg, rel):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    ckpt = run / "genrec" / "model.ckpt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    src = tmp_path / "h.parquet"
    pq.write_table(pa.table({"history": [["x"]]}), src)
    for command in ("predict", "attribute"):
        extra = ["--user_histories", src] if command == "predict" else []
        result = mscg(command, *rel.tiny_args(run, *extra))
        rel.assert_refused(result, 2, f"the checkpoint {ckpt} is truncated or corrupt")
        assert "mscg genrec --force" in result.err
    assert not (tmp_path / "h.predictions.parquet").exists()


@pytest.mark.parametrize(
    "content, phrase",
    [
        (b"", "truncated or corrupt"),
        (b"not a zip at all" * 10, "truncated or corrupt"),
        ("list", "is not a Lightning checkpoint"),
    ],
)
def test_load_checkpoint_names_the_file(content, phrase, tmp_path):
    path = tmp_path / "model.ckpt"
    if content == "list":
        torch.save([1, 2], path)
    else:
        path.write_bytes(content)
    with pytest.raises(MscgError, match=phrase) as info:
        storage.load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(MscgError, match="does not exist"):
        storage.load_checkpoint(tmp_path / "absent.ckpt")


# ----------------------------------------------------------------------------------------------
# Full disk, read-only run directory


@pytest.mark.parametrize(
    "err, phrase",
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/r/x"),
            "cannot write /r/x: the disk is full",
        ),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "the disk quota is exceeded"),
        (
            OSError(errno.EROFS, "Read-only file system", "/r"),
            "cannot write /r: the file system is read-only",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", "/r"),
            "cannot access /r: permission is denied",
        ),
        (
            OSError("IOError: [Errno 28] No space left on device"),
            "cannot write RUN: the disk is full",
        ),
        (
            RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
            "a file write failed (is the disk full?)",
        ),
        (OSError(errno.ENOSPC, "No space", "/tmp/a", None, "/r/b.ckpt"), "cannot write /r/b.ckpt"),
    ],
)
def test_write_errors_become_one_sentence(err, phrase):
    text = storage.describe_write_error(err, "RUN")
    assert text is not None and phrase in text and "\n" not in text


@pytest.mark.parametrize("err", [OSError(errno.ENOENT, "No such file"), RuntimeError("CUDA oom")])
def test_other_errors_are_not_taken_for_storage_faults(err):
    assert storage.describe_write_error(err, "RUN") is None


def test_disk_full_during_prepare_leaves_no_artifact(tmp_path, monkeypatch, mscg, rel):
    import mscg_lightning.artifacts as artifacts

    calls = []
    real = pq.write_table

    def full(table, where, *args, **kwargs):
        calls.append(where)
        if len(calls) > 2:  # a few shards get written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(where))
        return real(table, where, *args, **kwargs)

    monkeypatch.setattr(artifacts.pq, "write_table", full)
    run = tmp_path / "run"
    result = mscg("prepare", *rel.tiny_args(run))
    monkeypatch.undo()
    rel.assert_refused(result, 2, "the disk is full; free some space, then rerun")
    rel.assert_no_artifact(run)


def test_read_only_run_dir_is_one_sentence(tmp_path, monkeypatch, mscg, rel):
    run = tmp_path / "ro" / "run"
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    result = mscg("fit", *rel.tiny_args(run, "--stages", "prepare"))
    monkeypatch.undo()
    rel.assert_refused(result, 2, f"cannot write {run}: the file system is read-only")
    assert not (tmp_path / "ro").exists()


def test_report_into_a_read_only_folder_is_one_sentence(trained_run, tmp_path, monkeypatch, mscg):
    pytest.importorskip("matplotlib")
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    result = mscg("report", "--run_dir", trained_run, "--out", tmp_path / "ro" / "r.png")
    monkeypatch.undo()
    assert result.code == 2 and result.err.count("\n") == 1
    assert f"cannot write {tmp_path / 'ro'}: the file system is read-only" in result.err


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


@pytest.mark.parametrize("size", ["32k", "96k"])  # full in prepare (pyarrow), in sasrec (torch)
def test_a_really_full_disk(size, tmp_path, mscg, rel):
    mount = tmp_path / "small"
    if not _mount_tmpfs(mount, size):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        run = mount / "run"
        result = mscg("fit", *rel.tiny_args(run, "--stages", "prepare,sasrec"))
        rel.assert_refused(result, 2, "the disk is full; free some space, then rerun")
        assert str(mount) in result.err
        assert not [p for p in run.iterdir() if ".tmp-" in p.name]
        assert not (run / "sasrec").exists()
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only directories")
def test_a_really_read_only_run_dir(tmp_path, mscg, rel):
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o500)
    try:
        result = mscg("fit", *rel.tiny_args(run, "--stages", "prepare"))
        rel.assert_refused(result, 2, "permission is denied")
    finally:
        run.chmod(0o700)


# ----------------------------------------------------------------------------------------------
# Leftovers of a killed run


def test_leftover_temporary_dirs_are_removed_by_the_next_run_of_that_stage(tmp_path, mscg, rel):
    run = tmp_path / "run"
    run.mkdir()
    killed = [run / ".prepared.tmp-0badc0de", run / ".prepared.old-0badc0de"]
    for path in killed:
        path.mkdir()
        (path / "part-00000.parquet").write_bytes(b"half")
    other = run / ".sasrec.tmp-12345678"  # another stage's leftover: left to that stage
    other.mkdir()
    result = mscg("prepare", *rel.tiny_args(run))
    assert result.code == 0, result.err
    assert not any(p.exists() for p in killed)
    assert other.is_dir() and (run / "prepared" / "manifest.json").is_file()


# ----------------------------------------------------------------------------------------------
# Ctrl-C


def test_keyboard_interrupt_exits_130_with_one_line(tmp_path, monkeypatch, mscg, rel):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_chain", interrupted)
    result = mscg("fit", *rel.tiny_args(tmp_path / "run"))
    assert result.code == 130
    assert result.err.strip() == storage.INTERRUPT_MESSAGE


def test_sigint_during_lightning_graceful_shutdown_exits_130(tmp_path, monkeypatch, mscg, rel):
    """Lightning catches the KeyboardInterrupt in trainer.fit and calls sys.exit(1)."""

    def like_lightning(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # as Lightning does
            sys.exit(1)

    monkeypatch.setattr(pipeline, "run_chain", like_lightning)
    previous = signal.getsignal(signal.SIGINT)
    result = mscg("fit", *rel.tiny_args(tmp_path / "run"))
    assert result.code == 130
    assert result.err.strip() == storage.INTERRUPT_MESSAGE
    assert signal.getsignal(signal.SIGINT) == previous  # the guard restored the handler


def test_sigint_inside_trainer_fit_exits_130(tmp_path, monkeypatch, mscg, rel):
    """A real SIGINT while Lightning trains SASRec, in this process (the timer starts with the
    sasrec stage, so the signal lands inside trainer.fit and Lightning's own handling)."""
    import threading

    import lightning.pytorch.trainer.call as call

    real_run_stage, real_interrupt = pipeline.run_stage, call._interrupt
    seen = []

    def run_stage(ctx):
        if ctx.name == "sasrec":
            threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
        return real_run_stage(ctx)

    def interrupt(trainer, exception):
        seen.append(type(exception).__name__)
        return real_interrupt(trainer, exception)

    monkeypatch.setattr(pipeline, "run_stage", run_stage)
    monkeypatch.setattr(call, "_interrupt", interrupt)
    args = rel.tiny_args(tmp_path / "run", "--stages", "prepare,sasrec")
    result = mscg("fit", *args, "--sasrec.trainer.max_epochs", "100000")
    assert seen == ["KeyboardInterrupt"]  # Lightning caught it (and called sys.exit(1))
    assert result.code == 130
    assert result.err.strip().splitlines()[-1] == storage.INTERRUPT_MESSAGE
    assert not (tmp_path / "run" / "sasrec").exists()


@pytest.mark.slow
def test_a_real_sigint_during_training(tmp_path, rel):
    """`mscg fit` in a subprocess, SIGINT while SASRec trains: exit 130, one line, no traceback."""
    env = {**os.environ, "PYTHONPATH": str(rel.TINY.parents[1]), "OMP_NUM_THREADS": "1"}
    args = rel.tiny_args(tmp_path / "run", "--stages", "prepare,sasrec")
    args += ["--sasrec.trainer.max_epochs", "100000"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mscg_lightning", "fit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    for line in proc.stdout:
        if line.startswith("[mscg] sasrec: running"):
            break
    time.sleep(3)  # inside trainer.fit
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == storage.INTERRUPT_MESSAGE
    assert not (tmp_path / "run" / "sasrec").exists()
