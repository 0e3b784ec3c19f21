"""Collision handling of the cross-modal tokenizer.

``collision="level"`` (default): the project's collision level
(:func:`mscg_lightning.stages.rq.collisions.append_collision_level`) on the raw codes.
``collision="reassign"``: MQL4GRec's resolution, which MACRec adopts (paper: "codewords are
reassigned according to the distance between items and the codebook"): inside every group of
items sharing all L codes, the item closest to its last-level codeword keeps it; each other item,
in order of that distance, moves to its nearest last-level codeword whose full tuple is still
free. Items that find no free codeword keep their codes; the collision level then separates them
(the official script stops after two rounds and may leave duplicates; here one pass tries every
codeword, and the collision level guarantees unique tuples either way).
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from mscg_lightning.errors import MscgError

Collision = Literal["level", "reassign"]


def reassign_by_distance(codes: Tensor, distances: Tensor) -> Tensor:
    """Resolve shared code tuples by moving items to free last-level codewords.

    codes [N, L] int64; distances [N, K]: squared distance of each item's last-level residual to
    every last-level codeword. Returns new codes [N, L] (only the last column changes).
    Deterministic: groups are visited in lexicographic tuple order, ties by item row.
    """
    if codes.ndim != 2 or distances.ndim != 2 or distances.shape[0] != codes.shape[0]:
        raise MscgError(
            f"reassign_by_distance got codes {list(codes.shape)} and distances "
            f"{list(distances.shape)}; expected [N, L] and [N, K]."
        )
    arr = codes.cpu().numpy().astype(np.int64).copy()
    dist = distances.detach().cpu().double().numpy()
    used = Counter(map(tuple, arr.tolist()))
    groups: dict[tuple[int, ...], list[int]] = {}
    for row, key in enumerate(map(tuple, arr.tolist())):
        if used[key] > 1:
            groups.setdefault(key, []).append(row)
    for key in sorted(groups):
        rows = groups[key]
        own = [dist[r, key[-1]] for r in rows]
        order = [rows[i] for i in np.argsort(own, kind="stable")]
        for row in order[1:]:  # the closest item keeps the codeword
            for c in np.argsort(dist[row], kind="stable"):
                cand = (*key[:-1], int(c))
                if used[cand] == 0:
                    used[key] -= 1
                    used[cand] += 1
                    arr[row, -1] = int(c)
                    break
    return torch.from_numpy(arr)
