"""BBQRec's behaviour-bound tokenizer as a pure ``nn.Module`` (paper Sec. 4.1, Eq. 2-13).

Signals of an item i (order: ``id`` first, then the content modalities as configured):

* ``id``: a learnable embedding z^ID [D] (paper: initialised U(0, 0.01));
* per content modality m: a behaviour-aligned encoder (TB / IB) giving z^m [D] and a
  modality-specific encoder (TS / IS) giving z̄^m [D_s] (MLPs; sizes not in the paper).

The S signals go through :class:`SharedResidualQuantizer` (one codebook per level shared by all
signals); decoder m rebuilds x^m from q^m ⊕ z̄^m (L_recon); L_MIM is the CLUB estimate of
I(z^m; z̄^m) summed over m; v_i = q^ID ⊕ q^text ⊕ q^image feeds a SASRec encoder over the
training windows, trained by in-batch InfoNCE on cos(h_t, v_{t+1}) / tau (L_Rec). Total
(Eq. 13): ``recon_weight * L_recon + sum_m L_RQ^m + beta * L_Rec + gamma * L_MIM``.

Ablations (paper Table 4): ``gamma=0`` (without L_MIM), ``beta=0`` (without L_Rec),
``shared_codebook=False`` (without the shared codebook).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.bbq.club import CLUB
from mscg_lightning.stages.bbq.quantizer import SharedResidualQuantizer
from mscg_lightning.stages.rq.quantizer import mlp
from mscg_lightning.stages.sasrec.model import SASRec


@dataclass
class BBQOutput:
    """loss: the total (scalar); losses: every term by name (scalars); codes: [U, S, L] of the
    batch's items; club_terms: per modality (z, z̄) pairs for CLUB's own fitting step."""

    loss: Tensor
    losses: dict[str, Tensor]
    codes: Tensor
    club_terms: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)


class BBQTokenizer(nn.Module):
    """The tokenizer; features are set once with :meth:`set_features`.

    Args:
        num_items: catalogue size N (ID embeddings for every item).
        content_dims: input dimension per content modality, e.g. ``{"text": 384}``.
        latent_dim: D of every signal's latent and codeword (paper 128).
        specific_dim: D_s of the modality-specific latents (default D).
        hidden_dims: encoder widths (decoders mirror them).
        levels, codebook_size, alpha: quantizer (paper 3, 256, 0.25).
        shared_codebook: one table per level for all signals (paper) or per signal (ablation).
        beta, gamma: weights of L_Rec and L_MIM (paper 1, 1); recon_weight: of L_recon.
        tau: InfoNCE temperature (paper 0.1).
        mim_clamp: clamp the CLUB estimate at 0 from below (default; ours). Unclamped (the
            paper's Eq. 3), the encoders run away from q_θ between its fitting steps and the
            estimate falls without bound (-550 after 2 epochs on Scientific).
        squared_error: ``mean`` (over dimensions, as LETTER / TIGER implement it) or ``sum``
            (the paper's squared L2 norm) for L_recon and L_RQ.
        id_init_range: ID embeddings start U(0, id_init_range) (paper 0.01).
        seq_layers, seq_heads, seq_inner, seq_dropout, max_len: the SASRec sequence encoder of
            width S*D.
        kmeans_iters, dead_code_threshold, usage_decay: quantizer switches (restarts on by
            default, ours: without them most codewords die).
        club_hidden: width of CLUB's q_θ MLPs.
    """

    def __init__(
        self,
        num_items: int,
        content_dims: dict[str, int],
        latent_dim: int = 128,
        specific_dim: int | None = None,
        hidden_dims: list[int] | None = None,
        levels: int = 3,
        codebook_size: int = 256,
        alpha: float = 0.25,
        shared_codebook: bool = True,
        beta: float = 1.0,
        gamma: float = 1.0,
        recon_weight: float = 1.0,
        tau: float = 0.1,
        mim_clamp: bool = True,
        squared_error: str = "mean",
        id_init_range: float = 0.01,
        seq_layers: int = 2,
        seq_heads: int = 2,
        seq_inner: int = 256,
        seq_dropout: float = 0.2,
        max_len: int = 20,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 1.0,
        usage_decay: float = 0.99,
        club_hidden: int = 128,
    ) -> None:
        super().__init__()
        if not content_dims:
            raise MscgError("bbq needs at least one content modality (text or image embeddings).")
        if squared_error not in ("mean", "sum"):
            raise MscgError(f"bbq squared_error='{squared_error}' is not 'mean' or 'sum'.")
        hidden = list(hidden_dims) if hidden_dims is not None else [512, 256]
        spec = specific_dim or latent_dim
        self.modalities = list(content_dims)
        self.signals = ["id", *self.modalities]
        self.num_items, self.latent_dim = num_items, latent_dim
        self.beta, self.gamma, self.recon_weight, self.tau = beta, gamma, recon_weight, tau
        self.mim_clamp, self.squared_error = mim_clamp, squared_error
        self.id_embedding = nn.Embedding(num_items, latent_dim)
        nn.init.uniform_(self.id_embedding.weight, 0.0, id_init_range)
        self.behaviour = nn.ModuleDict(
            {m: mlp([d, *hidden, latent_dim]) for m, d in content_dims.items()}
        )
        self.specific = nn.ModuleDict({m: mlp([d, *hidden, spec]) for m, d in content_dims.items()})
        self.decoders = nn.ModuleDict(
            {m: mlp([latent_dim + spec, *reversed(hidden), d]) for m, d in content_dims.items()}
        )
        self.club = nn.ModuleDict({m: CLUB(latent_dim, spec, club_hidden) for m in content_dims})
        self.quantizer = SharedResidualQuantizer(
            latent_dim,
            len(self.signals),
            levels,
            codebook_size,
            shared=shared_codebook,
            alpha=alpha,
            kmeans_iters=kmeans_iters,
            dead_code_threshold=dead_code_threshold,
            usage_decay=usage_decay,
        )
        self.sequence = SASRec(
            1,
            hidden_size=latent_dim * len(self.signals),
            num_layers=seq_layers,
            num_heads=seq_heads,
            inner_size=seq_inner,
            dropout=seq_dropout,
            max_len=max_len,
        )
        for m, d in content_dims.items():
            self.register_buffer(f"features_{m}", torch.zeros(num_items, d), persistent=False)
            self.register_buffer(
                f"present_{m}", torch.zeros(num_items, dtype=torch.bool), persistent=False
            )

    # ------------------------------------------------------------------ features
    def set_features(self, modality: str, item_idx: Tensor, embeddings: Tensor) -> None:
        """Content features of ``modality``: rows [n, D_m] for items ``item_idx`` [n].

        Items without a row get the mean row as input (paper silent on missing modalities);
        their L_recon is left out.
        """
        feats = getattr(self, f"features_{modality}")
        if embeddings.shape[1] != feats.shape[1]:
            raise MscgError(
                f"bbq: the {modality} embeddings have dimension {embeddings.shape[1]}, "
                f"expected {feats.shape[1]}."
            )
        present = torch.zeros(self.num_items, dtype=torch.bool, device=feats.device)
        present[item_idx.to(feats.device)] = True
        emb = embeddings.to(feats.device, feats.dtype)
        feats.copy_(emb.mean(0, keepdim=True).expand_as(feats))
        feats[item_idx.to(feats.device)] = emb
        getattr(self, f"present_{modality}").copy_(present)

    def features(self, modality: str, items: Tensor) -> tuple[Tensor, Tensor]:
        """(inputs [U, D_m], present [U] bool) of ``items`` [U]."""
        return getattr(self, f"features_{modality}")[items], getattr(self, f"present_{modality}")[
            items
        ]

    # ------------------------------------------------------------------ latents
    def latents(self, items: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Behaviour latents z [U, S, D] (signal order ``self.signals``) and z̄ per modality."""
        z = [self.id_embedding(items)]
        specific = {}
        for m in self.modalities:
            x, _ = self.features(m, items)
            z.append(self.behaviour[m](x))
            specific[m] = self.specific[m](x)
        return torch.stack(z, 1), specific

    def _sq(self, a: Tensor, b: Tensor) -> Tensor:
        """Squared error per row [N] (mean or sum over the last dimension)."""
        err = (a - b) ** 2
        return err.sum(-1) if self.squared_error == "sum" else err.mean(-1)

    def item_vectors(self, quantized: Tensor) -> Tensor:
        """v = q^ID ⊕ q^text ⊕ ...: [U, S, D] -> [U, S*D]."""
        return quantized.flatten(1)

    # ------------------------------------------------------------------ training
    def forward(self, history: Tensor, targets: Tensor) -> BBQOutput:
        """All losses of one batch of training windows.

        history, targets: [B, T] item_idx (-1 = padding, left); ``targets[:, t]`` follows
        ``history[:, t]``. The per-item losses (L_RQ, L_recon, L_MIM) are taken over the
        distinct items of the batch; L_Rec's negatives are the batch's other distinct targets.
        """
        items = torch.unique(torch.cat([history.flatten(), targets.flatten()]))
        items = items[items >= 0]  # [U] sorted
        z, specific = self.latents(items)
        rq = self.quantizer(z)
        scale = float(self.latent_dim) if self.squared_error == "sum" else 1.0
        losses: dict[str, Tensor] = {"rq": rq.loss * scale}
        recon = torch.zeros((), device=z.device)
        mim = torch.zeros((), device=z.device)
        club_terms = {}
        for s, m in enumerate(self.signals[1:], start=1):
            x, present = self.features(m, items)
            x_hat = self.decoders[m](torch.cat([rq.quantized[:, s], specific[m]], -1))
            err = self._sq(x_hat, x)
            recon = recon + (err * present).sum() / present.sum().clamp(min=1)
            estimate = self.club[m](z[:, s], specific[m])
            losses[f"mim_{m}"] = estimate.detach()
            mim = mim + (estimate.clamp(min=0) if self.mim_clamp else estimate)
            club_terms[m] = (z[:, s], specific[m])
        losses["recon"], losses["mim"] = recon, mim
        v = self.item_vectors(rq.quantized)
        losses["rec"] = self.rec_loss(items, v, history, targets)
        total = self.recon_weight * recon + losses["rq"] + self.beta * losses["rec"]
        total = total + self.gamma * mim
        return BBQOutput(total, losses, rq.codes, club_terms)

    def sequence_states(self, v_history: Tensor, pad: Tensor) -> Tensor:
        """SASRec states [B, T, S*D] over item vectors v_history [B, T, S*D] (pad [B, T])."""
        return self.sequence.encode_embeddings(v_history, pad)

    def rec_loss(self, items: Tensor, v: Tensor, history: Tensor, targets: Tensor) -> Tensor:
        """In-batch InfoNCE of Eq. 12 over every position with a target: scalar.

        items [U] sorted item_idx with vectors v [U, S*D]; history/targets [B, T]. Candidates
        are the distinct targets of the batch (a repeated target is one candidate, so never
        its own negative).
        """
        pad = history < 0
        local = torch.searchsorted(items, history.clamp(min=0))
        states = self.sequence_states(v[local] * (~pad)[..., None], pad)
        keep = targets >= 0
        h = states[keep]  # [M, S*D]
        tgt = targets[keep]
        cand, label = torch.unique(tgt, return_inverse=True)
        cand_v = v[torch.searchsorted(items, cand)]
        logits = F.normalize(h, dim=-1) @ F.normalize(cand_v, dim=-1).T / self.tau
        return F.cross_entropy(logits, label)

    def club_loss(self, club_terms: dict[str, tuple[Tensor, Tensor]]) -> Tensor:
        """CLUB's own step: negative log-likelihood of q_θ on detached pairs, summed over m."""
        return sum(self.club[m].learning_loss(zm, sm) for m, (zm, sm) in club_terms.items())

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def encode_items(self, items: Tensor) -> tuple[Tensor, Tensor]:
        """Per-signal codes [U, S, L] and item vectors v [U, S*D] (quantized) of ``items``."""
        z, _ = self.latents(items)
        codes = self.quantizer.encode(z)
        return codes, self.item_vectors(self.quantizer.decode(codes))

    @torch.no_grad()
    def encode_catalogue(self, chunk: int = 4096) -> tuple[Tensor, Tensor]:
        """:meth:`encode_items` of every item 0..N-1, in chunks."""
        device = self.id_embedding.weight.device
        parts = [
            self.encode_items(torch.arange(s, min(s + chunk, self.num_items), device=device))
            for s in range(0, self.num_items, chunk)
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    @torch.no_grad()
    def recommend(self, history: Tensor, catalogue_v: Tensor, k: int) -> Tensor:
        """Top-k item_idx [B, k] by cos(h, v) for histories [B, T] (-1 = padding)."""
        pad = history < 0
        states = self.sequence_states(catalogue_v[history.clamp(min=0)] * (~pad)[..., None], pad)
        scores = F.normalize(states[:, -1], dim=-1) @ F.normalize(catalogue_v, dim=-1).T
        return scores.topk(min(k, scores.shape[1]), dim=1).indices
