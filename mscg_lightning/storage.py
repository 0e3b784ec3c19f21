"""Faults of the machine rather than of the input: a full disk, a read-only run directory, a
truncated checkpoint, Ctrl-C. Each becomes one sentence for the user instead of a traceback.

* :func:`describe_write_error` turns an ``OSError`` (or the ``RuntimeError`` that ``torch.save``
  raises when a write fails) into one sentence naming the path, or None for other errors;
* :func:`load_checkpoint` reads a ``.ckpt`` file, naming the file when it is truncated or corrupt;
* :func:`interrupt_guard` makes Ctrl-C exit 130 with one line, also when Lightning has already
  caught the ``KeyboardInterrupt`` (it then calls ``sys.exit(1)`` after a graceful shutdown).
"""

from __future__ import annotations

import contextlib
import errno
import pickle
import signal
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mscg_lightning.errors import MscgError

#: The exit code of a process ended by SIGINT (128 + 2), as shells report it.
INTERRUPT_EXIT = 130
INTERRUPT_MESSAGE = "mscg: interrupted; rerun the same command to resume from the last checkpoint."

_ERRNO_TEXT = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission is denied",
    errno.EPERM: "permission is denied",
}
# Messages of writers that drop errno (pyarrow, torch.save): the same causes by their text.
_MESSAGE_TEXT = {
    "No space left on device": "the disk is full",
    "Disk quota exceeded": "the disk quota is exceeded",
    "Read-only file system": "the file system is read-only",
    "Permission denied": "permission is denied",
}


def describe_write_error(err: BaseException, run_dir: str | Path | None = None) -> str | None:
    """One sentence for a failed write (disk full, read-only, no permission); None otherwise.

    ``run_dir`` is named when the error carries no file name (pyarrow and torch drop it).
    """
    cause = None
    if isinstance(err, OSError) and err.errno in _ERRNO_TEXT:
        cause = _ERRNO_TEXT[err.errno]
    text = str(err)
    if cause is None and isinstance(err, (OSError, RuntimeError)):
        cause = next((v for k, v in _MESSAGE_TEXT.items() if k in text), None)
        if cause is None and isinstance(err, RuntimeError) and "file write failed" in text:
            cause = "a file write failed (is the disk full?)"
    if cause is None:
        return None
    # a copy or rename names its destination second (fsspec's atomic save: /tmp/x -> run dir)
    where = getattr(err, "filename2", None) or getattr(err, "filename", None) or run_dir
    place = f" {where}" if where else ""
    if "permission" in cause:  # reading an input can fail so too: no "write" in the sentence
        return f"cannot access{place}: {cause}; fix its permissions or choose another --run_dir."
    if "read-only" in cause:
        return f"cannot write{place}: {cause}; choose a writable --run_dir."
    return f"cannot write{place}: {cause}; free some space, then rerun the same command to resume."


def load_checkpoint(path: str | Path, *, redo: str = "") -> dict[str, Any]:
    """``torch.load`` of a Lightning checkpoint on the CPU; a truncated or corrupt file is an
    MscgError naming it (``redo``: the command that makes it anew, added to the sentence)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise MscgError(f"the checkpoint {path} does not exist.")
    hint = f"; rerun `{redo}` to make it anew" if redo else ""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except PermissionError:
        raise  # said by describe_write_error: "cannot access ...: permission is denied"
    except (
        RuntimeError,
        EOFError,
        OSError,  # a truncated zip makes torch's reader fail with EINVAL
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        ValueError,
    ) as err:
        raise MscgError(
            f"the checkpoint {path} is truncated or corrupt ({_first_line(err)}){hint}."
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise MscgError(f"{path} is not a Lightning checkpoint (it has no state_dict){hint}.")
    return ckpt


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0].rstrip(".") if text else type(err).__name__


class InterruptState:
    """Whether SIGINT arrived while :func:`interrupt_guard` was active."""

    def __init__(self) -> None:
        self.interrupted = False


@contextlib.contextmanager
def interrupt_guard() -> Iterator[InterruptState]:
    """Record SIGINT (then raise KeyboardInterrupt as Python does) while the block runs.

    Lightning catches the KeyboardInterrupt inside ``trainer.fit`` and exits with
    ``sys.exit(1)``; the recorded flag lets the caller tell that exit from a real one. Outside
    the main thread signals cannot be handled, and the block runs unguarded.
    """
    state = InterruptState()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def on_sigint(signum: int, frame: Any) -> None:
        state.interrupted = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)


def report_interrupt() -> int:
    """Print the one line of an interrupted run; returns its exit code (130)."""
    sys.stderr.write(INTERRUPT_MESSAGE + "\n")
    return INTERRUPT_EXIT


def call_guarded(body: Callable[[], int], run_dir: str | Path | None = None) -> int:
    """Run ``body`` (a CLI command); Ctrl-C -> one line and 130, a failed write -> MscgError.

    The caller prints the MscgError as one sentence and exits 2, like bad input.
    """
    with interrupt_guard() as state:
        try:
            return body()
        except KeyboardInterrupt:
            return report_interrupt()
        except SystemExit:
            if state.interrupted:  # Lightning's graceful shutdown after Ctrl-C: sys.exit(1)
                return report_interrupt()
            raise
        except (OSError, RuntimeError) as err:
            text = describe_write_error(err, run_dir)
            if text is None:
                raise
            raise MscgError(text) from err
