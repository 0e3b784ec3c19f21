"""MACRec's generator training tasks (paper "Explicit Alignment" and "Training Objections").

Six tasks over two code modalities, each (input kind, source modality, target modality):

=================  =======  ======  ======  =============================================
task               input    source  target  paper
=================  =======  ======  ======  =============================================
``seqrec``         history  text    text    next item's text codes (main task)
``seqimage``       history  image   image   next item's image codes (main task)
``item2image``     item     text    image   item-level explicit alignment
``image2item``     item     image   text    item-level explicit alignment (back)
``seqitem2image``  history  text    image   sequence-level explicit alignment
``seqimage2item``  history  image   text    sequence-level explicit alignment (back)
=================  =======  ======  ======  =============================================

One task is drawn per training row from a configurable set (``sample``); the official code
instead repeats every row once per task. Item tasks use the row's target item. Without
explicit alignment (paper ablation) the set is ``("seqrec", "seqimage")``.

Encoder input of a row: the source-modality codes of each history item (``P`` tokens per item,
right-aligned as in :class:`~mscg_lightning.stages.genrec.tokens.HistoryTokenizer`), then
``prompt_tokens`` task prompt tokens. Items sit at ``item_pos`` 1, 2, ... counted back from the
most recent; the prompt at ``item_pos`` 0, so every row's relative positions are the same
whatever the batch's longest history. Token ids follow a two-modality
:class:`~mscg_lightning.stages.genrec.tokens.TokenLayout` (text, image); prompt ids follow its
vocabulary (``prompt_offset = layout.vocab_size``); ids exist for all six tasks, so the
vocabulary does not depend on the configured set. A missing modality shows its mask tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.genrec.tokens import PAD_ID, EncoderInputs, TokenLayout

#: task name -> (input kind, source modality, target modality)
TASKS: dict[str, tuple[str, str, str]] = {
    "seqrec": ("history", "text", "text"),
    "seqimage": ("history", "image", "image"),
    "item2image": ("item", "text", "image"),
    "image2item": ("item", "image", "text"),
    "seqitem2image": ("history", "text", "image"),
    "seqimage2item": ("history", "image", "text"),
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
MACREC_TASKS = TASK_NAMES
#: MQL4GRec without pretraining uses the same task family; the ablation "w/o explicit" drops
#: the four alignment tasks.
NO_EXPLICIT_TASKS = ("seqrec", "seqimage")
MODALITIES = ("text", "image")


class TaskBatch(NamedTuple):
    """One batch of task rows.

    ``encoder``: :class:`EncoderInputs` (S = H' * P + prompt_tokens);
    ``target_codes`` LongTensor[B, P] target-modality codes of the target item (-1 = missing
    or beyond the modality's positions: leave those rows out of the loss);
    ``target_modality`` LongTensor[B] (0 text, 1 image); ``task`` LongTensor[B] (TASK_NAMES index).
    """

    encoder: EncoderInputs
    target_codes: Tensor
    target_modality: Tensor
    task: Tensor


class MacrecTasks(nn.Module):
    """Builds encoder inputs and targets of MACRec's tasks; holds the item tokens as buffers.

    Args:
        layout: a TokenLayout over ("text", "image") (its ``target`` is irrelevant here).
        codes: LongTensor[N, 2, P_max] item codes per modality (``tokens.stack_modality_codes``).
        present: BoolTensor[N, 2].
        tasks: the task set rows are drawn from (names of :data:`TASKS`).
        weights: drawing weights of ``tasks`` (default uniform).
        prompt_tokens: prompt tokens per task appended to the encoder input (0 = none).
    """

    def __init__(
        self,
        layout: TokenLayout,
        codes: Tensor,
        present: Tensor,
        tasks: Sequence[str] = MACREC_TASKS,
        weights: Sequence[float] | None = None,
        prompt_tokens: int = 1,
    ) -> None:
        super().__init__()
        if tuple(layout.modalities) != MODALITIES:
            raise MscgError(
                f"MACRec tasks need the modalities {MODALITIES}, got {layout.modalities}."
            )
        unknown = [t for t in tasks if t not in TASKS]
        if unknown or not tasks:
            raise MscgError(f"genrec tasks {unknown or list(tasks)} are not among {list(TASKS)}.")
        w = [1.0] * len(tasks) if weights is None else [float(x) for x in weights]
        if len(w) != len(tasks) or min(w) < 0 or sum(w) <= 0:
            raise MscgError(f"genrec task_weights {weights} do not fit the tasks {list(tasks)}.")
        if prompt_tokens < 0:
            raise MscgError(f"genrec prompt_tokens must be >= 0, got {prompt_tokens}.")
        self.layout, self.tasks, self.prompt_tokens = layout, tuple(tasks), prompt_tokens
        self.p_max = layout.max_positions
        n = codes.shape[0]
        tokens = torch.full((2, n, self.p_max), PAD_ID, dtype=torch.long)
        position_valid = torch.zeros(2, self.p_max, dtype=torch.bool)
        start = 0
        for m in range(2):
            for p, offset in enumerate(layout.offsets[m]):
                mask_id = layout.mask_ids[start + p]
                tokens[m, :, p] = torch.where(
                    present[:, m], codes[:, m, p].long() + offset, mask_id
                )
                position_valid[m, p] = True
            start += layout.positions_per_modality[m]
        targets = codes.long().clone()
        targets[~present] = -1
        spec = [TASKS[t] for t in TASK_NAMES]
        self.register_buffer("item_tokens", tokens, persistent=False)  # [2, N, P]
        self.register_buffer("position_valid", position_valid, persistent=False)  # [2, P]
        self.register_buffer("codes", targets, persistent=False)  # [N, 2, P]
        self.register_buffer(
            "is_item", torch.tensor([s[0] == "item" for s in spec]), persistent=False
        )
        self.register_buffer(
            "source", torch.tensor([MODALITIES.index(s[1]) for s in spec]), persistent=False
        )
        self.register_buffer(
            "target", torch.tensor([MODALITIES.index(s[2]) for s in spec]), persistent=False
        )
        self.register_buffer(
            "allowed", torch.tensor([TASK_NAMES.index(t) for t in self.tasks]), persistent=False
        )
        self.register_buffer("weights", torch.tensor(w, dtype=torch.float), persistent=False)

    @property
    def prompt_offset(self) -> int:
        """Id of the first prompt token (right after the layout's vocabulary)."""
        return self.layout.vocab_size

    @property
    def vocab_size(self) -> int:
        """Input vocabulary including the prompt tokens of all six tasks."""
        return self.layout.vocab_size + len(TASK_NAMES) * self.prompt_tokens

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """One task per row, drawn from the configured set: LongTensor[B] of TASK_NAMES indices."""
        pick = torch.multinomial(
            self.weights.cpu(), batch_size, replacement=True, generator=generator
        )
        return self.allowed.cpu()[pick].to(self.allowed.device)

    def item_inputs(self, item_idx: Tensor, modality: str) -> EncoderInputs:
        """Encoder inputs of single items' codes in one modality, no prompt (implicit alignment).

        item_idx LongTensor[B] -> S = P tokens per row.
        """
        m = MODALITIES.index(modality)
        ids = self.item_tokens[m][item_idx]
        mask = self.position_valid[m].expand_as(ids)
        device = ids.device
        item_pos = torch.ones(self.p_max, dtype=torch.long, device=device)
        code_pos = torch.arange(self.p_max, device=device)
        return EncoderInputs(torch.where(mask, ids, PAD_ID), mask, item_pos, code_pos)

    def forward(self, history: Tensor, target: Tensor, task: Tensor) -> TaskBatch:
        """Build a batch.

        history: LongTensor[B, H] item_idx, -1 = padding (anywhere; chronological order).
        target: LongTensor[B] the next item. task: LongTensor[B] TASK_NAMES indices.
        """
        b, device = history.shape[0], history.device
        is_item = self.is_item[task]
        src, tgt = self.source[task], self.target[task]
        # Item tasks show one item: the row's target, in the most recent slot.
        single = torch.full_like(history, -1)
        single[:, -1] = target
        hist = torch.where(is_item[:, None], single, history)
        valid = hist >= 0
        order = torch.argsort(valid.to(torch.int8), dim=1, stable=True)  # padding first
        hist = hist.gather(1, order)
        valid = hist >= 0
        first = int(valid.any(0).float().argmax()) if bool(valid.any()) else hist.shape[1] - 1
        hist, valid = hist[:, first:], valid[:, first:]
        h, p = hist.shape[1], self.p_max
        tokens = self.item_tokens[src[:, None], hist.clamp(min=0)]  # [B, H, P]
        tok_valid = valid[..., None] & self.position_valid[src][:, None, :]
        tokens = torch.where(tok_valid, tokens, PAD_ID).reshape(b, h * p)
        k = self.prompt_tokens
        prompt = self.prompt_offset + task[:, None] * k + torch.arange(k, device=device)
        input_ids = torch.cat([tokens, prompt], 1)
        mask = torch.cat(
            [tok_valid.reshape(b, h * p), torch.ones(b, k, dtype=torch.bool, device=device)], 1
        )
        item_pos = torch.cat(
            [
                torch.arange(h, 0, -1, device=device).repeat_interleave(p),
                torch.zeros(k, dtype=torch.long, device=device),
            ]
        )
        code_pos = torch.cat(
            [torch.arange(p, device=device).repeat(h), torch.arange(k, device=device)]
        )
        target_codes = self.codes[target, tgt]  # [B, P]
        return TaskBatch(
            EncoderInputs(input_ids, mask, item_pos, code_pos), target_codes, tgt, task
        )

    def target_token_ids(self, target_codes: Tensor, target_modality: Tensor) -> Tensor:
        """Input-vocabulary ids of target codes [B, P] (for a tied decoder); PAD where -1."""
        offsets = torch.zeros(2, self.p_max, dtype=torch.long, device=target_codes.device)
        for m in range(2):
            offsets[m, : len(self.layout.offsets[m])] = torch.tensor(self.layout.offsets[m])
        ids = target_codes + offsets[target_modality]
        return torch.where(target_codes >= 0, ids, PAD_ID)
