"""BBQRec's triple tokens inside :class:`~mscg_lightning.stages.genrec.model.GenRecT5`.

A ``bbq`` codes artifact stores each level's (ID, text, image) code triple as one integer below
K^S (``bbq.triples``). The genrec stage compacts every triple level to the triples that occur
(``triples.compact_vocabulary``: at most N per level instead of K^S), so the token layout, the
prefix index, the losses and the beam search work on dense ids unchanged. This module embeds the
layout ids of that modality (``triple_embedding: sum``, default):

* input: ``TripleEmbedding`` (sum of the three signals' code embeddings + a level embedding;
  the collision level has its own table) instead of the model's one row per id;
* output (when the triple modality is the target): level l's rows are the same sums, tied to the
  input, scaled by ``d_model**-0.5`` as T5 scales a tied head, i.e.
  ``TripleEmbedding.logits(h, l, triples_l) * d**-0.5`` (tested equal).

``triple_embedding: full`` needs no module: one row per occurring triple is the model's ordinary
table over the compacted ids (TripleEmbedding's ``full`` mode) and its ordinary output head.
Dense -> raw triple maps are catalogue data (buffers rebuilt by ``set_triples``, not saved).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.genrec.triple_embedding import TripleEmbedding


class TripleTokens(nn.Module):
    """Embeds the layout ids ``[start, start + sum(sizes))`` of the triple modality.

    Args:
        start: layout id of dense triple 0 at level 0 (``TokenLayout.offsets[m][0]``).
        sizes: V_0..V_{L-1} (occurring triples per level), then the collision level's size.
        num_signals, codebook_size: S and K of the bbq tokenizer.
        d_model: embedding width.
    """

    def __init__(
        self, start: int, sizes: tuple[int, ...], num_signals: int, codebook_size: int, d_model: int
    ) -> None:
        super().__init__()
        self.start, self.sizes = int(start), tuple(int(s) for s in sizes)
        self.end = self.start + sum(self.sizes)
        self.levels = len(self.sizes) - 1
        self.d_model = d_model
        # each of S code vectors + the level vector at std 1/sqrt(S+1): unit-scale sums, as the
        # model's own table (std 1)
        self.embedding = TripleEmbedding(
            num_signals,
            codebook_size,
            self.levels,
            d_model,
            collision_size=self.sizes[-1],
            init_std=(num_signals + 1) ** -0.5,
        )
        total = sum(self.sizes)
        level = torch.repeat_interleave(torch.arange(len(self.sizes)), torch.tensor(self.sizes))
        self.register_buffer("level_of", level, persistent=False)  # [sum V]
        self.register_buffer("raw", torch.full((total,), -1, dtype=torch.long), persistent=False)

    def set_triples(self, triples: list[Tensor]) -> None:
        """Dense id -> raw triple token, per level < L: ``triples[l]`` [V_l] (sorted, unique)."""
        if [int(t.numel()) for t in triples] != list(self.sizes[:-1]):
            raise MscgError(
                f"triple vocabularies of sizes {[int(t.numel()) for t in triples]} do not match "
                f"the model's {list(self.sizes[:-1])}: the bbq codes changed after training."
            )
        collision = torch.arange(self.sizes[-1])
        self.raw = torch.cat([*(t.long().cpu() for t in triples), collision]).to(self.raw.device)

    def contains(self, ids: Tensor) -> Tensor:
        """BoolTensor[...] of the ids that are triple-modality tokens."""
        return (ids >= self.start) & (ids < self.end)

    def forward(self, ids: Tensor) -> Tensor:
        """Embeddings [..., d] of layout ids [...] (all inside the range; see :meth:`contains`)."""
        local = ids - self.start
        return self.embedding(self.raw[local], self.level_of[local])

    def embed(self, ids: Tensor, table: nn.Embedding) -> Tensor:
        """Layout ids [...] -> [..., d]: triple ids through :meth:`forward`, others ``table``."""
        inside = self.contains(ids)
        out = table(ids)
        if bool(inside.any()):
            out = out.index_put((inside,), self(ids[inside]).to(out.dtype))
        return out

    def head_weight(self, level: int) -> Tensor:
        """Tied output rows [V_l, d] of one level, scaled by ``d**-0.5``."""
        emb = self.embedding
        if level == self.levels:
            rows = emb.collision.weight
        else:
            lo = sum(self.sizes[:level])
            rows = emb._code_vectors(self.raw[lo : lo + self.sizes[level]], level)
        return rows * self.d_model**-0.5
