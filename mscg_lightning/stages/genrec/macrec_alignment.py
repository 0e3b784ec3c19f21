"""MACRec's implicit alignment (paper Eqs. 14-18) on the generator's encoder states.

``e^t = MeanPool(Encoder(t-sid))``, ``e^v = MeanPool(Encoder(v-sid))`` of the *same* items, then
a symmetric InfoNCE (inner product / tau, paper tau 0.1, lambda_implicit 0.01). Row i of the
text states and row i of the image states must be the same item: build both with
:meth:`~mscg_lightning.stages.genrec.macrec_tasks.MacrecTasks.item_inputs` from one item list
(use the batch's *distinct* target items, so that no other row is the same item). The official
code pairs anchor k with batch row k of the whole mixed-task batch (a different item) and keeps
one direction only; ``symmetric=False`` gives the one-direction loss, the wrong pairing is not
offered.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.rq_xmodal.contrastive import (
    Similarity,
    info_nce,
    symmetric_info_nce,
)


def mean_pool(states: Tensor, mask: Tensor) -> Tensor:
    """Mean of the real positions: states [B, S, D], mask [B, S] bool -> [B, D]."""
    m = mask.to(states.dtype)[..., None]
    return (states * m).sum(1) / m.sum(1).clamp(min=1.0)


def implicit_alignment_loss(
    text_states: Tensor,
    text_mask: Tensor,
    image_states: Tensor,
    image_mask: Tensor,
    tau: float = 0.1,
    symmetric: bool = True,
    similarity: Similarity = "dot",
) -> Tensor:
    """``L_implicit`` of B items (row i of both inputs = item i): scalar.

    text_states [B, S_t, D] / image_states [B, S_v, D] encoder outputs, masks [B, S] bool.
    """
    if text_states.shape[0] != image_states.shape[0]:
        raise MscgError(
            f"implicit alignment got {text_states.shape[0]} text and {image_states.shape[0]} "
            "image rows; they must be the same items."
        )
    et, ev = mean_pool(text_states, text_mask), mean_pool(image_states, image_mask)
    if symmetric:
        return symmetric_info_nce(et, ev, tau, similarity)
    return info_nce(et, ev, torch.arange(et.shape[0], device=et.device), tau, similarity)
