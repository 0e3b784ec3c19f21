"""Residual quantizer (pure torch): k-means init, EMA codebooks, dead-code restart.

Paper Appendix B: at level ``l`` the residual ``r_l`` is assigned to its nearest codeword
``c_l = argmin_k ||r_l - e^l_k||^2`` and ``r_{l+1} = r_l - e^l_{c_l}`` (``r_1 = x``). MSCGRec
quantizes directly in the embedding space, so :class:`ResidualQuantizer` has no encoder or
decoder; :class:`RQVAE` adds them as an option. Codebooks are buffers moved by exponential
moving averages (no gradient), so the only loss term is the commitment loss, which pulls the
*input* towards its codewords (useful when the input is a trained embedding, as in RQ-DINO).

Distributed: when a process group is initialised, EMA and k-means statistics are summed over
ranks and random choices (k-means seeds, dead-code restarts) are broadcast from rank 0, so the
codebooks stay identical on every rank. A single process needs no process group.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor, nn

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.rq.kmeans import (
    all_reduce_sum,
    broadcast_from_rank0,
    kmeans,
    nearest_code,
    random_rows,
)
from mscg_lightning.stages.rq.weights_file import read_weights, write_weights

_META_KEY = "mscg_quantizer"


@dataclass
class QuantizerOutput:
    """Result of a quantizer forward pass.

    quantized: [B, D] straight-through value ``x + (q - x).detach()``, ``q`` = sum of codewords.
    codes: [B, L] int64 codeword index per level.
    commit_loss: scalar, ``commitment_weight * mean_l mean((r_l - sg(e_l))^2)``: the squared
        error is averaged over batch and dimensions, then over levels.
    """

    quantized: Tensor
    codes: Tensor
    commit_loss: Tensor


class ResidualQuantizer(nn.Module):
    """L levels x K codewords residual quantizer with EMA codebooks.

    Args:
        dim: embedding dimension D.
        levels: number of levels L [3].
        codebook_size: codewords per level K [256].
        decay: EMA decay of codeword counts and sums.
        eps: Laplace smoothing of the EMA counts.
        kmeans_init: initialise the codebooks by residual k-means on the first training batch
            (or an explicit :meth:`init_codebooks` call); if False, codebooks start at random
            residuals of that batch (k-means with zero iterations).
        kmeans_iters: Lloyd iterations per level.
        dead_code_threshold: a codeword whose EMA count (assignments per batch, over all
            ranks) falls below this is moved to a random residual of the current batch;
            0 disables restarts. The mean count is batch/K, so keep this well below it.
        commitment_weight: factor on the commitment loss (1.0: the caller weights it).
        ema_update: update codebooks during training; False gives plain residual k-means.
    """

    def __init__(
        self,
        dim: int,
        levels: int = 3,
        codebook_size: int = 256,
        decay: float = 0.99,
        eps: float = 1e-5,
        kmeans_init: bool = True,
        kmeans_iters: int = 20,
        dead_code_threshold: float = 1.0,
        commitment_weight: float = 1.0,
        ema_update: bool = True,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = {
            "dim": dim,
            "levels": levels,
            "codebook_size": codebook_size,
            "decay": decay,
            "eps": eps,
            "kmeans_init": kmeans_init,
            "kmeans_iters": kmeans_iters,
            "dead_code_threshold": dead_code_threshold,
            "commitment_weight": commitment_weight,
            "ema_update": ema_update,
        }
        self.dim, self.levels, self.codebook_size = dim, levels, codebook_size
        self.decay, self.eps = decay, eps
        self.kmeans_init, self.kmeans_iters = kmeans_init, kmeans_iters
        self.dead_code_threshold = dead_code_threshold
        self.commitment_weight = commitment_weight
        self.ema_update = ema_update
        self.register_buffer("codebooks", torch.zeros(levels, codebook_size, dim))
        self.register_buffer("ema_count", torch.zeros(levels, codebook_size))
        self.register_buffer("ema_sum", torch.zeros(levels, codebook_size, dim))
        # Share of the init sample per codeword: seeds the EMA counts at the first update.
        self.register_buffer("init_share", torch.zeros(levels, codebook_size))
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def _check_dim(self, x: Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise MscgError(
                f"The quantizer expects embeddings of shape [N, {self.dim}] but got "
                f"{list(x.shape)}."
            )

    @torch.no_grad()
    def init_codebooks(self, x: Tensor) -> None:
        """Residual k-means, level by level, over a (large) sample x [N, D]."""
        self._check_dim(x)
        residual = x.detach().float()
        iters = self.kmeans_iters if self.kmeans_init else 0
        for level in range(self.levels):
            centroids, share = kmeans(residual, self.codebook_size, iters)
            self.codebooks[level] = centroids
            self.init_share[level] = share
            residual = residual - centroids[nearest_code(residual, centroids)]
        self.ema_count.zero_()
        self.ema_sum.zero_()
        self.ema_steps.zero_()
        self.initialized.fill_(True)

    def _require_init(self) -> None:
        if not bool(self.initialized):
            raise MscgError(
                "The residual quantizer has no codebooks yet: train it or call init_codebooks."
            )

    @torch.no_grad()
    def _ema_update(self, level: int, residual: Tensor, codes: Tensor, first: bool) -> None:
        """Move codebook ``level`` towards the mean residual of its assigned rows.

        residual [B, D] float32 (detached), codes [B] int64.
        """
        k = self.codebook_size
        counts = all_reduce_sum(torch.bincount(codes, minlength=k).float())
        sums = all_reduce_sum(
            torch.zeros_like(self.codebooks[level]).index_add_(0, codes, residual)
        )
        if first:
            # Start the EMA at the init shares scaled to this batch size, so that the first
            # batch neither erases the k-means init nor marks every unseen code dead.
            self.ema_count[level] = self.init_share[level] * counts.sum()
            self.ema_sum[level] = self.codebooks[level] * self.ema_count[level][:, None]
        self.ema_count[level].mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum[level].mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.ema_count[level].sum()
        smoothed = (self.ema_count[level] + self.eps) / (total + k * self.eps) * total
        self.codebooks[level] = self.ema_sum[level] / smoothed[:, None]

        dead = self.ema_count[level] < self.dead_code_threshold
        if bool(dead.any()):
            fresh = random_rows(residual, int(dead.sum()))
            self.codebooks[level][dead] = fresh
            # A restarted code gets the mean count: a neutral prior, not an instant re-death.
            self.ema_count[level][dead] = total / k
            self.ema_sum[level][dead] = fresh * (total / k)
            for buf in (self.codebooks[level], self.ema_count[level], self.ema_sum[level]):
                broadcast_from_rank0(buf)

    def forward(self, x: Tensor) -> QuantizerOutput:
        """Quantize x [B, D]; in training mode also initialise (once) and update codebooks."""
        self._check_dim(x)
        if self.training and not bool(self.initialized):
            self.init_codebooks(x)
        self._require_init()
        update = self.training and self.ema_update
        first = update and int(self.ema_steps) == 0
        # Distances and EMA in float32 even under bf16 autocast: argmin ties are fragile.
        with torch.autocast(device_type=x.device.type, enabled=False):
            residual = x.float()
            total = torch.zeros_like(residual)
            codes, losses = [], []
            for level in range(self.levels):
                c = nearest_code(residual.detach(), self.codebooks[level])
                q = self.codebooks[level][c]  # a copy: the EMA update below does not touch it
                losses.append(F.mse_loss(residual, q))
                if update:
                    self._ema_update(level, residual.detach(), c, first)
                residual = residual - q
                total = total + q
                codes.append(c)
            commit = self.commitment_weight * torch.stack(losses).mean()
        if update:
            self.ema_steps += 1
        quantized = x + (total.to(x.dtype) - x).detach()
        return QuantizerOutput(quantized=quantized, codes=torch.stack(codes, 1), commit_loss=commit)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Codes [B, L] int64 of x [B, D]; never updates the codebooks."""
        self._check_dim(x)
        self._require_init()
        residual = x.float()
        codes = []
        for level in range(self.levels):
            c = nearest_code(residual, self.codebooks[level])
            residual = residual - self.codebooks[level][c]
            codes.append(c)
        return torch.stack(codes, 1)

    def decode(self, codes: Tensor) -> Tensor:
        """Sum of the chosen codewords: codes [B, L] -> [B, D] float32."""
        if codes.ndim != 2 or codes.shape[1] != self.levels:
            raise MscgError(f"Expected codes of shape [N, {self.levels}], got {list(codes.shape)}.")
        out = torch.zeros(codes.shape[0], self.dim, device=self.codebooks.device)
        for level in range(self.levels):
            out = out + self.codebooks[level][codes[:, level]]
        return out

    def save(self, path: str | Path) -> None:
        """Write codebooks, EMA state and constructor arguments to one safetensors file."""
        save_with_config(self, {"kind": "rq", **self.config}, path)

    @classmethod
    def from_file(cls, path: str | Path) -> ResidualQuantizer:
        """Rebuild a quantizer written by :meth:`save`; it encodes exactly as before saving."""
        config, state = load_with_config(path, "rq")
        quantizer = cls(**config)
        quantizer.load_state_dict(state)
        return quantizer


def mlp(dims: list[int]) -> nn.Sequential:
    """Linear layers through ``dims`` with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@dataclass
class RQVAEOutput(QuantizerOutput):
    """QuantizerOutput of the latent plus reconstruction [B, D] and its MSE (scalar)."""

    reconstruction: Tensor
    recon_loss: Tensor


class RQVAE(nn.Module):
    """MLP encoder -> :class:`ResidualQuantizer` -> MLP decoder, trained on reconstruction.

    The optional variant of the paper's Appendix B (TIGER-style RQ-VAE); MSCGRec itself
    quantizes the embedding directly. ``quantizer_kwargs`` go to the ResidualQuantizer.
    """

    def __init__(
        self,
        dim: int,
        latent_dim: int = 64,
        hidden_dims: tuple[int, ...] | list[int] = (256,),
        **quantizer_kwargs: Any,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = {
            "dim": dim,
            "latent_dim": latent_dim,
            "hidden_dims": list(hidden_dims),
            **quantizer_kwargs,
        }
        self.dim = dim
        self.encoder = mlp([dim, *hidden_dims, latent_dim])
        self.decoder = mlp([latent_dim, *reversed(list(hidden_dims)), dim])
        self.quantizer = ResidualQuantizer(latent_dim, **quantizer_kwargs)
        self.levels = self.quantizer.levels
        self.codebook_size = self.quantizer.codebook_size

    def _check_dim(self, x: Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise MscgError(
                f"The RQ-VAE expects embeddings of shape [N, {self.dim}] but got {list(x.shape)}."
            )

    @torch.no_grad()
    def init_codebooks(self, x: Tensor) -> None:
        """Residual k-means on the encoder outputs of x [N, D]."""
        self._check_dim(x)
        self.quantizer.init_codebooks(self.encoder(x.float()))

    def forward(self, x: Tensor) -> RQVAEOutput:
        """x [B, D] -> reconstruction through the quantized latent, with both losses."""
        self._check_dim(x)
        q = self.quantizer(self.encoder(x))
        recon = self.decoder(q.quantized)
        return RQVAEOutput(
            quantized=q.quantized,
            codes=q.codes,
            commit_loss=q.commit_loss,
            reconstruction=recon,
            recon_loss=F.mse_loss(recon, x),
        )

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Codes [B, L] of x [B, D]."""
        self._check_dim(x)
        return self.quantizer.encode(self.encoder(x.float()))

    def decode(self, codes: Tensor) -> Tensor:
        """Reconstruction [B, D] from codes [B, L]."""
        return self.decoder(self.quantizer.decode(codes))

    def save(self, path: str | Path) -> None:
        """Write weights, codebooks and constructor arguments to one safetensors file."""
        save_with_config(self, {"kind": "rqvae", **self.config}, path)

    @classmethod
    def from_file(cls, path: str | Path) -> RQVAE:
        """Rebuild a model written by :meth:`save`."""
        config, state = load_with_config(path, "rqvae")
        model = cls(**config)
        model.load_state_dict(state)
        return model


def save_with_config(module: nn.Module, config: dict[str, Any], path: str | Path) -> None:
    """``module``'s weights and ``config`` (with its ``kind``) in one safetensors file."""
    write_weights(module, path, {_META_KEY: json.dumps(config)})


def load_with_config(path: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config without ``kind``, state dict) of a file written by :func:`save_with_config`;
    one sentence naming the file when it is missing, unreadable or of another kind."""
    path = Path(path)
    meta, state = read_weights(path, "Quantizer file")
    if _META_KEY not in meta:
        raise MscgError(f"Quantizer file {path} has no '{_META_KEY}' metadata.")
    config = json.loads(meta[_META_KEY])
    found = config.pop("kind")
    if found != kind:
        raise MscgError(f"Quantizer file {path} holds a '{found}' model, not '{kind}'.")
    return config, state


def load_quantizer(path: str | Path) -> ResidualQuantizer | RQVAE:
    """Load either model kind from a file written by its ``save``."""
    try:
        with safe_open(str(path), framework="pt") as f:
            kind = json.loads((f.metadata() or {}).get(_META_KEY, "{}")).get("kind")
    except Exception:
        kind = None  # _load below produces the user-facing message
    return RQVAE.from_file(path) if kind == "rqvae" else ResidualQuantizer.from_file(path)
