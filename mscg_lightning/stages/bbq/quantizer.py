"""Residual quantization of several signals through one codebook per level (BBQRec Sec. 4.1.2).

The ID, text and image latents of an item ([B, S, D], S signals) are quantized level by level
(paper Eq. 5-7): ``c^l = argmin_k ||r^l - C^l_k||^2``, ``r^{l+1} = r^l - C^l_{c^l}``, and the
quantized vector is the sum of the chosen codewords. With ``shared=True`` (the paper) level
``l`` has **one** table ``C^l`` [K, D] that every signal searches; ``shared=False`` gives every
signal its own tables (the paper's "without shared codebook" ablation, Table 4).

Codebooks are parameters trained by the RQ loss (Eq. 9), per signal
``sum_l ||sg(r^l) - c^l||^2 + alpha ||r^l - sg(c^l)||^2`` (squared errors averaged over batch and
dimensions), with the straight-through estimator for the encoders.

Paper-silent choices (switches): codebooks start from residual k-means on the first batch's
latents of all signals pooled (``kmeans_init``); a codeword whose usage (an exponential moving
average, decay ``usage_decay``, of its assignments per batch over all signals) falls below
``dead_code_threshold`` is moved to a random residual of the current batch (0 disables this).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.rq.kmeans import kmeans, nearest_code, random_rows


@dataclass
class SharedRQOutput:
    """quantized: [B, S, D] straight-through sums of codewords; codes: [B, S, L] int64;
    loss: scalar RQ loss summed over signals (mean over batch and dimensions, sum over levels);
    per_signal: [S] that loss per signal."""

    quantized: Tensor
    codes: Tensor
    loss: Tensor
    per_signal: Tensor


class SharedResidualQuantizer(nn.Module):
    """L levels x K codewords of dimension D for S signals.

    Args:
        dim: latent dimension D (paper 128).
        num_signals: S (ID, text, image: 3; ID + text: 2).
        levels: L (paper 3).
        codebook_size: K (paper 256).
        shared: one table per level for all signals (paper) or one per signal and level.
        alpha: weight of the commitment term (paper 0.25).
        kmeans_init, kmeans_iters: residual k-means initialisation on the first batch.
        dead_code_threshold, usage_decay: dead-code restarts (see the module docstring).
    """

    def __init__(
        self,
        dim: int = 128,
        num_signals: int = 3,
        levels: int = 3,
        codebook_size: int = 256,
        shared: bool = True,
        alpha: float = 0.25,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.0,
        usage_decay: float = 0.99,
    ) -> None:
        super().__init__()
        self.dim, self.num_signals, self.levels = dim, num_signals, levels
        self.codebook_size, self.shared, self.alpha = codebook_size, shared, alpha
        self.kmeans_init, self.kmeans_iters = kmeans_init, kmeans_iters
        self.dead_code_threshold, self.usage_decay = dead_code_threshold, usage_decay
        tables = 1 if shared else num_signals
        #: [T, L, K, D] with T = 1 (shared) or S: ``codebooks[table_of(s), l]`` is C^l of signal s.
        self.codebooks = nn.Parameter(torch.randn(tables, levels, codebook_size, dim) * 0.01)
        self.register_buffer("usage", torch.zeros(tables, levels, codebook_size))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def table_of(self, signal: int) -> int:
        """Index of the codebook table that signal ``signal`` searches."""
        return 0 if self.shared else signal

    def _check(self, z: Tensor) -> None:
        if z.ndim != 3 or z.shape[1:] != (self.num_signals, self.dim):
            raise MscgError(
                f"The shared quantizer expects latents [B, {self.num_signals}, {self.dim}], "
                f"got {list(z.shape)}."
            )

    @torch.no_grad()
    def init_codebooks(self, z: Tensor) -> None:
        """Residual k-means per table on latents z [B, S, D] (the signals of a table pooled)."""
        self._check(z)
        for t in range(self.codebooks.shape[0]):
            signals = range(self.num_signals) if self.shared else [t]
            residual = torch.cat([z[:, s] for s in signals]).detach().float()
            for level in range(self.levels):
                centroids, _ = kmeans(residual, self.codebook_size, self.kmeans_iters)
                self.codebooks[t, level] = centroids
                residual = residual - centroids[nearest_code(residual, centroids)]
        self.usage.zero_()
        self.initialized.fill_(True)

    @torch.no_grad()
    def _restart_dead(self, table: int, level: int, residuals: Tensor, codes: Tensor) -> None:
        """Update the usage EMA of one table's level and restart its dead codewords."""
        counts = torch.bincount(codes, minlength=self.codebook_size).float()
        usage = self.usage[table, level]
        usage.mul_(self.usage_decay).add_(counts, alpha=1 - self.usage_decay)
        if self.dead_code_threshold <= 0:
            return
        dead = usage < self.dead_code_threshold
        if bool(dead.any()):
            self.codebooks[table, level][dead] = random_rows(residuals, int(dead.sum()))
            usage[dead] = float(counts.sum()) / self.codebook_size

    def forward(self, z: Tensor) -> SharedRQOutput:
        """Quantize z [B, S, D]; in training also initialise once and restart dead codes."""
        self._check(z)
        if self.training and not bool(self.initialized) and self.kmeans_init:
            self.init_codebooks(z)
        residual = z
        total = torch.zeros_like(z)
        codes, losses = [], []
        for level in range(self.levels):
            level_codes, level_q = [], []
            for s in range(self.num_signals):
                book = self.codebooks[self.table_of(s), level]
                c = nearest_code(residual[:, s].detach(), book.detach())
                level_codes.append(c)
                level_q.append(book[c])
            q = torch.stack(level_q, 1)  # [B, S, D], gradient to the codebook
            c = torch.stack(level_codes, 1)  # [B, S]
            codebook_term = ((residual.detach() - q) ** 2).mean(dim=(0, 2))
            commit_term = ((residual - q.detach()) ** 2).mean(dim=(0, 2))
            losses.append(codebook_term + self.alpha * commit_term)
            if self.training:
                for t in range(self.codebooks.shape[0]):
                    signals = range(self.num_signals) if self.shared else [t]
                    self._restart_dead(
                        t,
                        level,
                        torch.cat([residual[:, s].detach() for s in signals]),
                        torch.cat([c[:, s] for s in signals]),
                    )
            residual = residual - q.detach()
            total = total + q
            codes.append(c)
        per_signal = torch.stack(losses).sum(0)  # [S]
        quantized = z + (total - z).detach()
        return SharedRQOutput(quantized, torch.stack(codes, 2), per_signal.sum(), per_signal)

    @torch.no_grad()
    def encode(self, z: Tensor) -> Tensor:
        """Codes [B, S, L] of latents z [B, S, D]; never changes the codebooks."""
        self._check(z)
        residual = z.float()
        codes = []
        for level in range(self.levels):
            level_codes = []
            for s in range(self.num_signals):
                book = self.codebooks[self.table_of(s), level].float()
                c = nearest_code(residual[:, s], book)
                residual[:, s] = residual[:, s] - book[c]
                level_codes.append(c)
            codes.append(torch.stack(level_codes, 1))
        return torch.stack(codes, 2)

    def decode(self, codes: Tensor) -> Tensor:
        """Sum of the chosen codewords: codes [B, S, L] -> [B, S, D]."""
        out = []
        for s in range(self.num_signals):
            t = self.table_of(s)
            out.append(sum(self.codebooks[t, lv][codes[:, s, lv]] for lv in range(self.levels)))
        return torch.stack(out, 1)
