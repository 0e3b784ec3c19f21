"""MACRec's generator network: one :class:`GenRecT5` that decodes either modality's codes.

MACRec (MQL4GRec's T5) has one vocabulary holding the text and the image code tokens; the
decoder generates the text codes for text-target tasks and the image codes for image-target
tasks. :class:`GenRecT5` is composed, not changed: it is built with one *combined* output block
per code position ``p``: rows ``[text codes of p | image codes of p]`` (``V_t,p + V_v,p`` rows),
so that

* the decoder input of image code ``c`` at position ``p`` is its own input-vocabulary token
  (``image offset(p) + c``, shared with the encoder as in T5): :class:`GenRecT5` adds its
  ``target_offsets`` (the text offsets) to the codes it is given, so image codes are passed
  shifted by ``image offset(p) - text offset(p)`` (:attr:`MacrecGenerator.shift`);
* level ``p``'s logits of modality ``m`` are the block's columns ``column[m, p] + [0, V_m,p)``;
* with ``full_vocab`` training the softmax spans every output row of both modalities and all
  levels: MQL4GRec's cross-entropy over all code tokens.

:class:`ModalityDecoder` is the view of one target modality that
:func:`~mscg_lightning.stages.genrec.beam_search.beam_search` decodes with (it reads
``cfg.target_sizes``, ``code_token_ids``, ``level_logits``, ``head_offsets``, ``output_weight``
and the encoder / step functions), so constrained beam search runs once per target modality
against that modality's prefix index. Tied output tables are not supported (the combined block
is not a contiguous input-table range).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.genrec.model import DecoderState, GenRecConfig, GenRecT5
from mscg_lightning.stages.genrec.tokens import EncoderInputs, TokenLayout

MODALITIES = ("text", "image")


class MacrecGenerator(nn.Module):
    """GenRecT5 over a two-modality (text, image) layout, decoding either modality.

    Args:
        layout: TokenLayout over ("text", "image") with the same number of code positions
            ``P`` (levels + collision level) in both modalities.
        extra_vocab: input ids after the layout's vocabulary (task prompt tokens).
        tokens_per_item: widest within-item position (``max(P, prompt tokens)``): the dual
            bias's within-item buckets and the ``t5`` bias's flat positions.
        **t5: :class:`GenRecConfig` fields (d_model, num_heads, ..., position_bias).
    """

    def __init__(
        self, layout: TokenLayout, extra_vocab: int, tokens_per_item: int, **t5: Any
    ) -> None:
        super().__init__()
        if tuple(layout.modalities) != MODALITIES:
            raise MscgError(f"MACRec needs the modalities {MODALITIES}, got {layout.modalities}.")
        p_text, p_image = layout.positions_per_modality
        if p_text != p_image:
            raise MscgError(
                f"MACRec needs as many text as image code levels, got {p_text - 1} text and "
                f"{p_image - 1} image levels (+ collision level)."
            )
        if t5.get("tie_output"):
            raise MscgError("MACRec's generator does not support tie_output: set it false.")
        text_sizes, image_sizes = layout.vocab_sizes
        cfg = GenRecConfig(
            vocab_size=layout.vocab_size + int(extra_vocab),
            target_offsets=layout.offsets[0],
            target_sizes=tuple(t + v for t, v in zip(text_sizes, image_sizes)),
            tokens_per_item=int(tokens_per_item),
            **t5,
        )
        self.t5 = GenRecT5(cfg)
        self.layout = layout
        self.positions = p_text
        offsets = torch.tensor(layout.offsets, dtype=torch.long)  # [2, P]
        sizes = torch.tensor(layout.vocab_sizes, dtype=torch.long)  # [2, P]
        column = torch.stack([torch.zeros_like(sizes[0]), sizes[0]])  # [2, P]
        self.register_buffer("shift", offsets - offsets[0], persistent=False)
        self.register_buffer("sizes", sizes, persistent=False)
        self.register_buffer("column", column, persistent=False)
        self.v_max = int(sizes.max())

    def encode(self, inputs: EncoderInputs) -> Tensor:
        """Encoder states [B, S, d] of :class:`EncoderInputs`."""
        return self.t5.encode(*inputs)

    def logits(
        self, enc: Tensor, mask: Tensor, codes: Tensor, modality: Tensor, full_vocab: bool = False
    ) -> Tensor:
        """Teacher-forced logits of each row's target modality.

        Args:
            enc: [B, S, d] encoder states; mask: BoolTensor[B, S].
            codes: LongTensor[B, P] target codes (valid) of modality ``modality`` [B] (0 text,
                1 image).
            full_vocab: return the logits over every output row instead (see
                :meth:`full_vocab_targets`).

        Returns:
            FloatTensor[B, P, V_max] (V_max = the largest level of either modality; columns
            beyond the row's level size are -inf), or [B, P, sum_p (V_t,p + V_v,p)].
        """
        full = self.t5.decode(enc, mask, codes + self.shift[modality], full_vocab=full_vocab)
        if full_vocab:
            return full
        cols = torch.arange(self.v_max, device=codes.device)
        idx = self.column[modality][:, :, None] + cols  # [B, P, V]
        idx = idx.clamp(max=full.shape[-1] - 1)
        valid = cols < self.sizes[modality][:, :, None]
        return torch.where(valid, full.gather(2, idx), float("-inf"))

    def full_vocab_targets(self, codes: Tensor, modality: Tensor) -> Tensor:
        """Row of each target code among all output rows: [B, P] -> [B, P]."""
        start = torch.tensor(self.t5.head_offsets, device=codes.device)
        return codes + start + self.column[modality]

    def view(self, modality: str) -> ModalityDecoder:
        """The decoder of one target modality, for ``beam_search``."""
        return ModalityDecoder(self, MODALITIES.index(modality))


class ModalityDecoder:
    """One target modality of a :class:`MacrecGenerator`, shaped like :class:`GenRecT5` for
    ``beam_search`` (it holds no parameters of its own)."""

    def __init__(self, gen: MacrecGenerator, m: int) -> None:
        self.t5, self.m = gen.t5, m
        self.offsets = tuple(gen.layout.offsets[m])
        self.sizes = tuple(gen.layout.vocab_sizes[m])
        self.columns = tuple(int(c) for c in gen.column[m].tolist())
        self.cfg = SimpleNamespace(target_sizes=self.sizes)
        self.head_offsets = tuple(h + c for h, c in zip(self.t5.head_offsets, self.columns))

    def encode(self, *inputs: Tensor) -> Tensor:
        """Encoder states [B, S, d]."""
        return self.t5.encode(*inputs)

    def start_decoding(self, enc: Tensor, attention_mask: Tensor) -> DecoderState:
        """As :meth:`GenRecT5.start_decoding`."""
        return self.t5.start_decoding(enc, attention_mask)

    def decode_step(self, state: DecoderState, tokens: Tensor) -> Tensor:
        """As :meth:`GenRecT5.decode_step`: hidden [B, W, d]."""
        return self.t5.decode_step(state, tokens)

    def code_token_ids(self, codes: Tensor, level: int) -> Tensor:
        """Input ids of this modality's codes at ``level``."""
        return codes + self.offsets[level]

    def level_logits(self, hidden: Tensor, level: int) -> Tensor:
        """Logits over this modality's codes at ``level``: [..., d] -> [..., V_m,level]."""
        start = self.columns[level]
        return self.t5.level_logits(hidden, level)[..., start : start + self.sizes[level]]

    def output_weight(self) -> Tensor:
        """Every output row of both modalities (``full_vocab`` scoring)."""
        return self.t5.output_weight()
