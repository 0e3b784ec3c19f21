"""Ensemble of per-modality beam results over item ids (MACRec / MQL4GRec inference).

Each modality's constrained beam search (``beam_search.py``, 20 beams) gives item ids and summed
log-probabilities per user. The ensemble ranks the union of the two lists by one score per item:

* ``rule="mean"`` (paper: "averaging the scores of both modalities"): ``(s_t + s_v) / 2``. An
  item that fell out of one modality's beams has no score there; ``missing="floor"`` uses that
  list's lowest beam score (the best the item could have had), ``missing="own"`` its other
  modality's score alone.
* ``rule="mql4grec"`` (official code): items in both lists score ``(s_t + s_v) / 2 + 1``, items in
  one list their own score: a bonus of 1 (on the scale of the given scores) for agreement.

Hits are then counted by item id only (the project's protocol); the official evaluation's
code-string hits are not reproduced.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from mscg_lightning.errors import MscgError

Rule = Literal["mean", "mql4grec"]
Missing = Literal["floor", "own"]


class EnsembleResult(NamedTuple):
    """``items`` LongTensor[B, K] best first (-1 = none), ``scores`` FloatTensor[B, K] (-inf)."""

    items: Tensor
    scores: Tensor


def ensemble(
    items_a: Tensor,
    scores_a: Tensor,
    items_b: Tensor,
    scores_b: Tensor,
    top_k: int = 10,
    rule: Rule = "mean",
    missing: Missing = "floor",
) -> EnsembleResult:
    """Merge two modalities' ranked lists over item ids.

    items_* LongTensor[B, K_*] (-1 = empty slot, as beam search returns), scores_* [B, K_*]
    (summed log-probabilities; any value for empty slots). Item ids within one list are
    distinct. Ties keep list a's items first, then list order.
    """
    if rule not in ("mean", "mql4grec"):
        raise MscgError(f"Unknown ensemble rule '{rule}': use 'mean' or 'mql4grec'.")
    if missing not in ("floor", "own"):
        raise MscgError(f"Unknown ensemble missing='{missing}': use 'floor' or 'own'.")
    neg = torch.tensor(float("-inf"), device=scores_a.device)
    va, vb = items_a >= 0, items_b >= 0
    sa, sb = torch.where(va, scores_a.float(), neg), torch.where(vb, scores_b.float(), neg)
    eq = (items_a[:, :, None] == items_b[:, None, :]) & va[:, :, None] & vb[:, None, :]
    a_in_b, b_in_a = eq.any(2), eq.any(1)
    sb_of_a = torch.where(eq, sb[:, None, :], neg).amax(2)  # [B, K_a]
    if rule == "mql4grec":
        score_a = torch.where(a_in_b, (sa + sb_of_a) / 2 + 1, sa)
        score_b = sb  # common items are counted once, from list a
    else:
        inf = torch.tensor(float("inf"), device=sa.device)
        floor_a = torch.where(va, sa, inf).amin(1, keepdim=True)
        floor_b = torch.where(vb, sb, inf).amin(1, keepdim=True)
        if missing == "floor":
            # An empty other list has no floor: the item's own score stands.
            other_a = torch.where(torch.isinf(floor_b), sa, floor_b.expand_as(sa))
            other_b = torch.where(torch.isinf(floor_a), sb, floor_a.expand_as(sb))
        else:
            other_a, other_b = sa, sb
        score_a = torch.where(a_in_b, (sa + sb_of_a) / 2, (sa + other_a) / 2)
        score_b = (sb + other_b) / 2
    score_b = torch.where(b_in_a | ~vb, neg, score_b)
    score_a = torch.where(va, score_a, neg)
    items = torch.cat([items_a, items_b], 1)
    scores = torch.cat([score_a, score_b], 1)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :top_k]
    best = scores.gather(1, order)
    items = torch.where(torch.isinf(best), -1, items.gather(1, order))
    if best.shape[1] < top_k:  # fewer candidates than asked: pad
        pad = top_k - best.shape[1]
        items = torch.cat([items, items.new_full((items.shape[0], pad), -1)], 1)
        best = torch.cat([best, best.new_full((best.shape[0], pad), float("-inf"))], 1)
    return EnsembleResult(items, best)
