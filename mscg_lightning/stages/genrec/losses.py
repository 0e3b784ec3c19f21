"""Generative losses (constrained: paper Eq. 6) and the matching per-level log-probabilities.

Three normalisations of the next-code softmax (``constrained_training``):

* ``constrained`` (paper, Eq. 6): over the permissible children of the target's prefix only;
* ``per_level``: over every code of the level (GRID-style; this project's former "off");
* ``full_vocab``: over the whole output vocabulary of all levels (the paper's ablation "w/o
  Const. Train." and TIGER's T5, whose single softmax spans every code token).

The constrained log-softmax also scores beams in constrained beam search (``renormalized``), so
the training objective and the decoding score are the same quantity; ``masked_softmax`` is the
field's ``prefix_allowed_tokens_fn`` scoring (the model's own softmax, impermissible codes set to
-inf, not renormalised).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mscg_lightning.errors import MscgError

TRAINING_MODES = ("constrained", "per_level", "full_vocab")
BEAM_SCORINGS = ("renormalized", "masked_softmax", "auto")


def training_mode(value: str | bool) -> str:
    """Validated ``constrained_training``; the former booleans map True -> ``constrained``,
    False -> ``per_level`` (what they meant), so old configs and checkpoints load unchanged."""
    if isinstance(value, bool):
        return "constrained" if value else "per_level"
    if value not in TRAINING_MODES:
        raise MscgError(
            f"genrec constrained_training must be one of {', '.join(TRAINING_MODES)}, "
            f"got '{value}'."
        )
    return value


def beam_scoring_for(scoring: str, mode: str) -> str:
    """Resolve ``beam_scoring``: ``auto`` is ``renormalized`` for constrained models (paper)
    and ``masked_softmax`` for the others (their training never renormalised)."""
    if scoring not in BEAM_SCORINGS:
        raise MscgError(
            f"genrec beam_scoring must be one of {', '.join(BEAM_SCORINGS)}, got '{scoring}'."
        )
    if scoring == "auto":
        return "renormalized" if mode == "constrained" else "masked_softmax"
    return scoring


def full_vocab_targets(targets: Tensor, level_sizes: tuple[int, ...]) -> Tensor:
    """Row of each target code in the concatenated output vocabulary: [B, D] -> [B, D]
    (level l's codes start at ``sum(level_sizes[:l])``, as ``GenRecT5.head_offsets``)."""
    starts = [sum(level_sizes[:level]) for level in range(len(level_sizes))]
    return targets + torch.tensor(starts, dtype=targets.dtype, device=targets.device)


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
        allowed: BoolTensor[B, D, V] permissible codes (constrained, Eq. 6) or None (plain CE).

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
        allowed: BoolTensor[B, D, V] or None for the plain cross-entropy over ``logits``' last
            dimension (``per_level`` or, with ``full_vocab_targets``, ``full_vocab``).
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
