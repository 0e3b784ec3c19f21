"""Collision level and code diagnostics.

Residual quantization can give several items the same L codes. Following TIGER, a last code is
appended: the item's rank among the items sharing its L-code prefix, in ascending ``order``
(item_idx), so that every item's tuple is unique and the assignment is reproducible.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mscg_lightning.errors import MscgError


def _to_numpy(codes: np.ndarray | Tensor) -> np.ndarray:
    arr = codes.detach().cpu().numpy() if isinstance(codes, Tensor) else np.asarray(codes)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise MscgError(f"Codes must be a 2-d table [items, levels], got shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise MscgError(f"Codes must be integers, got dtype {arr.dtype}.")
    return arr.astype(np.int64, copy=False)


def _prefix_groups(codes: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort rows by (prefix, order); return the permutation and each sorted row's group id."""
    # lexsort sorts by the last key first: order is the tie-breaker within a prefix.
    perm = np.lexsort((order, *(codes[:, j] for j in reversed(range(codes.shape[1])))))
    s = codes[perm]
    new_group = np.ones(len(s), dtype=bool)
    new_group[1:] = (s[1:] != s[:-1]).any(axis=1)
    return perm, np.cumsum(new_group) - 1


def append_collision_level(
    codes: np.ndarray | Tensor, order: np.ndarray | Tensor | None = None
) -> np.ndarray | Tensor:
    """Append the collision code: codes [N, L] -> [N, L+1] (same type as the input, int64).

    The new last column is the item's rank (0, 1, ...) among the items with the same L codes,
    ranked by ascending ``order`` [N] (typically item_idx; default: row position).
    """
    arr = _to_numpy(codes)
    n = arr.shape[0]
    if order is None:
        order_np = np.arange(n)
    else:
        order_np = order.detach().cpu().numpy() if isinstance(order, Tensor) else np.asarray(order)
        if order_np.shape != (n,):
            raise MscgError(f"The order has shape {order_np.shape} but there are {n} code rows.")
    rank = np.zeros(n, dtype=np.int64)
    if n:
        perm, group = _prefix_groups(arr, order_np)
        # After sorting, a group's rows are contiguous: rank = position - start of the group.
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        rank[perm] = np.arange(n) - starts[group]
    out = np.concatenate([arr, rank[:, None]], axis=1)
    if isinstance(codes, Tensor):
        return torch.from_numpy(out).to(codes.device)
    return out


def code_diagnostics(
    codes: np.ndarray | Tensor, codebook_size: int, levels: int | None = None
) -> dict[str, Any]:
    """Collision and codebook-usage figures of codes [N, L] or [N, L+1].

    ``levels``: how many leading columns are semantic codes (pass L when the table already has
    a collision column); default all columns. Returns a JSON-ready dict:
    ``num_items``, ``levels``, ``codebook_size``, ``distinct_prefixes``, ``collision_rate``
    (share of items whose L-code prefix is shared with at least one other item),
    ``largest_group`` (most items on one prefix, = collision codes needed),
    ``items_per_prefix`` ({group size: number of prefixes of that size}) and ``per_level``:
    a list of {``level`` (1-based), ``used_codes``, ``usage`` (% of the K codes used),
    ``perplexity`` (exp of the entropy of the level's code distribution)}.
    """
    arr = _to_numpy(codes)
    levels = arr.shape[1] if levels is None else levels
    if not 1 <= levels <= arr.shape[1]:
        raise MscgError(f"levels={levels} but the code table has {arr.shape[1]} columns.")
    sem = arr[:, :levels]
    if sem.size and (sem.min() < 0 or sem.max() >= codebook_size):
        bad = int(sem.min()) if sem.min() < 0 else int(sem.max())
        raise MscgError(f"Code {bad} is outside the codebook range [0, {codebook_size}).")
    n = sem.shape[0]
    if n:
        _, group_sizes = np.unique(sem, axis=0, return_counts=True)
    else:
        group_sizes = np.zeros(0, dtype=np.int64)
    sizes, n_prefixes = np.unique(group_sizes, return_counts=True)
    per_level = []
    for j in range(levels):
        counts = np.bincount(sem[:, j], minlength=codebook_size)
        p = counts[counts > 0] / max(n, 1)
        per_level.append(
            {
                "level": j + 1,
                "used_codes": int((counts > 0).sum()),
                "usage": 100.0 * float((counts > 0).sum()) / codebook_size,
                "perplexity": math.exp(float(-(p * np.log(p)).sum())) if n else 0.0,
            }
        )
    return {
        "num_items": int(n),
        "levels": int(levels),
        "codebook_size": int(codebook_size),
        "distinct_prefixes": int(len(group_sizes)),
        "collision_rate": float(group_sizes[group_sizes > 1].sum() / n) if n else 0.0,
        "largest_group": int(group_sizes.max()) if n else 0,
        "items_per_prefix": {int(s): int(c) for s, c in zip(sizes, n_prefixes, strict=True)},
        "per_level": per_level,
    }
