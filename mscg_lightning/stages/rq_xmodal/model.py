"""MACRec's cross-modal tokenizer (paper Eqs. 1-13) as a pure ``nn.Module``.

Per modality m in (text, image): MLP encoder ``z^m = Enc^m(x^m)``, residual quantization with the
project's :class:`~mscg_lightning.stages.rq.quantizer.ResidualQuantizer` (L levels x K codes,
k-means init), MLP decoder. The objective (Eq. 13) is

    L_ID = sum_m (L_recon^m + L_rq^m) + sum_l lambda_con^l L_con^l + lambda_align L_align

* ``L_rq^m = sum_l ||sg(r_l) - e_l||^2 + alpha ||r_l - sg(e_l)||^2`` (Eq. 11);
* ``L_con^l``: InfoNCE of each modality's residual ``r_l`` towards an in-batch item that shares
  its pseudo-label in the *other* modality (Eqs. 4-6);
* ``L_align``: symmetric InfoNCE between the quantized sums ``z_hat^t`` and ``z_hat^v`` (Eqs. 7-9).

Gradient paths (the point of this module; the official code loses them):

* ``residual_update="paper"`` (default): ``r_{l+1} = r_l - sg(e_l)``. The codeword is a constant
  in the residual, so ``d r_l / d z = I`` at every level: ``L_con^l`` and the commitment term of
  every level reach the encoder. Codewords move by their own codebook term and ``L_align``.
* ``residual_update="official"``: ``r_{l+1} = r_l - (r_l + sg(e_l - r_l))`` as in the official
  MACRec/MQL4GRec code; same value, but every residual after level 0 is gradient-free, so
  ``L_con`` from level 1 on trains nothing. Offered only for comparison.
* ``align_grad="codebooks"`` (paper: "refine the codebook representations"): ``L_align`` sees
  ``z_hat = sum_l e_l`` and trains the codewords; ``"encoder"`` (official) sees the
  straight-through value ``z + sg(z_hat - z)`` and trains only the encoders.
* ``codebook_update="grad"`` (paper Eq. 11): codebooks are parameters; ``"ema"`` keeps the
  project quantizer's EMA codebooks (then the codebook term has no gradient, and ``align_grad``
  must be ``"encoder"``).

Squared errors are per-element means (``squared_error="mean"``, as the project quantizer and the
official code, under which the paper's lambdas were tuned); ``"sum"`` sums over dimensions as the
paper's norms read literally. Level terms are summed (Eq. 11's sum over l).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.rq.kmeans import kmeans, nearest_code
from mscg_lightning.stages.rq.quantizer import ResidualQuantizer, mlp
from mscg_lightning.stages.rq_xmodal.contrastive import (
    MissingPositive,
    Similarity,
    info_nce,
    sample_positives,
    symmetric_info_nce,
)

MODALITIES = ("text", "image")
ResidualUpdate = Literal["paper", "official"]
CodebookUpdate = Literal["grad", "ema"]
AlignGrad = Literal["codebooks", "encoder"]
SquaredError = Literal["mean", "sum"]


def pseudo_labels(x: Tensor, k: int, iters: int = 20) -> Tensor:
    """k-means cluster of each row (paper Eq. 1): x [N, D] -> [N] int64 in [0, k).

    Uses the project's k-means (k-means++ seeds, global CPU RNG: seed before calling).
    """
    if k < 1 or k > x.shape[0]:
        raise MscgError(f"pseudo_label_clusters={k} must be between 1 and the {x.shape[0]} items.")
    centroids, _ = kmeans(x.detach().float(), k, iters)
    return nearest_code(x.detach().float(), centroids)


@dataclass
class LevelOutput:
    """Residual quantization of one modality's latent z [B, D] through L levels.

    residuals: L tensors [B, D], ``r_l`` (``r_0 = z``) with the gradient path the switches give.
    codes: [B, L] int64. z_hat: [B, D] sum of the codewords (grad to codebooks in grad mode).
    codebook_loss / commit_loss: scalars, summed over levels (Eq. 11 without alpha).
    """

    residuals: list[Tensor]
    codes: Tensor
    z_hat: Tensor
    codebook_loss: Tensor
    commit_loss: Tensor


@dataclass
class CrossModalOutput:
    """Per-modality latents and losses of one batch; ``losses`` holds every weighted term."""

    latent: dict[str, Tensor]
    levels: dict[str, LevelOutput]
    reconstruction: dict[str, Tensor]
    losses: dict[str, Tensor] = field(default_factory=dict)
    loss: Tensor | None = None


def _squared_error(a: Tensor, b: Tensor, mode: SquaredError) -> Tensor:
    if mode == "sum":
        return (a - b).pow(2).sum(-1).mean()
    return F.mse_loss(a, b)


def _learnable_codebooks(quantizer: ResidualQuantizer) -> None:
    """Turn the quantizer's codebook buffer into a parameter (paper: codebooks learn by Eq. 11).

    The name stays ``codebooks``, so k-means init, ``encode``/``decode`` and ``save`` work as is.
    """
    books = quantizer.codebooks
    del quantizer._buffers["codebooks"]
    quantizer.codebooks = nn.Parameter(books)


class CrossModalRQVAE(nn.Module):
    """Two RQ-VAEs (text, image) coupled by MACRec's contrastive terms.

    Args:
        dims: input dimension per modality, ``{"text": D_t, "image": D_v}``.
        latent_dim: shared latent size (the two quantized sums are compared, so it is one size).
        hidden_dims: encoder MLP widths (decoders mirror them). Official: [768, 2048, 1024, 512,
            256, 128, 64] with latent 32.
        levels, codebook_size: L x K per modality (paper: 4 x 256).
        con_weights: lambda_con^l per level (paper: 0, 0, 0.1, 0.1).
        align_weight: lambda_align (paper 0.001). tau: temperature of every InfoNCE (paper 0.1).
        alpha: commitment factor of Eq. 11 (not given by the paper; 0.25 as TIGER/MQL4GRec).
        similarity: "dot" (paper's inner product) or "cosine".
        missing_positive: "skip" (anchors without an in-batch positive leave L_con) or "self".
        residual_update, codebook_update, align_grad, squared_error: see the module docstring.
        kmeans_iters: Lloyd iterations of the codebook init.
    """

    def __init__(
        self,
        dims: dict[str, int],
        latent_dim: int = 32,
        hidden_dims: list[int] | tuple[int, ...] = (512, 256, 128),
        levels: int = 4,
        codebook_size: int = 256,
        con_weights: list[float] | tuple[float, ...] = (0.0, 0.0, 0.1, 0.1),
        align_weight: float = 0.001,
        tau: float = 0.1,
        alpha: float = 0.25,
        similarity: Similarity = "dot",
        missing_positive: MissingPositive = "skip",
        residual_update: ResidualUpdate = "paper",
        codebook_update: CodebookUpdate = "grad",
        align_grad: AlignGrad = "codebooks",
        squared_error: SquaredError = "mean",
        kmeans_iters: int = 20,
    ) -> None:
        super().__init__()
        if set(dims) != set(MODALITIES):
            raise MscgError(f"rq_xmodal needs input dims for {list(MODALITIES)}, got {list(dims)}.")
        if len(con_weights) != levels:
            raise MscgError(f"con_weights has {len(con_weights)} entries for {levels} levels.")
        for name, value, allowed in (
            ("residual_update", residual_update, ("paper", "official")),
            ("codebook_update", codebook_update, ("grad", "ema")),
            ("align_grad", align_grad, ("codebooks", "encoder")),
            ("squared_error", squared_error, ("mean", "sum")),
        ):
            if value not in allowed:
                raise MscgError(f"rq_xmodal {name}='{value}' is not one of {list(allowed)}.")
        if codebook_update == "ema" and align_grad == "codebooks" and align_weight > 0:
            raise MscgError(
                "rq_xmodal align_grad='codebooks' needs codebook_update='grad' (EMA codebooks "
                "take no gradient); set align_grad='encoder'."
            )
        self.config: dict[str, Any] = {
            "dims": dict(dims),
            "latent_dim": latent_dim,
            "hidden_dims": list(hidden_dims),
            "levels": levels,
            "codebook_size": codebook_size,
            "con_weights": [float(w) for w in con_weights],
            "align_weight": align_weight,
            "tau": tau,
            "alpha": alpha,
            "similarity": similarity,
            "missing_positive": missing_positive,
            "residual_update": residual_update,
            "codebook_update": codebook_update,
            "align_grad": align_grad,
            "squared_error": squared_error,
            "kmeans_iters": kmeans_iters,
        }
        self.levels, self.codebook_size = levels, codebook_size
        self.con_weights = [float(w) for w in con_weights]
        self.align_weight, self.tau, self.alpha = align_weight, tau, alpha
        self.similarity, self.missing_positive = similarity, missing_positive
        self.residual_update, self.codebook_update = residual_update, codebook_update
        self.align_grad, self.squared_error = align_grad, squared_error
        hidden = list(hidden_dims)
        self.encoders = nn.ModuleDict({m: mlp([dims[m], *hidden, latent_dim]) for m in MODALITIES})
        self.decoders = nn.ModuleDict(
            {m: mlp([latent_dim, *reversed(hidden), dims[m]]) for m in MODALITIES}
        )
        self.quantizers = nn.ModuleDict()
        for m in MODALITIES:
            q = ResidualQuantizer(
                latent_dim,
                levels=levels,
                codebook_size=codebook_size,
                kmeans_iters=kmeans_iters,
                ema_update=codebook_update == "ema",
            )
            if codebook_update == "grad":
                _learnable_codebooks(q)
            self.quantizers[m] = q

    @torch.no_grad()
    def init_codebooks(self, x: dict[str, Tensor]) -> None:
        """Residual k-means of each modality's encoder outputs: x[m] [N, D_m]."""
        for m in MODALITIES:
            self.quantizers[m].init_codebooks(self.encoders[m](x[m].float()))

    def quantize(self, modality: str, z: Tensor) -> LevelOutput:
        """Residual quantization of latent z [B, D] keeping every level's residual."""
        q: ResidualQuantizer = self.quantizers[modality]
        if self.training and not bool(q.initialized):
            q.init_codebooks(z.detach())
        if not bool(q.initialized):
            raise MscgError("The cross-modal tokenizer has no codebooks yet: train it first.")
        ema = self.training and self.codebook_update == "ema"
        first = ema and int(q.ema_steps) == 0
        residual = z
        residuals, codes, words = [], [], []
        book_terms, commit_terms = [], []
        for level in range(self.levels):
            c = nearest_code(residual.detach(), q.codebooks[level].detach())
            e = q.codebooks[level][c]  # [B, D]; carries gradient to the codebook in grad mode
            residuals.append(residual)
            book_terms.append(_squared_error(residual.detach(), e, self.squared_error))
            commit_terms.append(_squared_error(residual, e.detach(), self.squared_error))
            if ema:
                q._ema_update(level, residual.detach(), c, first)  # the project's EMA step
            if self.residual_update == "paper":
                residual = residual - e.detach()
            else:  # official: the straight-through value is subtracted; no gradient survives
                residual = residual - (residual + (e - residual).detach())
            codes.append(c)
            words.append(e)
        if ema:
            q.ema_steps += 1
        return LevelOutput(
            residuals=residuals,
            codes=torch.stack(codes, 1),
            z_hat=torch.stack(words).sum(0),
            codebook_loss=torch.stack(book_terms).sum(),
            commit_loss=torch.stack(commit_terms).sum(),
        )

    def forward(
        self,
        x: dict[str, Tensor],
        labels: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> CrossModalOutput:
        """Losses of a batch of paired items.

        x: {"text": [B, D_t], "image": [B, D_v]}, row i of both is the same item.
        labels: pseudo-labels {"text": [B], "image": [B]} int64; needed when any
            ``con_weights`` is non-zero. generator: RNG of the positive draw.
        """
        for m in MODALITIES:
            if m not in x:
                raise MscgError(f"The cross-modal tokenizer got no '{m}' embeddings.")
        latent = {m: self.encoders[m](x[m].float()) for m in MODALITIES}
        levels = {m: self.quantize(m, latent[m]) for m in MODALITIES}
        recon, losses = {}, {}
        for m in MODALITIES:
            z, lv = latent[m], levels[m]
            recon[m] = self.decoders[m](z + (lv.z_hat - z).detach())  # straight-through
            losses[f"recon_{m}"] = _squared_error(recon[m], x[m].float(), self.squared_error)
            losses[f"rq_{m}"] = lv.codebook_loss + self.alpha * lv.commit_loss
        if any(w > 0 for w in self.con_weights):
            if labels is None:
                raise MscgError("L_con needs the pseudo-labels of both modalities.")
            # Text residuals look for an item sharing the *image* label, and vice versa.
            pos = {
                "text": sample_positives(labels["image"], self.missing_positive, generator),
                "image": sample_positives(labels["text"], self.missing_positive, generator),
            }
            for level, w in enumerate(self.con_weights):
                if w <= 0:
                    continue
                con = sum(
                    info_nce(r, r, pos[m], self.tau, self.similarity)
                    for m, r in ((m, levels[m].residuals[level]) for m in MODALITIES)
                )
                losses[f"con_level{level}"] = w * con
        if self.align_weight > 0:
            if self.align_grad == "codebooks":
                zt, zv = levels["text"].z_hat, levels["image"].z_hat
            else:
                zt, zv = (latent[m] + (levels[m].z_hat - latent[m]).detach() for m in MODALITIES)
            losses["align"] = self.align_weight * symmetric_info_nce(
                zt, zv, self.tau, self.similarity
            )
        return CrossModalOutput(
            latent=latent,
            levels=levels,
            reconstruction=recon,
            losses=losses,
            loss=torch.stack(list(losses.values())).sum(),
        )

    @torch.no_grad()
    def encode(self, modality: str, x: Tensor) -> Tensor:
        """Codes [N, L] int64 of one modality's embeddings x [N, D_m]; never updates codebooks."""
        return self.quantizers[modality].encode(self.encoders[modality](x.float()))

    @torch.no_grad()
    def last_level_distances(self, modality: str, x: Tensor) -> Tensor:
        """Squared distance of each row's last residual to every last-level codeword: [N, K]."""
        q: ResidualQuantizer = self.quantizers[modality]
        residual = self.encoders[modality](x.float())
        for level in range(self.levels - 1):
            residual = residual - q.codebooks[level][nearest_code(residual, q.codebooks[level])]
        return torch.cdist(residual, q.codebooks[-1].detach()).pow(2)
