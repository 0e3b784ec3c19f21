"""InfoNCE losses of MACRec (paper Eqs. 4-9 and 16-18) and the in-batch positive sampler.

One home for the contrastive terms of both the cross-modal tokenizer (``L_con``, ``L_align``)
and the generator (``L_implicit``, :mod:`mscg_lightning.stages.genrec.macrec_alignment`).

The paper scores pairs by the inner product ``<a, b> / tau`` and sums the denominator over the
whole batch (``j = 1..B``, the anchor itself included); ``similarity="cosine"`` normalises the
rows first (the official code's ``L_align`` does so).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mscg_lightning.errors import MscgError

Similarity = Literal["dot", "cosine"]
MissingPositive = Literal["skip", "self"]


def similarity_logits(a: Tensor, b: Tensor, tau: float, similarity: Similarity = "dot") -> Tensor:
    """Pairwise scores ``<a_i, b_j> / tau``: a [B, D], b [B', D] -> [B, B']."""
    if similarity == "cosine":
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    elif similarity != "dot":
        raise MscgError(f"Unknown similarity '{similarity}': use 'dot' or 'cosine'.")
    return a @ b.T / tau


def info_nce(
    anchors: Tensor,
    candidates: Tensor,
    positive: Tensor,
    tau: float,
    similarity: Similarity = "dot",
) -> Tensor:
    """Mean over anchors of ``-log softmax_j(<a_i, c_j>/tau)[positive_i]``.

    anchors [B, D], candidates [B', D], positive [B] int64 (row of ``candidates`` that is the
    anchor's positive; -1 leaves the anchor out). Returns a scalar (0 with no anchor left).
    """
    keep = positive >= 0
    if not bool(keep.any()):
        return anchors.sum() * 0.0  # keeps the graph (and DDP) happy with a zero loss
    logits = similarity_logits(anchors[keep], candidates, tau, similarity)
    return F.cross_entropy(logits, positive[keep])


def symmetric_info_nce(a: Tensor, b: Tensor, tau: float, similarity: Similarity = "dot") -> Tensor:
    """``L^{a->b} + L^{b->a}`` with row i of a [B, D] paired with row i of b [B, D] (Eqs. 7-9)."""
    if a.shape != b.shape or a.ndim != 2:
        raise MscgError(
            f"Paired InfoNCE needs two [B, D] tables, got {list(a.shape)} and {list(b.shape)}."
        )
    diag = torch.arange(a.shape[0], device=a.device)
    return info_nce(a, b, diag, tau, similarity) + info_nce(b, a, diag, tau, similarity)


def sample_positives(
    labels: Tensor, missing: MissingPositive = "skip", generator: torch.Generator | None = None
) -> Tensor:
    """For each row, a random *other* row of the batch with the same label.

    labels [B] int64 (pseudo-labels of the other modality) -> [B] int64 row index. A row whose
    label no other row shares gets -1 (``missing="skip"``: left out of the loss, the default)
    or its own index (``missing="self"``: the official code's fallback, which makes the anchor
    its own positive).
    """
    if missing not in ("skip", "self"):
        raise MscgError(f"Unknown missing_positive '{missing}': use 'skip' or 'self'.")
    b = labels.shape[0]
    same = labels[:, None] == labels[None, :]
    same.fill_diagonal_(False)
    has = same.any(1)
    # Uniform draw among the candidates: random keys, masked to -1 where not a candidate.
    keys = torch.rand(b, b, generator=generator).to(labels.device)
    pick = torch.where(same, keys, torch.full_like(keys, -1.0)).argmax(1)
    own = torch.arange(b, device=labels.device)
    fallback = own if missing == "self" else torch.full_like(own, -1)
    return torch.where(has, pick, fallback)
