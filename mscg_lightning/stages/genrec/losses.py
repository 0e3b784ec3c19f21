"""Constrained generative loss (paper Eq. 6) and the matching per-level log-probabilities.

At level l the log-softmax is normalised only over the permissible children of the target's
prefix; every other code gets -inf. The same function scores beams in constrained beam search,
so the training objective and the decoding score are the same quantity.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_log_softmax(logits: Tensor, allowed: Tensor | None) -> Tensor:
    """Log-softmax over the last dimension restricted to ``allowed`` entries.

    Args:
        logits: FloatTensor[..., V].
        allowed: BoolTensor[..., V] or None (None = full-vocabulary log-softmax).

    Returns:
        FloatTensor[..., V]; -inf where not allowed, and -inf everywhere in rows where nothing is
        allowed (instead of NaN), so such beams simply drop out.
    """
    if allowed is None:
        return torch.log_softmax(logits, dim=-1)
    # Rows with nothing allowed stay unmasked (finite, no NaN in value or gradient); the final
    # torch.where sets them to -inf.
    blocked = ~allowed & allowed.any(dim=-1, keepdim=True)
    masked = logits.masked_fill(blocked, float("-inf"))
    return torch.where(allowed, torch.log_softmax(masked, dim=-1), float("-inf"))


def target_log_probs(logits: Tensor, targets: Tensor, allowed: Tensor | None = None) -> Tensor:
    """Log-probability of each target code.

    Args:
        logits: FloatTensor[B, D, V] (entries beyond a level's vocabulary should be -inf).
        targets: LongTensor[B, D] target codes.
        allowed: BoolTensor[B, D, V] permissible codes (constrained, Eq. 6) or None (full CE).

    Returns:
        FloatTensor[B, D]; the sum over D is the item's sequence log-probability.
    """
    logp = masked_log_softmax(logits.float(), allowed)
    return logp.gather(-1, targets[..., None]).squeeze(-1)


def generative_loss(
    logits: Tensor, targets: Tensor, allowed: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    """Negative log-likelihood of the target codes (constrained if ``allowed`` is given).

    Args:
        logits: FloatTensor[B, D, V].
        targets: LongTensor[B, D].
        allowed: BoolTensor[B, D, V] or None for the full-vocabulary cross-entropy (ablation
            "w/o Const. Train.").
        reduction: "mean" (over all B*D target codes, as T5's cross-entropy), "sum" or "none"
            (FloatTensor[B, D]).

    Returns:
        Scalar, or FloatTensor[B, D] for ``reduction="none"``.
    """
    nll = -target_log_probs(logits, targets, allowed)
    if reduction == "mean":
        return nll.mean()
    if reduction == "sum":
        return nll.sum()
    if reduction == "none":
        return nll
    raise ValueError(f"unknown reduction {reduction!r}")
