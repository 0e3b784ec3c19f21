"""Compact T5 encoder-decoder for generative recommendation (pure torch, no Lightning).

Our own T5 rather than ``transformers``' T5 because (1) the encoder needs the dual relative
position bias (across items + within items), which HF's T5 cannot express without patching its
attention, and (2) fast constrained beam search needs a decoder step that computes the
cross-attention keys/values once per user and lets all beams of a user attend as extra query
rows, which HF's cache (K/V per beam, reordered every step) does not do.

It is architecturally T5 v1.0/1.1 so that, with ``position_bias="t5"``, its weights map 1:1 onto
``transformers.T5ForConditionalGeneration`` (:func:`to_hf_t5`, tested for equal logits):
pre-norm RMSNorm without bias, no attention scaling (folded into the init), bias-free
projections, relative position bias computed once and shared by all layers, final norms,
FFN ``relu`` (T5 v1.0 / TIGER, default) or ``gated-gelu`` (T5 v1.1, tanh GELU).

Decoder: input is the start token (id 0) followed by the target modality's codes as input-table
tokens (embedding shared with the encoder, as in T5); output is one vocabulary per target level.
The output table is untied from the input table by default (paper); one weight matrix of
``sum_l V_l`` rows holds all levels, level ``l`` at rows ``head_offsets[l]:+V_l``. Tied: level l
reuses the input rows of the target tokens of level l, with T5's ``d_model**-0.5`` scaling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.genrec.layers import (
    DROPOUT_MODES,
    Attention,
    DecoderLayer,
    DecoderState,
    EncoderLayer,
    FeedForward,
    RMSNorm,
    _neg,
    exact_bucket,
    make_dropout,
    relative_bucket,
)
from mscg_lightning.stages.genrec.model_config import ENCODER_ATTENTIONS, GenRecConfig
from mscg_lightning.stages.genrec.similarity_attention import aligned_items, similarity_buckets
from mscg_lightning.stages.genrec.triple_tokens import TripleTokens

__all__ = [
    "Attention",
    "DROPOUT_MODES",
    "DecoderLayer",
    "DecoderState",
    "ENCODER_ATTENTIONS",
    "EncoderLayer",
    "FeedForward",
    "GenRecConfig",
    "GenRecT5",
    "RMSNorm",
    "exact_bucket",
    "relative_bucket",
    "to_hf_t5",
]


class GenRecT5(nn.Module):
    """T5 encoder-decoder over multimodal code histories that generates target-modality codes.

    Args:
        cfg: hyperparameters, usually from :meth:`GenRecConfig.from_layout`.
    """

    def __init__(self, cfg: GenRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, heads = cfg.d_model, cfg.num_heads
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.encoder_norm = RMSNorm(d, cfg.layer_norm_eps)
        self.decoder_norm = RMSNorm(d, cfg.layer_norm_eps)
        self.dropout = make_dropout(cfg.dropout, cfg.dropout_mode)
        if cfg.position_bias == "dual":
            self.item_bias = nn.Embedding(cfg.item_buckets, heads)
            self.code_bias = nn.Embedding(cfg.code_buckets, heads)
        else:
            self.encoder_bias = nn.Embedding(cfg.num_buckets, heads)
        self.decoder_bias = nn.Embedding(cfg.num_buckets, heads)
        sizes = cfg.target_sizes
        self.head_offsets = tuple(sum(sizes[:level]) for level in range(len(sizes)))
        tied = cfg.tie_output or cfg.triple_target
        self.head = None if tied else nn.Linear(d, sum(sizes), bias=False)
        self.register_buffer(
            "target_offsets", torch.tensor(cfg.target_offsets, dtype=torch.long), persistent=False
        )
        self.register_buffer("item_vectors", torch.zeros(0, 1), persistent=False)
        self.reset_parameters()
        self.triple: TripleTokens | None = None  # after reset_parameters: its own init
        if cfg.triple_sizes:
            self.triple = TripleTokens(
                cfg.triple_start, cfg.triple_sizes, cfg.triple_signals, cfg.triple_codebook_size, d
            )

    def embed_ids(self, ids: Tensor) -> Tensor:
        """Input embeddings [..., d] of layout ids [...] (triple tokens via ``self.triple``)."""
        return self.embed(ids) if self.triple is None else self.triple.embed(ids, self.embed)

    def set_item_vectors(self, vectors: Tensor) -> None:
        """The catalogue's item vectors v [N, D] of similarity attention (not saved)."""
        self.item_vectors = vectors.float().to(self.target_offsets.device)

    def similarity_buckets(self, history: Tensor) -> Tensor | None:
        """Item-pair buckets [B, J, J] of histories [B, H] (-1 padded) as the tokenizer aligns
        them (J = longest history); None without similarity attention."""
        if not self.cfg.sim_attention:
            return None
        if self.item_vectors.shape[0] == 0:
            raise MscgError("genrec sim_attention: set_item_vectors was not called.")
        items = aligned_items(history)
        return similarity_buckets(self.item_vectors, items, items, self.cfg.sim_buckets)

    @property
    def num_levels(self) -> int:
        """Number of generated codes D = L+1."""
        return len(self.cfg.target_sizes)

    def reset_parameters(self) -> None:
        """T5's initialisation (no attention scaling, so q is initialised smaller)."""
        d, dk, heads = self.cfg.d_model, self.cfg.d_kv, self.cfg.num_heads
        nn.init.normal_(self.embed.weight, std=1.0)
        if self.head is not None:
            # T5 uses std 1.0 for an untied head; d**-0.5 gives unit-scale initial logits.
            nn.init.normal_(self.head.weight, std=d**-0.5)
        for module in self.modules():
            if isinstance(module, Attention):
                nn.init.normal_(module.q.weight, std=(d * dk) ** -0.5)
                nn.init.normal_(module.k.weight, std=d**-0.5)
                nn.init.normal_(module.v.weight, std=d**-0.5)
                nn.init.normal_(module.o.weight, std=(heads * dk) ** -0.5)
            elif isinstance(module, FeedForward):
                for lin in (module.wi_0, module.wi_1) if module.gated else (module.wi,):
                    nn.init.normal_(lin.weight, std=d**-0.5)
                nn.init.normal_(module.wo.weight, std=self.cfg.d_ff**-0.5)
            elif isinstance(module, nn.Embedding) and module is not self.embed:
                nn.init.normal_(module.weight, std=d**-0.5)  # position biases

    # ----------------------------------------------------------------------------- encoder
    def encoder_bias_values(self, item_pos: Tensor, code_pos: Tensor) -> Tensor:
        """Encoder position bias. item_pos/code_pos: [S] or [B, S] -> [1|B, H, S, S]."""
        item_pos = item_pos.reshape(-1, item_pos.shape[-1])
        code_pos = code_pos.reshape(-1, code_pos.shape[-1])
        cfg = self.cfg
        # relative = key - query in chronological order; item_pos counts back from the newest.
        rel_item = item_pos[:, :, None] - item_pos[:, None, :]
        rel_code = code_pos[:, None, :] - code_pos[:, :, None]
        if cfg.position_bias == "t5":
            rel = rel_item * cfg.tokens_per_item + rel_code
            values = self.encoder_bias(
                relative_bucket(rel, cfg.num_buckets, cfg.max_distance, True)
            )
        else:
            if cfg.code_buckets_exact:
                code_bucket = exact_bucket(rel_code, cfg.code_buckets, cfg.code_max_distance)
            else:
                code_bucket = relative_bucket(
                    rel_code, cfg.code_buckets, cfg.code_max_distance, True
                )
            values = self.item_bias(
                relative_bucket(rel_item, cfg.item_buckets, cfg.item_max_distance, True)
            ) + self.code_bias(code_bucket)
        return values.permute(0, 3, 1, 2)

    def encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        item_pos: Tensor,
        code_pos: Tensor,
        item_buckets: Tensor | None = None,
    ) -> Tensor:
        """Encode histories.

        Args:
            input_ids: LongTensor[B, S]; attention_mask: BoolTensor[B, S] (True = token);
            item_pos, code_pos: LongTensor[S] or [B, S] (see ``tokens.EncoderInputs``).
            item_buckets: LongTensor[B, J, J] (:meth:`similarity_buckets`, S = J x tokens per
                item), required with ``sim_attention``.

        Returns:
            FloatTensor[B, S, d_model]. With ``encoder_attention="item_causal"`` the states of an
            item's tokens depend only on that item and the items before it.
        """
        if self.cfg.sim_attention and item_buckets is None:
            raise MscgError("genrec sim_attention: encode() needs the history's item_buckets.")
        x = self.dropout(self.embed_ids(input_ids))
        bias = self.encoder_bias_values(item_pos, code_pos)
        pad = torch.where(attention_mask, 0.0, _neg(bias.dtype))[:, None, None, :]
        bias = bias + pad  # [B, H, S, S], shared by every layer as in T5
        if self.cfg.encoder_attention == "item_causal":
            # key item no newer than the query's item: item_pos counts back from the newest
            pos = item_pos.reshape(-1, 1, item_pos.shape[-1])
            later = pos.transpose(-1, -2) > pos  # [1|B, S(query), S(key)]: key newer
            bias = bias.masked_fill(later[:, None], _neg(bias.dtype))
        if torch.is_autocast_enabled(x.device.type):
            # one low-precision copy for all layers rather than one [B, H, S, S] copy per layer
            bias = bias.to(torch.get_autocast_dtype(x.device.type))
        for layer in self.encoder_layers:
            if self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled():
                # the RNG state is replayed on recomputation, so dropout masks are the same
                x = torch.utils.checkpoint.checkpoint(
                    layer, x, bias, item_buckets, use_reentrant=False
                )
            else:
                x = layer(x, bias, item_buckets)
        return self.dropout(self.encoder_norm(x))

    # ----------------------------------------------------------------------------- decoder
    def decoder_bias_values(self, length: int, device: torch.device) -> Tensor:
        """Causal T5 decoder bias [1, H, T, T] (future keys masked)."""
        pos = torch.arange(length, device=device)
        rel = pos[None, :] - pos[:, None]
        cfg = self.cfg
        values = self.decoder_bias(relative_bucket(rel, cfg.num_buckets, cfg.max_distance, False))
        values = values.permute(2, 0, 1)[None]
        return values.masked_fill(rel[None, None] > 0, _neg(values.dtype))

    def code_token_ids(self, codes: Tensor, level: int | Tensor) -> Tensor:
        """Input-table ids of target codes at ``level``: LongTensor[...] -> LongTensor[...]."""
        return codes + self.target_offsets[level]

    def decoder_input_ids(self, target_codes: Tensor) -> Tensor:
        """Teacher-forcing inputs: [B, D] codes -> [B, D] ids (start token, then c_0..c_{D-2})."""
        ids = target_codes[:, :-1] + self.target_offsets[:-1]
        return torch.cat([torch.zeros_like(target_codes[:, :1]), ids], dim=1)

    def head_weight(self, level: int) -> Tensor:
        """Output rows of ``level``: [V_l, d] (scaled by d**-0.5 when tied, as T5 does)."""
        size = self.cfg.target_sizes[level]
        if self.cfg.triple_target:
            return self.triple.head_weight(level)
        if self.head is None:
            start = self.cfg.target_offsets[level]
            return self.embed.weight[start : start + size] * self.cfg.d_model**-0.5
        start = self.head_offsets[level]
        return self.head.weight[start : start + size]

    def output_weight(self) -> Tensor:
        """Every level's output rows, ``[sum_l V_l, d]`` with level l at ``head_offsets[l]``."""
        if self.head is None:
            return torch.cat([self.head_weight(level) for level in range(self.num_levels)])
        return self.head.weight

    def level_logits(self, hidden: Tensor, level: int) -> Tensor:
        """Float32 logits over level ``level``'s codes: [..., d] -> [..., V_l] (also under
        autocast: close items must not tie or swap in bf16)."""
        with torch.autocast(hidden.device.type, enabled=False):
            return F.linear(hidden.float(), self.head_weight(level).float())

    def full_logits(self, hidden: Tensor) -> Tensor:
        """Float32 logits over every level's output rows: [..., d] -> [..., sum_l V_l]."""
        with torch.autocast(hidden.device.type, enabled=False):
            return F.linear(hidden.float(), self.output_weight().float())

    def logits(self, hidden: Tensor, full_vocab: bool = False) -> Tensor:
        """Output logits of decoder states [N, D, d]: [N, D, V_max] (level l's columns beyond V_l
        are -inf) or, with ``full_vocab``, [N, D, sum_l V_l]. Float32."""
        if full_vocab:
            return self.full_logits(hidden)
        depth = hidden.shape[1]
        v_max = max(self.cfg.target_sizes)
        out = hidden.new_full((hidden.shape[0], depth, v_max), float("-inf"), dtype=torch.float32)
        for level in range(depth):
            out[:, level, : self.cfg.target_sizes[level]] = self.level_logits(
                hidden[:, level], level
            )
        return out

    def decode(
        self, enc: Tensor, attention_mask: Tensor, target_codes: Tensor, full_vocab: bool = False
    ) -> Tensor:
        """Teacher-forced decoder.

        Args:
            enc: [B, S, d] encoder output; attention_mask: BoolTensor[B, S];
            target_codes: LongTensor[B, D].
            full_vocab: return every level's logits over the whole output vocabulary instead.

        Returns:
            logits FloatTensor[B, D, V_max]; level l's columns beyond V_l are -inf. With
            ``full_vocab``: FloatTensor[B, D, sum_l V_l] (level l's codes at ``head_offsets[l]``).
        """
        x = self.dropout(self.embed_ids(self.decoder_input_ids(target_codes)))
        depth = target_codes.shape[1]
        self_bias = self.decoder_bias_values(depth, x.device)
        cross_mask = torch.where(attention_mask, 0.0, _neg(x.dtype))[:, None, None, :]
        for layer in self.decoder_layers:
            x = layer(x, self_bias, layer.cross_kv(enc), cross_mask)
        return self.logits(self.dropout(self.decoder_norm(x)), full_vocab)

    def decode_windows(
        self, enc: Tensor, attention_mask: Tensor, tokens_per_item: int, target_codes: Tensor
    ) -> Tensor:
        """Teacher-forced decoder for every target of a window in one pass (item-causal encoder).

        Target ``t`` follows history item ``t``: its D decoder tokens cross-attend only to the
        encoder states of items ``0..t`` and self-attend causally within their own block, so each
        block computes what :meth:`decode` computes for the history ``items[:t+1]``.

        Args:
            enc: [B, S, d] encoder output, S = T * tokens_per_item (items oldest first).
            attention_mask: BoolTensor[B, S].
            tokens_per_item: encoder tokens per history item.
            target_codes: LongTensor[B, T, D] codes of the item after each history item (any
                valid codes where there is no target; their states are simply not used).

        Returns:
            Decoder states FloatTensor[B, T, D, d_model] (feed the kept ones to :meth:`logits`).
        """
        b, t, depth = target_codes.shape
        ids = self.decoder_input_ids(target_codes.reshape(b * t, depth)).view(b, t * depth)
        x = self.dropout(self.embed_ids(ids))  # [B, T*D, d]
        block = torch.arange(t, device=x.device).repeat_interleave(depth)  # target of each row
        level = torch.arange(depth, device=x.device).repeat(t)
        one = self.decoder_bias_values(depth, x.device)  # [1, H, D, D]
        self_bias = one[:, :, level[:, None], level[None, :]]  # [1, H, T*D, T*D]
        self_bias = self_bias.masked_fill(block[:, None] != block[None, :], _neg(x.dtype))
        key_item = torch.arange(enc.shape[1], device=x.device) // tokens_per_item  # [S]
        visible = (key_item[None, :] <= block[:, None])[None] & attention_mask[:, None, :]
        cross_mask = torch.where(visible, 0.0, _neg(x.dtype))[:, None]  # [B, 1, T*D, S]
        for layer in self.decoder_layers:
            x = layer(x, self_bias, layer.cross_kv(enc), cross_mask)
        return self.dropout(self.decoder_norm(x)).view(b, t, depth, -1)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        item_pos: Tensor,
        code_pos: Tensor,
        target_codes: Tensor,
        full_vocab: bool = False,
        item_buckets: Tensor | None = None,
    ) -> Tensor:
        """Teacher-forced logits [B, D, V_max] (or [B, D, sum V_l], see ``decode``) of the target
        codes [B, D] given histories."""
        enc = self.encode(input_ids, attention_mask, item_pos, code_pos, item_buckets)
        return self.decode(enc, attention_mask, target_codes, full_vocab)

    def start_decoding(self, enc: Tensor, attention_mask: Tensor) -> DecoderState:
        """Decoding state with each layer's cross K/V computed once: enc [B, S, d]."""
        cross_mask = torch.where(attention_mask, 0.0, _neg(enc.dtype))[:, None, None, :]
        n = len(self.decoder_layers)
        return DecoderState(
            cross=[layer.cross_kv(enc) for layer in self.decoder_layers],
            cross_mask=cross_mask,
            self_k=[None] * n,
            self_v=[None] * n,
        )

    def decode_step(self, state: DecoderState, tokens: Tensor) -> Tensor:
        """Feed one token per beam and return the final hidden state (eval mode).

        Args:
            state: decoding state (updated in place: caches grow by one position).
            tokens: LongTensor[B, W] input ids (the start token 0 at step 0).

        Returns:
            FloatTensor[B, W, d_model]; ``level_logits(h, state.step - 1)`` scores the next code.
        """
        t = state.step
        x = self.embed_ids(tokens)
        bias = self.decoder_bias_values(t + 1, x.device)[:, :, t : t + 1, :]  # [1, H, 1, t+1]
        for i, layer in enumerate(self.decoder_layers):
            x, state.self_k[i], state.self_v[i] = layer.step(
                x, state.self_k[i], state.self_v[i], bias, state.cross[i], state.cross_mask
            )
        state.step = t + 1
        return self.decoder_norm(x)


from mscg_lightning.stages.genrec.hf_export import to_hf_t5  # noqa: E402  (re-export)
