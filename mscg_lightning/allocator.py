"""Memory-allocator tuning for the CPU training path (issue 17).

glibc's malloc serves allocations above its mmap threshold (dynamic, at most 32 MiB) with
``mmap`` and gives them back to the kernel on ``free``; a training step allocates and frees the
same large activation tensors every step, so every step page-faults them in again (zeroed pages,
one fault per 4 KiB). Measured on this project's CPU: the GenRec step became 1.46-1.5x faster
with ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=...``.

:func:`tune_allocator` sets the same two knobs at run time with ``mallopt`` (through ctypes), so
no re-exec and no environment variable are needed: no allocation is served by ``mmap`` any more
and the heap is trimmed only when more than ``trim_threshold`` bytes are free at its top. Freed
memory is then reused by the next step. The resident memory stays at the step's peak instead of
dropping between steps (the peak itself does not grow). ``MSCG_MALLOC=default`` turns it off;
other C libraries (musl, macOS) are left alone. It changes no numbers, only where memory comes
from (tested: same losses).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: mallopt takes an int: the largest trim threshold it can express (2 GiB - 1).
TRIM_THRESHOLD = 2**31 - 1

_state: dict[str, bool] = {}


def tune_allocator() -> bool:
    """Keep freed large blocks in the process (glibc only); True if the tuning is in effect.

    Idempotent; ``MSCG_MALLOC=default`` (environment) leaves glibc's defaults.
    """
    if os.environ.get("MSCG_MALLOC", "").lower() == "default":
        return False
    if "tuned" in _state:
        return _state["tuned"]
    tuned = False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = getattr(libc, "mallopt", None)
        if mallopt is not None and hasattr(libc, "gnu_get_libc_version"):
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            tuned = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except OSError:
        tuned = False
    _state["tuned"] = tuned
    return tuned
