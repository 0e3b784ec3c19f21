"""SASRec (Kang & McAuley, 2018) as a pure ``nn.Module``, with RecBole's defaults.

Item ids enter as the dense ``item_idx`` of ``prepared/`` with -1 for padding; the model shifts
them to ``item_idx + 1`` so that row 0 of the embedding table is the padding row. Histories are
left-padded (most recent item last); positions are counted from each row's first real item (as
RecBole does), so padding never changes an output, and the output at position t of a training
window is exactly that of the prefix ending at t: training a whole window at once is the same as
training every per-item sample (for windows of at most ``max_len`` items).

Defaults follow RecBole's SASRec: 2 post-LN transformer layers, hidden 64, 2 heads, inner size
256, GELU, dropout 0.5, LayerNorm eps 1e-12, N(0, 0.02) initialisation, max length 50 in RecBole
(20 here, the prepared history length). Scores are dot products with the item embedding table
(shared input/output embeddings), the padding row excluded.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SASRec(nn.Module):
    """Causal self-attention next-item model.

    Args:
        num_items: catalogue size N (item ids ``0 .. N-1``).
        hidden_size: embedding and model width D.
        num_layers: transformer layers.
        num_heads: attention heads (must divide ``hidden_size``).
        inner_size: width of the feed-forward layer.
        dropout: dropout on embeddings, attention weights, residual branches and feed-forward.
        max_len: longest history the position table covers.
    """

    def __init__(
        self,
        num_items: int,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        inner_size: int = 256,
        dropout: float = 0.5,
        max_len: int = 20,
    ) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items must be positive, got {num_items}")
        self.num_items = num_items
        self.max_len = max_len
        self.num_heads = num_heads
        self.item_emb = nn.Embedding(num_items + 1, hidden_size, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden_size)
        self.emb_norm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.emb_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                hidden_size,
                num_heads,
                dim_feedforward=inner_size,
                dropout=dropout,
                activation="gelu",
                layer_norm_eps=1e-12,
                batch_first=True,
                norm_first=False,  # post-LN, as RecBole's TransformerEncoder
            )
            for _ in range(num_layers)
        )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def item_table(self) -> Tensor:
        """The item embeddings without the padding row: [N, D]; row i is ``item_idx`` i."""
        return self.item_emb.weight[1:]

    def _attention_mask(self, pad: Tensor) -> Tensor:
        """Additive mask [B * heads, T, T]: causal, padding keys hidden.

        A query may always see itself, so that padding positions (which attend to nothing else)
        never get an all-masked row, which would turn into NaN.
        """
        batch, length = pad.shape
        causal = torch.ones(length, length, dtype=torch.bool, device=pad.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=pad.device)
        allowed = causal & (~pad[:, None, :] | eye)  # [B, T(query), T(key)]
        mask = torch.zeros(batch, length, length, device=pad.device)
        mask.masked_fill_(~allowed, float("-inf"))
        return mask.repeat_interleave(self.num_heads, dim=0)

    def forward(self, history: Tensor) -> Tensor:
        """Hidden state of every position.

        history: [B, T] item_idx, -1 = padding (left), T <= max_len. Returns [B, T, D]; position t
        sees only positions <= t and is the user representation for predicting item t+1.
        """
        pad = history < 0
        tokens = history.clamp(min=-1) + 1  # -1 -> padding row 0
        return self.encode_embeddings(self.item_emb(tokens), pad)

    def encode_embeddings(self, items: Tensor, pad: Tensor) -> Tensor:
        """The transformer over given item vectors instead of the item table's rows.

        items: [B, T, D] item vectors (any values at padding slots); pad: [B, T] bool, True =
        padding (left). Returns [B, T, D], as :meth:`forward` (which calls this with the
        table's rows). BBQRec's tokenizer feeds its quantized item vectors through here.
        """
        length = items.shape[1]
        if length > self.max_len:
            raise ValueError(f"history of length {length} exceeds max_len={self.max_len}")
        # Position = number of real items before this one (padding slots get 0, they are masked):
        # a prefix gets the same positions alone as inside a longer window.
        positions = ((~pad).long().cumsum(dim=1) - 1).clamp(min=0)
        x = items + self.pos_emb(positions)
        x = self.emb_dropout(self.emb_norm(x))
        mask = self._attention_mask(pad)
        for layer in self.layers:
            x = layer(x, src_mask=mask)
        return x

    def last_hidden(self, history: Tensor) -> Tensor:
        """The user representation after the whole history: [B, D] (position T-1)."""
        return self.forward(history)[:, -1]

    def scores(self, hidden: Tensor) -> Tensor:
        """Logits over the whole catalogue: hidden [..., D] -> [..., N]."""
        return hidden @ self.item_table.T
