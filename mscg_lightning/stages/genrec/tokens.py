"""Token layout of the generative recommender and the history -> encoder-input conversion.

Vocabulary of the single input embedding table (shared by encoder and decoder, as in T5):

* id 0: padding; it is also the decoder's start token (T5's ``decoder_start_token_id = pad``).
* for each modality in the configured order, for each of its code positions ``p`` (its ``L``
  levels, then the collision level), a block of ``vocab_sizes[m][p]`` ids: code ``c`` of
  modality ``m`` at position ``p`` is ``offset(m, p) + c``.
* one mask token per (modality, position), appended after all code blocks.

Mask tokens are per (modality, position) rather than one per modality so that a masked item
keeps a different token at each of its positions: under the plain T5 bias (ablation) nothing
else would tell the positions of a masked modality apart. It costs ``M * (L+1)`` rows (12).

Every history item occupies ``tokens_per_item = sum_m (L_m + 1)`` consecutive positions in the
fixed modality order, so all items have the same width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from mscg_lightning.data.datamodule import trim_left_padding
from mscg_lightning.errors import MscgError

PAD_ID = 0


class TokenLayout:
    """Describes the input vocabulary: modalities, code positions, mask tokens, target modality.

    Args:
        modalities: modality names in the fixed order used inside every history item.
        vocab_sizes: per modality, the vocabulary size of each code position (levels, then the
            collision level), e.g. ``[[256, 256, 256, 7], ...]``.
        target: the modality whose codes the decoder generates.
    """

    def __init__(
        self, modalities: Sequence[str], vocab_sizes: Sequence[Sequence[int]], target: str
    ) -> None:
        if len(modalities) == 0 or len(set(modalities)) != len(modalities):
            raise MscgError(f"genrec modalities must be non-empty and unique, got {modalities}.")
        if len(vocab_sizes) != len(modalities):
            raise MscgError(
                f"genrec got {len(vocab_sizes)} vocab size lists for {len(modalities)} modalities."
            )
        if target not in modalities:
            raise MscgError(f"genrec target modality '{target}' is not among {list(modalities)}.")
        for name, sizes in zip(modalities, vocab_sizes):
            if len(sizes) == 0 or any(int(s) < 1 for s in sizes):
                raise MscgError(f"genrec vocab sizes of modality '{name}' are invalid: {sizes}.")
        self.modalities: tuple[str, ...] = tuple(modalities)
        self.vocab_sizes: tuple[tuple[int, ...], ...] = tuple(
            tuple(int(s) for s in sizes) for sizes in vocab_sizes
        )
        self.target = target
        self.target_index = self.modalities.index(target)

        offsets: list[list[int]] = []
        next_id = PAD_ID + 1
        for sizes in self.vocab_sizes:
            offsets.append([])
            for size in sizes:
                offsets[-1].append(next_id)
                next_id += size
        self.offsets: tuple[tuple[int, ...], ...] = tuple(tuple(o) for o in offsets)
        # Mask tokens follow the code blocks, one per (modality, position), in item order.
        self.positions_per_modality: tuple[int, ...] = tuple(len(s) for s in self.vocab_sizes)
        self.tokens_per_item = sum(self.positions_per_modality)
        self.mask_ids: tuple[int, ...] = tuple(range(next_id, next_id + self.tokens_per_item))
        self.vocab_size = next_id + self.tokens_per_item
        # modality index of each position inside an item: [T_item]
        self.modality_of_position: tuple[int, ...] = tuple(
            m for m, n in enumerate(self.positions_per_modality) for _ in range(n)
        )

    @property
    def num_modalities(self) -> int:
        """Number of modalities M."""
        return len(self.modalities)

    @property
    def target_sizes(self) -> tuple[int, ...]:
        """Vocabulary size of each target level (the decoder's L+1 output vocabularies)."""
        return self.vocab_sizes[self.target_index]

    @property
    def target_offsets(self) -> tuple[int, ...]:
        """Input-table id of code 0 at each target level (decoder input ids)."""
        return self.offsets[self.target_index]

    @property
    def max_positions(self) -> int:
        """Largest number of code positions of any modality (the padded width of code tensors)."""
        return max(self.positions_per_modality)

    def __repr__(self) -> str:
        return (
            f"TokenLayout(modalities={self.modalities}, vocab_sizes={self.vocab_sizes}, "
            f"target={self.target!r}, vocab_size={self.vocab_size})"
        )


def stack_modality_codes(
    layout: TokenLayout, num_items: int, tables: Mapping[str, tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor]:
    """Stack per-modality code tables (as read from codes artifacts) into one tensor.

    Args:
        layout: the token layout; every modality of it must be in ``tables``.
        num_items: catalogue size N (``item_idx`` in ``[0, N)``).
        tables: modality -> (``item_idx`` LongTensor[n_m], ``codes`` LongTensor[n_m, P_m]);
            items absent from a table miss that modality.

    Returns:
        ``codes`` LongTensor[N, M, P_max] (-1 where missing or beyond a modality's positions) and
        ``present`` BoolTensor[N, M].
    """
    m_count, p_max = layout.num_modalities, layout.max_positions
    codes = torch.full((num_items, m_count, p_max), -1, dtype=torch.long)
    present = torch.zeros(num_items, m_count, dtype=torch.bool)
    for m, name in enumerate(layout.modalities):
        if name not in tables:
            raise MscgError(f"genrec has no codes for modality '{name}'.")
        item_idx, table = tables[name]
        item_idx, table = item_idx.long(), table.long()
        n_pos = layout.positions_per_modality[m]
        if table.ndim != 2 or table.shape[1] != n_pos:
            raise MscgError(
                f"codes of modality '{name}' have shape {tuple(table.shape)}, "
                f"expected [n, {n_pos}] (levels + collision level)."
            )
        if item_idx.numel() and (item_idx.min() < 0 or item_idx.max() >= num_items):
            raise MscgError(
                f"codes of modality '{name}' name item_idx outside [0, {num_items}): "
                f"{int(item_idx.min())}..{int(item_idx.max())}."
            )
        codes[item_idx, m, :n_pos] = table
        present[item_idx, m] = True
    return codes, present


class EncoderInputs(NamedTuple):
    """Encoder inputs of a batch of histories (S = H * tokens_per_item).

    ``input_ids`` LongTensor[B, S]; ``attention_mask`` BoolTensor[B, S] (True = real token);
    ``item_pos`` LongTensor[S]: item distance from the most recent history item (0 = most recent);
    ``code_pos`` LongTensor[S]: position inside the item (0 .. tokens_per_item-1).
    """

    input_ids: Tensor
    attention_mask: Tensor
    item_pos: Tensor
    code_pos: Tensor


class HistoryTokenizer(nn.Module):
    """Turns item histories into encoder token ids; holds the per-item tokens as buffers.

    Buffers move with ``.to(device)`` and are not saved in checkpoints (rebuilt from codes).

    Args:
        layout: the token layout.
        codes: LongTensor[N, M, P_max], codes of each item per modality (see
            :func:`stack_modality_codes`).
        present: BoolTensor[N, M], False where an item lacks a modality (it then always shows
            that modality's mask tokens).
    """

    def __init__(self, layout: TokenLayout, codes: Tensor, present: Tensor) -> None:
        super().__init__()
        n_items, m_count = present.shape
        if (
            codes.ndim != 3
            or codes.shape[:2] != (n_items, m_count)
            or codes.shape[2] < layout.max_positions
            or m_count != layout.num_modalities
        ):
            raise MscgError(
                f"item codes have shape {tuple(codes.shape)} and presence {tuple(present.shape)}, "
                f"expected [N, {layout.num_modalities}, {layout.max_positions}] and "
                f"[N, {layout.num_modalities}]."
            )
        self.layout = layout
        codes = codes.long()
        mask_ids = torch.tensor(layout.mask_ids, dtype=torch.long)
        tokens = mask_ids.repeat(n_items, 1)  # [N, T_item]
        start = 0
        for m, name in enumerate(layout.modalities):
            for p, (offset, size) in enumerate(zip(layout.offsets[m], layout.vocab_sizes[m])):
                col = codes[:, m, p]
                bad = present[:, m] & ((col < 0) | (col >= size))
                if bad.any():
                    item = int(bad.nonzero()[0, 0])
                    raise MscgError(
                        f"code {int(col[item])} of item {item}, modality '{name}', position {p} "
                        f"is outside [0, {size})."
                    )
                tokens[:, start + p] = torch.where(
                    present[:, m], col + offset, tokens[:, start + p]
                )
            start += layout.positions_per_modality[m]
        t = layout.target_index
        target = codes[:, t, : layout.positions_per_modality[t]].clone()
        target[~present[:, t]] = -1
        self.register_buffer("item_tokens", tokens, persistent=False)
        self.register_buffer("present", present.clone(), persistent=False)
        self.register_buffer("target_codes_table", target, persistent=False)
        self.register_buffer("mask_ids", mask_ids, persistent=False)
        self.register_buffer(
            "modality_of_position",
            torch.tensor(layout.modality_of_position, dtype=torch.long),
            persistent=False,
        )

    @property
    def num_items(self) -> int:
        """Catalogue size N."""
        return self.item_tokens.shape[0]

    def target_codes(self, item_idx: Tensor) -> Tensor:
        """Target-modality codes of items: LongTensor[B] -> LongTensor[B, L+1] (-1 if missing)."""
        return self.target_codes_table[item_idx]

    def forward(
        self,
        history: Tensor,
        mask_prob: float = 0.0,
        masked_modalities: Sequence[str] = (),
        generator: torch.Generator | None = None,
    ) -> EncoderInputs:
        """Build encoder inputs for a batch of histories.

        Args:
            history: LongTensor[B, H] of item_idx, padded with -1 anywhere; the order of the
                valid entries is chronological (oldest first). Valid items are right-aligned in the
                output so that ``item_pos``/``code_pos`` are the same for every row.
            mask_prob: probability that one uniformly chosen modality of each history item is
                replaced by its mask tokens (training-time modality masking; paper p = 0.75).
            masked_modalities: modalities replaced by mask tokens in every item (evaluation, e.g.
                for Shapley values).
            generator: optional RNG for the random masking.

        Returns:
            :class:`EncoderInputs` with S = H' * tokens_per_item, H' = the longest valid history
            in the batch (at least 1).
        """
        b, h = history.shape
        t_item = self.layout.tokens_per_item
        device = history.device
        valid = history >= 0
        # Stable sort on the validity flag moves padding to the front, keeping item order.
        order = torch.argsort(valid.to(torch.int8), dim=1, stable=True)
        (history,) = trim_left_padding(history.gather(1, order))
        valid = history >= 0
        h = history.shape[1]
        tokens = self.item_tokens[history.clamp(min=0)]  # [B, H, T_item]

        m_count = self.layout.num_modalities
        mask_mod = torch.zeros(b, h, m_count, dtype=torch.bool, device=device)
        for name in masked_modalities:
            if name not in self.layout.modalities:
                raise MscgError(
                    f"cannot mask modality '{name}': not among {list(self.layout.modalities)}."
                )
            mask_mod[:, :, self.layout.modalities.index(name)] = True
        if mask_prob > 0.0:
            hit = torch.rand(b, h, generator=generator, device=device) < mask_prob
            which = torch.randint(m_count, (b, h), generator=generator, device=device)
            mask_mod |= nn.functional.one_hot(which, m_count).bool() & hit[..., None]
        if mask_mod.any():
            mask_pos = mask_mod[:, :, self.modality_of_position]  # [B, H, T_item]
            tokens = torch.where(mask_pos, self.mask_ids, tokens)
        tokens = torch.where(valid[..., None], tokens, PAD_ID)

        item_pos = torch.arange(h - 1, -1, -1, device=device).repeat_interleave(t_item)
        code_pos = torch.arange(t_item, device=device).repeat(h)
        attention_mask = valid.repeat_interleave(t_item, dim=1)
        return EncoderInputs(tokens.reshape(b, h * t_item), attention_mask, item_pos, code_pos)
