"""Embedding and scoring of BBQRec's triple tokens for the generator (paper silent; ours).

A triple token of level l < L is ``(c_ID, c_text, c_image)`` joined in mixed radix K
(:mod:`mscg_lightning.stages.bbq.triples`); level L is the collision level (a plain index).

* ``mode="sum"`` (default): embedding = sum over signals s of ``E[l, s, c_s]`` + a level
  embedding; scoring a candidate triple against a decoder state h is ``sum_s h · E[l, s, c_s]``
  (output tied to the input tables), computed as S products with [K] rows, then gathered: cheap
  for any number of candidates.
* ``mode="full"``: one row per triple that occurs at level l (the dense ids of
  ``triples.compact_vocabulary``), K^S rows being mostly unused.

``inherit_codebooks`` copies the tokenizer's codebooks into the code tables (the paper's
"code embeddings inherited from the codebook" ablation, Table 4), instead of random init.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.bbq.triples import split_triples


class TripleEmbedding(nn.Module):
    """Input embeddings [.., d] and output scores of triple tokens.

    Args:
        num_signals: S; codebook_size: K per signal; levels: L (the collision level excluded).
        d_model: embedding width d.
        collision_size: rows of the collision level's table.
        mode: ``sum`` or ``full`` (see the module docstring).
        vocab_sizes: for ``full``, V_l per level l < L (dense triple ids of that level).
        init_std: N(0, init_std) initialisation of every table.
    """

    def __init__(
        self,
        num_signals: int,
        codebook_size: int,
        levels: int,
        d_model: int,
        collision_size: int = 1,
        mode: Literal["sum", "full"] = "sum",
        vocab_sizes: list[int] | None = None,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if mode not in ("sum", "full"):
            raise MscgError(f"triple embedding mode '{mode}' is not 'sum' or 'full'.")
        if mode == "full" and (vocab_sizes is None or len(vocab_sizes) != levels):
            raise MscgError("triple embedding mode 'full' needs vocab_sizes, one per level.")
        self.num_signals, self.codebook_size, self.levels = num_signals, codebook_size, levels
        self.mode = mode
        if mode == "sum":
            self.codes = nn.Parameter(torch.randn(levels, num_signals, codebook_size, d_model))
            self.codes.data.mul_(init_std)
        else:
            self.full = nn.ModuleList(nn.Embedding(int(v), d_model) for v in vocab_sizes or [])
            for table in self.full:
                nn.init.normal_(table.weight, std=init_std)
        self.collision = nn.Embedding(max(1, collision_size), d_model)
        self.level = nn.Embedding(levels + 1, d_model)
        nn.init.normal_(self.collision.weight, std=init_std)
        nn.init.normal_(self.level.weight, std=init_std)

    def factors(self, tokens: Tensor) -> Tensor:
        """Per-signal codes [..., S] of triple tokens [...]."""
        return split_triples(tokens[..., None], self.codebook_size, self.num_signals)[..., 0]

    def _code_vectors(self, tokens: Tensor, level: int) -> Tensor:
        """Level-l < L token vectors without the level embedding: [...] -> [..., d]."""
        if self.mode == "full":
            return self.full[level](tokens)
        factors = self.factors(tokens)  # [..., S]
        return sum(self.codes[level, s][factors[..., s]] for s in range(self.num_signals))

    def forward(self, tokens: Tensor, level: Tensor) -> Tensor:
        """Embeddings [..., d] of tokens [...] at levels [...] (0..L, L = collision level).

        In ``full`` mode level-l tokens are dense ids of that level's vocabulary.
        """
        out = self.level(level)
        for lv in range(self.levels + 1):
            mask = level == lv
            if not bool(mask.any()):
                continue
            t = tokens[mask]
            vec = self.collision(t) if lv == self.levels else self._code_vectors(t, lv)
            out = out.index_put((mask,), out[mask] + vec)
        return out

    def logits(self, hidden: Tensor, level: int, candidates: Tensor) -> Tensor:
        """Scores [B, C] of candidate tokens [C] of one level for decoder states hidden [B, d].

        ``sum``: ``sum_s h · E[l, s, c_s]`` via S products [B, K] and a gather; ``full`` and the
        collision level: ``h · row``. Level embeddings are left out (equal for all candidates).
        """
        if level == self.levels:
            return hidden @ self.collision(candidates).T
        if self.mode == "full":
            return hidden @ self.full[level](candidates).T
        factors = self.factors(candidates)  # [C, S]
        per_signal = torch.einsum("bd,skd->bsk", hidden, self.codes[level])  # [B, S, K]
        return sum(per_signal[:, s, factors[:, s]] for s in range(self.num_signals))

    @torch.no_grad()
    def inherit_codebooks(self, codebooks: Tensor) -> None:
        """Copy the tokenizer's codebooks [T, L, K, D] (T = 1 shared, or S) into the tables."""
        if self.mode != "sum":
            raise MscgError("inheriting codebooks needs triple embedding mode 'sum'.")
        t, levels, k, dim = codebooks.shape
        if (levels, k, dim) != (self.levels, self.codebook_size, self.codes.shape[-1]):
            raise MscgError(
                f"codebooks of shape {list(codebooks.shape)} do not fit the triple embedding "
                f"[{self.levels}, {self.codebook_size}, {self.codes.shape[-1]}] (d_model must "
                "equal the tokenizer's latent_dim)."
            )
        for s in range(self.num_signals):
            self.codes[:, s] = codebooks[0 if t == 1 else s].to(self.codes)
