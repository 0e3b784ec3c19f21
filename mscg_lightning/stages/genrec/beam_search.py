"""Constrained beam search over the target modality's code tuples (batch x beams vectorised).

Per level l, every beam's next-code log-probabilities are scored, added to the beam's score, and
the best ``num_beams`` (beam, code) pairs of each user survive. Two scorings (``scoring``):

* ``renormalized`` (paper): the log-softmax over the codes the prefix index allows after the
  beam's prefix, the same Eq. 6 scores as in constrained training;
* ``masked_softmax`` (HF ``prefix_allowed_tokens_fn``, as TIGER, LETTER, MQL4GRec decode): the
  model's own log-softmax (over the level's codes, or the whole output vocabulary for a
  ``full_vocab`` model) with impermissible codes set to -inf, not renormalised.

The decoder computes the cross-attention keys/values once per user; beams only add query rows.
At the end complete tuples map to item ids; every returned item is in the catalogue.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.genrec.losses import masked_log_softmax
from mscg_lightning.stages.genrec.model import GenRecT5
from mscg_lightning.stages.genrec.prefix_index import PrefixIndex

SCORINGS = ("renormalized", "masked_softmax")


def next_code_log_probs(
    model: GenRecT5,
    hidden: Tensor,
    level: int,
    allowed: Tensor | None,
    scoring: str = "renormalized",
    full_vocab: bool = False,
) -> Tensor:
    """Scores of level ``level``'s codes after each beam: hidden [..., d] -> [..., V_l] (float32).

    ``allowed`` [..., V_l] (None = unconstrained: the model's own log-softmax); ``full_vocab``
    normalises the model's softmax over every level's output rows (a ``full_vocab`` model).
    """
    if allowed is not None and scoring == "renormalized":
        # shift-invariant: the level's logits give the same renormalised scores as the full rows
        return masked_log_softmax(model.level_logits(hidden, level).float(), allowed)
    if full_vocab:
        start, size = model.head_offsets[level], model.cfg.target_sizes[level]
        with torch.autocast(hidden.device.type, enabled=False):  # float32 under bf16 too
            full = F.linear(hidden.float(), model.output_weight().float())
        logp = torch.log_softmax(full, dim=-1)
        logp = logp[..., start : start + size]
    else:
        logp = torch.log_softmax(model.level_logits(hidden, level).float(), dim=-1)
    return logp if allowed is None else logp.masked_fill(~allowed, float("-inf"))


class BeamSearchResult(NamedTuple):
    """Top-K items of each user, best first.

    ``items`` LongTensor[B, K] item ids (-1 = no further valid item); ``scores`` FloatTensor[B, K]
    summed log-probabilities (-inf for -1 slots); ``codes`` LongTensor[B, K, D] the code tuples.
    """

    items: Tensor
    scores: Tensor
    codes: Tensor


@torch.no_grad()
def beam_search(
    model: GenRecT5,
    index: PrefixIndex,
    input_ids: Tensor,
    attention_mask: Tensor,
    item_pos: Tensor,
    code_pos: Tensor,
    num_beams: int = 20,
    top_k: int = 10,
    constrained: bool = True,
    scoring: str = "renormalized",
    full_vocab: bool = False,
    item_buckets: Tensor | None = None,
) -> BeamSearchResult:
    """Generate the top-K catalogue items for each history.

    Args:
        model: the encoder-decoder (put it in eval mode; the step path has no dropout).
        index: prefix index over the catalogue's target tuples (same device as the model).
        input_ids, attention_mask, item_pos, code_pos: encoder inputs (``tokens.EncoderInputs``),
            input_ids [B, S].
        num_beams: beams kept per user at every level (paper: 20).
        top_k: items returned per user (<= num_beams).
        constrained: mask impermissible codes and normalise over the permissible ones (Eq. 6).
            False scores with the model's own softmax, unmasked; generated tuples that are not
            in the catalogue are then dropped (returned as -1 / -inf at the end of the list).
        scoring: ``renormalized`` (paper, Eq. 6) or ``masked_softmax`` (the model's softmax with
            impermissible codes at -inf, not renormalised); see the module docstring.
        full_vocab: the model's softmax spans every level's output rows (``full_vocab``
            training); matters for ``masked_softmax`` and unconstrained decoding only.
        item_buckets: similarity buckets [B, J, J] of the histories (``sim_attention``
            models: ``model.similarity_buckets(history)``); the decoder steps do not use them.

    Returns:
        :class:`BeamSearchResult` with K = top_k; items are unique within a row.
    """
    if scoring not in SCORINGS:
        raise MscgError(f"beam search scoring must be one of {SCORINGS}, got '{scoring}'.")
    if top_k > num_beams:
        raise MscgError(f"beam search top_k={top_k} must not exceed num_beams={num_beams}.")
    if tuple(index.level_sizes) != tuple(model.cfg.target_sizes):
        raise MscgError(
            f"prefix index levels {index.level_sizes} differ from the model's target levels "
            f"{model.cfg.target_sizes}."
        )
    enc = model.encode(input_ids, attention_mask, item_pos, code_pos, item_buckets)
    state = model.start_decoding(enc, attention_mask)
    b = enc.shape[0]
    device = enc.device
    tokens = torch.zeros(b, 1, dtype=torch.long, device=device)  # start token, one beam per user
    scores = torch.zeros(b, 1, device=device)
    codes = torch.zeros(b, 1, 0, dtype=torch.long, device=device)
    for level, size in enumerate(model.cfg.target_sizes):
        w = tokens.shape[1]
        hidden = model.decode_step(state, tokens)
        allowed = None
        if constrained:
            allowed = index.allowed(codes.reshape(b * w, level)).view(b, w, size)
        logp = next_code_log_probs(model, hidden, level, allowed, scoring, full_vocab)
        cand = scores[:, :, None] + logp  # [B, W, V_l]
        scores, flat = cand.view(b, w * size).topk(min(num_beams, w * size), dim=1)
        parent = torch.div(flat, size, rounding_mode="floor")
        code = flat - parent * size
        kept = codes.gather(1, parent[:, :, None].expand(-1, -1, level))
        codes = torch.cat([kept, code[..., None]], 2)
        if level + 1 < len(model.cfg.target_sizes):
            state.reorder(parent)
            tokens = model.code_token_ids(code, level)

    items = index.lookup(codes.view(-1, codes.shape[-1])).view(b, -1)
    valid = (items >= 0) & torch.isfinite(scores)
    scores = torch.where(valid, scores, float("-inf"))
    k = min(top_k, scores.shape[1])
    top_scores, pick = scores.topk(k, dim=1)  # stable order for equal scores is not needed
    top_items = torch.where(torch.isfinite(top_scores), items.gather(1, pick), -1)
    top_codes = codes.gather(1, pick[:, :, None].expand(-1, -1, codes.shape[-1]))
    if k < top_k:  # fewer beams than K exist (tiny catalogue levels)
        pad = top_k - k
        top_items = torch.cat([top_items, top_items.new_full((b, pad), -1)], 1)
        top_scores = torch.cat([top_scores, top_scores.new_full((b, pad), float("-inf"))], 1)
        top_codes = torch.cat([top_codes, top_codes.new_full((b, pad, codes.shape[-1]), -1)], 1)
    return BeamSearchResult(top_items, top_scores, top_codes)
