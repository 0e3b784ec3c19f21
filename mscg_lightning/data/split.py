"""Pure array steps of `prepare`: k-core, dense ids, chronological order, leave-one-out.

Vectorised numpy/pyarrow (no Python loop per interaction); each is unit-tested alone in
tests/data/test_prepare.py. `prepare.py` chains them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def kcore_mask(
    user: np.ndarray, item: np.ndarray, user_min: int, item_min: int
) -> tuple[np.ndarray, int]:
    """Iterative k-core over interactions `user` [N], `item` [N] (dense int ids).

    Returns (keep [N] bool, passes): passes counts the rounds, the last of which removed nothing.
    """
    n_users = int(user.max()) + 1 if len(user) else 0
    n_items = int(item.max()) + 1 if len(item) else 0
    idx = np.arange(len(user))
    u, i = user, item
    passes = 0
    while True:
        passes += 1
        ok = (np.bincount(u, minlength=n_users)[u] >= user_min) & (
            np.bincount(i, minlength=n_items)[i] >= item_min
        )
        if ok.all():
            break
        idx, u, i = idx[ok], u[ok], i[ok]  # shrink: later rounds touch only survivors
    keep = np.zeros(len(user), dtype=bool)
    keep[idx] = True
    return keep, passes


def chronological_order(user: np.ndarray, time: np.ndarray | None) -> np.ndarray:
    """Permutation sorting interactions by (user, time); ties keep their original row order.

    `user` [N] dense ints, `time` [N] float64 or None (None: the rows are already chronological).
    """
    if time is None:
        return np.argsort(user, kind="stable")
    if len(user) == 0:
        return np.zeros(0, dtype=np.int64)
    t_min, t_max = float(time.min()), float(time.max())
    user_bits = max(int(user.max()).bit_length(), 1)
    span = t_max - t_min
    # Integral timestamps (seconds, ms) fit with the user id into one int64 key: one stable
    # argsort instead of a two-key sort (about 2x faster on 10M rows).
    if span < 2.0 ** min(62 - user_bits, 53) and np.array_equal(time, np.floor(time)):
        key = (user.astype(np.int64) << (62 - user_bits)) | (time - t_min).astype(np.int64)
        return np.argsort(key, kind="stable")
    table = pa.table({"u": user, "t": time})
    return pc.sort_indices(table, sort_keys=[("u", "ascending"), ("t", "ascending")]).to_numpy()


def _ragged_take(values: np.ndarray, start: np.ndarray, end: np.ndarray) -> pa.ListArray:
    """list<int32> whose row r is values[start[r]:end[r]] (vectorised gather)."""
    lengths = (end - start).astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    idx = np.repeat(start - offsets[:-1], lengths) + np.arange(offsets[-1])
    flat = pa.array(values[idx].astype(np.int32, copy=False), pa.int32())
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), flat)


def leave_one_out(
    user: np.ndarray, item: np.ndarray, num_users: int, max_history: int
) -> dict[str, pa.Table]:
    """Train/valid/test tables from interactions sorted by (user, time).

    `user` [N] must be sorted dense ids in [0, num_users) with >= 3 interactions each, `item`
    [N] the items in that order. train: `user_idx`, `items` (all but the last two); valid:
    `user_idx`, `history` (<= max_history items before the target), `target` (second to
    last); test: the same with the last item as target (the valid target is in its history).
    """
    counts = np.bincount(user, minlength=num_users)
    if (counts < 3).any():
        raise ValueError("leave_one_out needs >= 3 interactions per user")
    ends = np.cumsum(counts)
    starts = ends - counts
    user_idx = pa.array(np.arange(num_users, dtype=np.int32))
    train = pa.table({"user_idx": user_idx, "items": _ragged_take(item, starts, ends - 2)})
    out = {"train": train}
    for name, target_pos in (("valid", ends - 2), ("test", ends - 1)):
        hist_start = np.maximum(starts, target_pos - max_history)
        out[name] = pa.table(
            {
                "user_idx": user_idx,
                "history": _ragged_take(item, hist_start, target_pos),
                "target": pa.array(item[target_pos].astype(np.int32)),
            }
        )
    return out


def dense_ids(values: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept ids in ascending order, new dense id per old id or -1)."""
    used = np.zeros(size, dtype=bool)
    used[values] = True
    kept = np.flatnonzero(used)
    remap = np.full(size, -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    return kept, remap
