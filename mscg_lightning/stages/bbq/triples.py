"""Triple tokens: an item's (ID, text, image) codes of one level as a single token.

BBQRec concatenates the three signals' codes of a level "as in product quantization" (Sec.
4.1.2), so the semantic ID has L tokens, each a triple. A triple is stored as one integer in
mixed radix K: ``token = sum_s c_s * K^(S-1-s)`` (signal 0 most significant), which keeps the
standard codes artifact (``codebook_size`` = K^S) and is undone by :func:`split_triples`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mscg_lightning.errors import MscgError


def join_triples(codes: Tensor, codebook_size: int) -> Tensor:
    """Per-signal codes [N, S, L] (values < K) -> triple tokens [N, L] int64 (values < K^S)."""
    if codes.ndim != 3:
        raise MscgError(f"Per-signal codes must be [items, signals, levels], got {codes.shape}.")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= codebook_size):
        raise MscgError(f"A per-signal code is outside [0, {codebook_size}).")
    tokens = torch.zeros(codes.shape[0], codes.shape[2], dtype=torch.long, device=codes.device)
    for s in range(codes.shape[1]):
        tokens = tokens * codebook_size + codes[:, s].long()
    return tokens


def split_triples(tokens: Tensor, codebook_size: int, num_signals: int) -> Tensor:
    """Inverse of :func:`join_triples`: tokens [..., L] -> per-signal codes [..., S, L]."""
    parts = []
    rest = tokens.long()
    for _ in range(num_signals):
        parts.append(rest % codebook_size)
        rest = rest // codebook_size
    return torch.stack(parts[::-1], dim=-2)


def compact_vocabulary(tokens: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Dense ids of the triples that occur, per level (the "full triple vocabulary" option).

    tokens: [N, L] triple tokens. Returns (dense [N, L] int64 with values < V_l, and per level
    the sorted triple tokens [V_l] that dense ids index). K^S possible triples rarely all occur:
    a full table of K^3 = 16.7M rows would be mostly unused.
    """
    dense, vocab = torch.empty_like(tokens), []
    for level in range(tokens.shape[1]):
        values, inverse = torch.unique(tokens[:, level], sorted=True, return_inverse=True)
        dense[:, level] = inverse
        vocab.append(values)
    return dense, vocab


def collision_rate(codes: np.ndarray) -> float:
    """Share of rows of codes [N, L] whose whole tuple is shared with another row."""
    if not len(codes):
        return 0.0
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return float((counts[inverse.reshape(-1)] > 1).mean())


def collision_report(codes: np.ndarray, names: list[str]) -> dict[str, float]:
    """Collision rates of per-signal codes [N, S, L], each signal alone and as triples.

    Returns ``{"triple": rate, <name of signal s>: rate, ...}``: the share of items whose code
    tuple (all L levels) is shared with another item.
    """
    out = {name: collision_rate(codes[:, s]) for s, name in enumerate(names)}
    out["triple"] = collision_rate(codes.reshape(codes.shape[0], -1))
    return out
