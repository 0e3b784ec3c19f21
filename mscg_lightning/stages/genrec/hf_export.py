"""Export of a ``position_bias="t5"`` :class:`~mscg_lightning.stages.genrec.model.GenRecT5` into
``transformers.T5ForConditionalGeneration`` (same weights, equal logits; tested)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.genrec.layers import Attention, FeedForward

if TYPE_CHECKING:
    from transformers import T5ForConditionalGeneration

    from mscg_lightning.stages.genrec.model import GenRecT5


def to_hf_t5(model: GenRecT5) -> T5ForConditionalGeneration:
    """Copy a ``position_bias="t5"`` model into ``transformers.T5ForConditionalGeneration``.

    The HF vocabulary is our input vocabulary; ``lm_head`` row ``target_offsets[l] + c`` holds our
    output row for (level l, code c) and every other row is zero, so HF's logits at step l equal
    ours on the tokens a prefix constraint allows. HF's EOS is id 0 (never allowed), so beams end
    by length. Used by the decode-speed benchmark's baseline and its equivalence test.
    """
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = model.cfg
    if cfg.position_bias != "t5":
        raise MscgError("only a genrec model with position_bias='t5' maps onto HF T5 weights.")
    if cfg.triple_sizes or cfg.sim_attention:
        raise MscgError("a genrec model with triple tokens or sim_attention has no HF T5 form.")
    hf_cfg = T5Config(
        vocab_size=cfg.vocab_size,
        d_model=cfg.d_model,
        d_kv=cfg.d_kv,
        d_ff=cfg.d_ff,
        num_layers=cfg.encoder_layers,
        num_decoder_layers=cfg.decoder_layers,
        num_heads=cfg.num_heads,
        relative_attention_num_buckets=cfg.num_buckets,
        relative_attention_max_distance=cfg.max_distance,
        dropout_rate=cfg.dropout,
        layer_norm_epsilon=cfg.layer_norm_eps,
        feed_forward_proj=cfg.ffn,
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=0,
    )
    hf = T5ForConditionalGeneration(hf_cfg)
    sd: dict[str, Tensor] = {"shared.weight": model.embed.weight}
    sd["encoder.embed_tokens.weight"] = model.embed.weight
    sd["decoder.embed_tokens.weight"] = model.embed.weight

    def attn(prefix: str, a: Attention) -> None:
        for name in ("q", "k", "v", "o"):
            sd[f"{prefix}.{name}.weight"] = getattr(a, name).weight

    def ff(prefix: str, f: FeedForward) -> None:
        names = ("wi_0", "wi_1", "wo") if f.gated else ("wi", "wo")
        for name in names:
            sd[f"{prefix}.DenseReluDense.{name}.weight"] = getattr(f, name).weight

    for i, layer in enumerate(model.encoder_layers):
        p = f"encoder.block.{i}.layer"
        attn(f"{p}.0.SelfAttention", layer.attn)
        sd[f"{p}.0.layer_norm.weight"] = layer.norm1.weight
        ff(f"{p}.1", layer.ff)
        sd[f"{p}.1.layer_norm.weight"] = layer.norm2.weight
    for i, layer in enumerate(model.decoder_layers):
        p = f"decoder.block.{i}.layer"
        attn(f"{p}.0.SelfAttention", layer.self_attn)
        sd[f"{p}.0.layer_norm.weight"] = layer.norm1.weight
        attn(f"{p}.1.EncDecAttention", layer.cross_attn)
        sd[f"{p}.1.layer_norm.weight"] = layer.norm2.weight
        ff(f"{p}.2", layer.ff)
        sd[f"{p}.2.layer_norm.weight"] = layer.norm3.weight
    sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
        model.encoder_bias.weight
    )
    sd["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
        model.decoder_bias.weight
    )
    sd["encoder.final_layer_norm.weight"] = model.encoder_norm.weight
    sd["decoder.final_layer_norm.weight"] = model.decoder_norm.weight
    lm_head = torch.zeros(cfg.vocab_size, cfg.d_model)
    for level, (start, size) in enumerate(zip(cfg.target_offsets, cfg.target_sizes)):
        lm_head[start : start + size] = model.head_weight(level).detach()
    missing, unexpected = hf.load_state_dict(
        {k: v.detach().clone() for k, v in sd.items()}, strict=False
    )
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"HF T5 export mismatch: missing {missing}, unexpected {unexpected}")
    # transformers 5 always ties lm_head to the shared embedding; a new Parameter unties it
    # (tie_word_embeddings=False above already turned off the tied-head output scaling).
    hf.lm_head.weight = nn.Parameter(lm_head)
    if hf.config.scale_decoder_outputs:
        raise RuntimeError("HF T5 export expects scale_decoder_outputs=False")
    return hf.eval()
