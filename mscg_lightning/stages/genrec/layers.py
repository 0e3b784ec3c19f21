"""T5 building blocks of :class:`~mscg_lightning.stages.genrec.model.GenRecT5` (pure torch).

Relative-position bucketing, RMSNorm, the FFN, attention projections and the encoder/decoder
layers, with two dropout formulations (``GenRecConfig.dropout_mode``, same rate ``p`` in both):

* ``t5`` (default, T5 / the paper): dropout on the attention probabilities (inside
  ``scaled_dot_product_attention``), on every sublayer output, inside the FFN after the
  activation, on the embeddings and after the final norms. On CPU, attention dropout makes SDPA
  leave its fused kernel for the unfused path, which materialises a B x H x Q x K probability
  tensor and its dropout mask, forward and backward.
* ``fast``: (1) attention dropout becomes DropKey (Li et al., CVPR 2023): each (query, key)
  logit is dropped with probability ``p`` by adding a large negative number to the additive
  mask *before* the softmax, which then renormalises over the surviving keys (no ``1/(1-p)``
  rescaling); the mask is just another additive bias, with no separate pass over the
  probabilities (on CPU the cross-attention uses explicit products, see ``_attend_explicit``;
  self-attention with the learned position bias is on SDPA's unfused path either way). A row
  whose every key is dropped falls back to uniform attention over its permitted keys (the drop
  offset, ``finfo.min/4``, is smaller than the structural mask's ``finfo.min/2``), so
  structurally masked keys (padding, future items, other targets) never leak in. (2) The FFN's
  inner dropout (on the ``d_ff``-wide activation, the widest dropout site) is dropped: the FFN
  branch is still dropped at its output, as every other sublayer. (3) Every mask is drawn as
  16-bit slices of 64-bit random numbers (:func:`drop_mask`, rate exact to 1/65536), about 4x
  cheaper on CPU than ``bernoulli_``. Every other site is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from mscg_lightning.stages.genrec.model_config import GenRecConfig

DROPOUT_MODES = ("t5", "fast")


def _neg(dtype: torch.dtype) -> float:
    """Large negative for masked attention logits; finite so fully-masked rows give no NaN."""
    return torch.finfo(dtype).min / 2


def relative_bucket(
    rel: Tensor, num_buckets: int, max_distance: int, bidirectional: bool
) -> Tensor:
    """T5's bucketing of relative positions (key - query): exact for small, log-spaced for large."""
    bucket = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        bucket = (rel > 0).long() * num_buckets
        n = rel.abs()
    else:
        n = (-rel).clamp(min=0)
    max_exact = num_buckets // 2
    large = (
        max_exact
        + (
            torch.log(n.clamp(min=1).float() / max_exact)
            / math.log(max_distance / max_exact)
            * (num_buckets - max_exact)
        ).long()
    )
    large = large.clamp(max=num_buckets - 1)
    return bucket + torch.where(n < max_exact, n, large)


def exact_bucket(rel: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """One bucket per signed relative position in ``[-max_distance, max_distance]`` (clamped).

    T5's bidirectional index convention without its log-spaced part: ``key - query <= 0`` ->
    ``|rel|``, ``> 0`` -> ``num_buckets // 2 + rel``; needs ``num_buckets >= 2 * max_distance + 1``.
    Where T5's bucketing is exact (small distances) the two agree. rel: LongTensor[...].
    """
    n = rel.abs().clamp(max=max_distance)
    return torch.where(rel > 0, num_buckets // 2 + n, n)


class RMSNorm(nn.Module):
    """T5 layer norm: scale only, no mean subtraction, statistics in float32. x: [..., d]."""

    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype)


class FeedForward(nn.Module):
    """T5 FFN: ``wo(drop(relu(wi x)))`` or gated ``wo(drop(gelu(wi_0 x) * wi_1 x))``."""

    def __init__(self, cfg: GenRecConfig) -> None:
        super().__init__()
        self.gated = cfg.ffn == "gated-gelu"
        if self.gated:
            self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
            self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        else:
            self.wi = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        # "fast" drops this inner site; the branch output is still dropped by the layer
        self.dropout = nn.Dropout(cfg.dropout if cfg.dropout_mode == "t5" else 0.0)

    def forward(self, x: Tensor) -> Tensor:
        if self.gated:
            h = F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)
        else:
            h = F.relu(self.wi(x))
        return self.wo(self.dropout(h))


class Attention(nn.Module):
    """Projections of one T5 attention block; ``split``/``merge`` convert [B, n, H*dk] <-> heads."""

    def __init__(self, cfg: GenRecConfig) -> None:
        super().__init__()
        inner = cfg.num_heads * cfg.d_kv
        self.heads, self.d_kv = cfg.num_heads, cfg.d_kv
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.k = nn.Linear(cfg.d_model, inner, bias=False)
        self.v = nn.Linear(cfg.d_model, inner, bias=False)
        self.o = nn.Linear(inner, cfg.d_model, bias=False)

    def split(self, x: Tensor) -> Tensor:
        """[B, n, H*dk] -> [B, H, n, dk]."""
        return x.view(*x.shape[:-1], self.heads, self.d_kv).transpose(-3, -2)

    @staticmethod
    def merge(x: Tensor) -> Tensor:
        """[B, H, n, dk] -> [B, n, H*dk]."""
        return x.transpose(-3, -2).flatten(-2)


def drop_mask(shape: tuple[int, ...], p: float, device: torch.device | None = None) -> Tensor:
    """BoolTensor[shape], True with probability ``p`` (to 1/65536): one 16-bit slice of a
    64-bit random number per entry, about 4x cheaper on CPU than ``bernoulli_``."""
    if p >= 1.0:
        return torch.ones(shape, dtype=torch.bool, device=device)
    n = math.prod(shape)
    bits = torch.randint(-(2**63), 2**63 - 1, (-(-n // 4),), dtype=torch.int64, device=device)
    threshold = -(2**15) + round(p * 2**16)
    return (bits.view(torch.int16)[:n] < threshold).view(shape)


class FastDropout(nn.Module):
    """Inverted dropout with :func:`drop_mask`'s cheaper mask (``dropout_mode: fast``)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = ~drop_mask(tuple(x.shape), self.p, x.device)
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))


def make_dropout(p: float, mode: str) -> nn.Module:
    """The dropout module of a ``dropout_mode``."""
    return FastDropout(p) if mode == "fast" else nn.Dropout(p)


def drop_keys(bias: Tensor, shape: tuple[int, ...], p: float) -> Tensor:
    """DropKey: ``bias`` [.., H|1, Q, K] broadcast to ``shape`` [B, H, Q, K] with each entry
    dropped (``finfo.min / 4`` added) with probability ``p``; structural ``-finfo.min / 2``
    entries stay below every dropped permitted one, so a fully dropped row attends uniformly
    over its permitted keys only."""
    drop = drop_mask(shape, p, bias.device)
    return torch.where(drop, bias + _neg(bias.dtype) / 2, bias)


def _attend(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor, dropout: float, mode: str = "t5"
) -> Tensor:
    """Attention without scaling (T5). q [.., H, Q, dk], k/v [.., H, K, dk], bias [.., H|1, Q, K].

    ``dropout`` > 0 drops attention probabilities (``t5``) or keys before the softmax (``fast``,
    :func:`drop_keys`, keeps the fused kernel).
    """
    bias = bias.to(q.dtype)
    if dropout > 0.0 and mode == "fast":
        shape = (*q.shape[:-1], k.shape[-2])
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=drop_keys(bias, shape, dropout), scale=1.0
        )
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=1.0)


def _attend_explicit(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, dropout: float) -> Tensor:
    """``_attend`` as explicit products (``fast`` mode's cross-attention on CPU): for few query
    rows against many keys (the window decoder's T*D rows x S keys) the fused CPU kernel's
    backward measured about 2x slower than this. DropKey as in ``_attend``."""
    bias = bias.to(q.dtype)
    if dropout > 0.0:
        bias = drop_keys(bias, (*q.shape[:-1], k.shape[-2]), dropout)
    scores = torch.matmul(q, k.transpose(-1, -2)) + bias
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + FFN block. x: [B, S, d], bias: [B|1, H, S, S]."""

    def __init__(self, cfg: GenRecConfig) -> None:
        super().__init__()
        self.attn = Attention(cfg)
        self.ff = FeedForward(cfg)
        self.norm1 = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.norm2 = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.dropout = make_dropout(cfg.dropout, cfg.dropout_mode)
        self.p = cfg.dropout
        self.mode = cfg.dropout_mode
        self.tokens_per_item = cfg.tokens_per_item
        self.sim = None
        if cfg.sim_attention:  # BBQRec's similarity-enhanced attention (paper Eq. 17)
            from mscg_lightning.stages.genrec.similarity_attention import SimilarityAttention

            self.sim = SimilarityAttention(
                cfg.num_heads,
                cfg.d_kv,
                cfg.sim_buckets,
                cfg.sim_init,  # type: ignore[arg-type]
            )

    def forward(self, x: Tensor, bias: Tensor, item_buckets: Tensor | None = None) -> Tensor:
        """``item_buckets`` [B, J, J]: similarity buckets of the J items (``sim_attention``)."""
        h = self.norm1(x)
        a = self.attn
        q, k, v = a.split(a.q(h)), a.split(a.k(h)), a.split(a.v(h))
        if self.sim is None:
            out = _attend(q, k, v, bias, self._p(), self.mode)
        else:
            p = self._p()
            if p > 0.0 and self.mode == "fast":  # DropKey as _attend, then no prob. dropout
                bias, p = drop_keys(bias.to(q.dtype), (*q.shape[:-1], k.shape[-2]), p), 0.0
            out = self.sim.forward_grouped(q, k, v, bias, item_buckets, self.tokens_per_item, p)
        x = x + self.dropout(a.o(a.merge(out)))
        return x + self.dropout(self.ff(self.norm2(x)))

    def _p(self) -> float:
        return self.p if self.training else 0.0


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention + cross-attention + FFN block."""

    def __init__(self, cfg: GenRecConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.cross_attn = Attention(cfg)
        self.ff = FeedForward(cfg)
        self.norm1 = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.norm2 = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.norm3 = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.dropout = make_dropout(cfg.dropout, cfg.dropout_mode)
        self.p = cfg.dropout
        self.mode = cfg.dropout_mode

    def _p(self) -> float:
        return self.p if self.training else 0.0

    def cross_kv(self, enc: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys/values of the encoder output: [B, S, d] -> 2 x [B, H, S, dk]."""
        a = self.cross_attn
        return a.split(a.k(enc)), a.split(a.v(enc))

    def forward(
        self, x: Tensor, self_bias: Tensor, cross: tuple[Tensor, Tensor], cross_mask: Tensor
    ) -> Tensor:
        """Teacher-forced pass. x [B, T, d]; self_bias [1, H, T, T] (causal); cross 2 x
        [B, H, S, dk]; cross_mask [B, 1, 1|T, S]. Returns [B, T, d]."""
        a = self.self_attn
        h = self.norm1(x)
        q, k, v = a.split(a.q(h)), a.split(a.k(h)), a.split(a.v(h))
        out = _attend(q, k, v, self_bias, self._p(), self.mode)
        x = x + self.dropout(a.o(a.merge(out)))
        c = self.cross_attn
        q = c.split(c.q(self.norm2(x)))
        if self.mode == "fast" and q.device.type == "cpu":
            out = _attend_explicit(q, cross[0], cross[1], cross_mask, self._p())
        else:
            out = _attend(q, cross[0], cross[1], cross_mask, self._p(), self.mode)
        x = x + self.dropout(c.o(c.merge(out)))
        return x + self.dropout(self.ff(self.norm3(x)))

    def step(
        self,
        x: Tensor,
        cache_k: Tensor | None,
        cache_v: Tensor | None,
        self_bias: Tensor,
        cross: tuple[Tensor, Tensor],
        cross_mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One incremental decoding step for W beams per user (eval mode).

        Args:
            x: [B, W, d] embeddings of the newest token of each beam.
            cache_k, cache_v: [B*W, H, t, dk] keys/values of the beams' earlier tokens, or None.
            self_bias: [1, H, 1, t+1] decoder position bias of the newest position.
            cross: 2 x [B, H, S, dk], computed once per user and shared by all its beams.
            cross_mask: [B, 1, 1, S].

        Returns:
            new x [B, W, d] and the extended caches [B*W, H, t+1, dk].
        """
        b, w, _ = x.shape
        a = self.self_attn
        h = self.norm1(x).reshape(b * w, 1, -1)
        q, k, v = a.split(a.q(h)), a.split(a.k(h)), a.split(a.v(h))  # [B*W, H, 1, dk]
        cache_k = k if cache_k is None else torch.cat([cache_k, k], dim=2)
        cache_v = v if cache_v is None else torch.cat([cache_v, v], dim=2)
        out = _attend(q, cache_k, cache_v, self_bias, 0.0)
        x = x + a.o(a.merge(out)).view(b, w, -1)
        # Cross-attention: the W beams of a user are W query rows against the user's one K/V.
        c = self.cross_attn
        out = _attend(c.split(c.q(self.norm2(x))), cross[0], cross[1], cross_mask, 0.0)
        x = x + c.o(c.merge(out))
        return x + self.ff(self.norm3(x)), cache_k, cache_v


@dataclass
class DecoderState:
    """Incremental decoding state of a batch of B users with W beams each.

    ``cross``: per layer 2 x [B, H, S, dk] (never expanded to beams); ``cross_mask``:
    [B, 1, 1, S]; ``self_k``/``self_v``: per layer [B*W, H, t, dk] or None before the first step.
    """

    cross: list[tuple[Tensor, Tensor]]
    cross_mask: Tensor
    self_k: list[Tensor | None]
    self_v: list[Tensor | None]
    step: int = 0

    def reorder(self, parent: Tensor) -> None:
        """Keep/duplicate beams: parent LongTensor[B, W'] indexes the current W beams."""
        b = parent.shape[0]
        w = self.self_k[0].shape[0] // b  # type: ignore[union-attr]
        rows = (parent + torch.arange(b, device=parent.device)[:, None] * w).flatten()
        self.self_k = [k.index_select(0, rows) for k in self.self_k]  # type: ignore[union-attr]
        self.self_v = [v.index_select(0, rows) for v in self.self_v]  # type: ignore[union-attr]
