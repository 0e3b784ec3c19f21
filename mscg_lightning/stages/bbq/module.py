"""Lightning glue of BBQRec's tokenizer: two alternating optimizers, logging, validation R@10.

Each training step runs CLUB's prescribed alternation (paper silent, ``club_steps`` switch):
first q_θ of every modality takes ``club_steps`` Adam steps maximising its log-likelihood on the
batch's detached (z, z̄) pairs (also without L_MIM, ``gamma=0``, so that the estimate remains a
diagnostic), then the tokenizer takes one step on the total loss with q_θ
fixed (its gradients from that loss are discarded). Validation ranks the whole catalogue by
cos(h, v) with the internal SASRec encoder (``val/recall@10``, the diagnostic the issue asks
for); the CLUB estimate per epoch is kept in :attr:`BBQModule.mim_history`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from mscg_lightning.data.datamodule import trim_left_padding
from mscg_lightning.errors import MscgError
from mscg_lightning.metrics import RetrievalMetrics
from mscg_lightning.stages.bbq.model import BBQTokenizer


class BBQModule(L.LightningModule):
    """Trains :class:`BBQTokenizer` on windows of ``prepared/`` train sequences.

    Args:
        num_items: catalogue size (set by the stage).
        content_dims: input dimension per content modality (set by the stage).
        lr, weight_decay: AdamW of the tokenizer (paper silent; 1e-3, 0).
        club_lr: Adam learning rate of CLUB's q_θ; club_steps: its steps per batch.
        ks: cut-offs of the validation metrics.
        Every other argument goes to :class:`BBQTokenizer` (see there for the paper values).
    """

    def __init__(
        self,
        num_items: int | None = None,
        content_dims: dict[str, int] | None = None,
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
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        club_lr: float = 1e-3,
        club_steps: int = 1,
        ks: tuple[int, ...] = (10,),
    ) -> None:
        super().__init__()
        if num_items is None or not content_dims:
            raise MscgError("bbq: model.init_args.num_items and content_dims are set by the stage.")
        if club_steps < 0:
            raise MscgError(f"bbq: model.init_args.club_steps={club_steps} must be >= 0.")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.model = BBQTokenizer(
            num_items,
            dict(content_dims),
            latent_dim=latent_dim,
            specific_dim=specific_dim,
            hidden_dims=hidden_dims,
            levels=levels,
            codebook_size=codebook_size,
            alpha=alpha,
            shared_codebook=shared_codebook,
            beta=beta,
            gamma=gamma,
            recon_weight=recon_weight,
            tau=tau,
            mim_clamp=mim_clamp,
            squared_error=squared_error,
            id_init_range=id_init_range,
            seq_layers=seq_layers,
            seq_heads=seq_heads,
            seq_inner=seq_inner,
            seq_dropout=seq_dropout,
            max_len=max_len,
            kmeans_iters=kmeans_iters,
            dead_code_threshold=dead_code_threshold,
            usage_decay=usage_decay,
            club_hidden=club_hidden,
        )
        self.ks = tuple(int(k) for k in ks)
        self.val_metrics = RetrievalMetrics(self.ks)
        #: Mean CLUB estimate (unclamped, summed over modalities) per training epoch.
        self.mim_history: list[float] = []
        #: Validation metrics per epoch (``recall@10``...).
        self.val_history: list[dict[str, float]] = []
        self._mim_sum, self._mim_batches = 0.0, 0
        self._catalogue_v: Tensor | None = None

    def _main_params(self) -> list[torch.nn.Parameter]:
        club = {id(p) for p in self.model.club.parameters()}
        return [p for p in self.model.parameters() if id(p) not in club]

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        main = torch.optim.AdamW(self._main_params(), lr=hp.lr, weight_decay=hp.weight_decay)
        club = torch.optim.Adam(self.model.club.parameters(), lr=hp.club_lr)
        return [main, club]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        main_opt, club_opt = self.optimizers()
        history, targets = trim_left_padding(batch["history"], batch["targets"])
        if self.hparams.club_steps > 0:  # also at gamma 0: the estimate stays a diagnostic
            with torch.no_grad():  # the latents do not change during q_θ's steps
                items = torch.unique(torch.cat([history.flatten(), targets.flatten()]))
                z, specific = self.model.latents(items[items >= 0])
            pairs = {m: (z[:, s], specific[m]) for s, m in enumerate(self.model.signals[1:], 1)}
            for _ in range(self.hparams.club_steps):
                club_loss = self.model.club_loss(pairs)
                club_opt.zero_grad()
                self.manual_backward(club_loss)
                club_opt.step()
            self.log(
                "train/club_nll", club_loss, on_step=False, on_epoch=True, batch_size=len(history)
            )
        out = self.model(history, targets)
        main_opt.zero_grad()
        self.manual_backward(out.loss)
        main_opt.step()
        club_opt.zero_grad()  # q_θ is not moved by the tokenizer's loss
        n = len(history)
        for name, value in out.losses.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=n)
        self.log("train/loss", out.loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        self._mim_sum += sum(float(out.losses[f"mim_{m}"]) for m in self.model.modalities)
        self._mim_batches += 1
        return out.loss.detach()

    def on_train_epoch_end(self) -> None:
        if self._mim_batches:
            self.mim_history.append(self._mim_sum / self._mim_batches)
        self._mim_sum, self._mim_batches = 0.0, 0

    def on_validation_epoch_start(self) -> None:
        self.val_metrics.reset()
        self._catalogue_v = self.model.encode_catalogue()[1]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        assert self._catalogue_v is not None
        (history,) = trim_left_padding(batch["history"])
        ranked = self.model.recommend(history, self._catalogue_v, max(self.ks))
        self.val_metrics.update(ranked, batch["target"], batch["user_idx"])

    def on_validation_epoch_end(self) -> None:
        values = {n: float(v) for n, v in self.val_metrics.compute().items()}
        for name, value in values.items():
            self.log(f"val/{name}", value, prog_bar=name == "recall@10", batch_size=1)
        if not self.trainer.sanity_checking:
            self.val_history.append(values)
        self._catalogue_v = None

    def diagnostics(self) -> dict[str, Any]:
        """CLUB estimate per epoch and validation metrics per epoch (JSON-ready)."""
        return {"mim_per_epoch": list(self.mim_history), "val_per_epoch": list(self.val_history)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["bbq_diagnostics"] = self.diagnostics()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("bbq_diagnostics", {})
        self.mim_history = list(saved.get("mim_per_epoch", []))
        self.val_history = list(saved.get("val_per_epoch", []))
