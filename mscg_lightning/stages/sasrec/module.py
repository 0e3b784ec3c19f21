"""Lightning glue of the SASRec stage: loss, optimiser, full-ranking evaluation and its logging."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from mscg_lightning.data.datamodule import trim_left_padding
from mscg_lightning.errors import MscgError
from mscg_lightning.metrics import RetrievalMetrics
from mscg_lightning.stages.sasrec.model import SASRec


def mask_items(scores: Tensor, history: Tensor) -> Tensor:
    """Set the scores of each user's history items to -inf (in place).

    scores: [B, N]; history: [B, T] item_idx, -1 = padding. Returns ``scores``.
    """
    rows, cols = (history >= 0).nonzero(as_tuple=True)
    scores[rows, history[rows, cols]] = float("-inf")
    return scores


class SASRecModule(L.LightningModule):
    """Trains :class:`SASRec` with cross-entropy over all items and ranks the whole catalogue.

    Training batches are either whole windows (``history`` [B, T], ``targets`` [B, T], -1 =
    no target: every position is trained in one pass; optional ``loss_norm``: the summed loss is
    divided by it instead of averaged) or single samples (``history`` [B, T], ``target`` [B]:
    only the last position). Validation/test batches carry ``user_idx`` [B],
    ``history`` [B, T], ``target`` [B]; the top ``max(ks)`` items go to
    :class:`~mscg_lightning.metrics.RetrievalMetrics`, logged as ``val/ndcg@10`` etc.

    Args:
        num_items: catalogue size (set by the pipeline from the prepared manifest).
        hidden_size, num_layers, num_heads, inner_size, dropout, max_len: see :class:`SASRec`.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        ks: cut-offs of the retrieval metrics.
        mask_history: rank without the user's own history items (off by default, DESIGN §5).
    """

    def __init__(
        self,
        num_items: int | None = None,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        inner_size: int = 256,
        dropout: float = 0.5,
        max_len: int = 20,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        ks: Sequence[int] = (1, 5, 10),
        mask_history: bool = False,
    ) -> None:
        super().__init__()
        if num_items is None:
            raise MscgError("model.init_args.num_items is not set: run the prepare stage first.")
        self.save_hyperparameters()
        self.model = SASRec(
            num_items,
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            inner_size=inner_size,
            dropout=dropout,
            max_len=max_len,
        )
        self.ks = tuple(int(k) for k in ks)
        #: Whether ``rank`` masks history items; the stage flips it for a second, named test pass.
        self.mask_history = mask_history
        self.val_metrics = RetrievalMetrics(self.ks)
        self.test_metrics = RetrievalMetrics(self.ks)
        #: ``compute_with_ci()`` of the last test epoch, on every rank.
        self.test_result: dict[str, dict[str, float]] | None = None

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if "targets" in batch:  # whole windows: every non-padding position is a target
            history, targets = trim_left_padding(batch["history"], batch["targets"])
            keep = targets >= 0
            hidden = self.model(history)[keep]  # [M, D], only positions with a target
            targets = targets[keep]
        else:
            (history,) = trim_left_padding(batch["history"])
            hidden = self.model.last_hidden(history)
            targets = batch["target"]
        # Logits over the whole catalogue for the selected positions only: [M, N].
        logits = self.model.scores(hidden)
        if "loss_norm" in batch:
            # Sum / expected targets per batch: every target weighs the same, also in batches
            # grouped by length (a batch mean would favour targets of short windows).
            loss = F.cross_entropy(logits, targets, reduction="sum") / batch["loss_norm"]
            weight = 1  # the plain mean of these over an epoch is the mean CE per target
        else:
            loss = F.cross_entropy(logits, targets)
            weight = len(targets)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=weight)
        return loss

    @torch.no_grad()
    def rank(self, history: Tensor, k: int) -> Tensor:
        """Top-``k`` item_idx per user, best first: history [B, T] -> [B, k]."""
        (trimmed,) = trim_left_padding(history)
        scores = self.model.scores(self.model.last_hidden(trimmed))
        if self.mask_history:
            mask_items(scores, history)
        return scores.topk(min(k, scores.shape[1]), dim=1).indices

    def _eval_step(self, batch: dict[str, Tensor], metric: RetrievalMetrics) -> None:
        ranked = self.rank(batch["history"], max(self.ks))
        metric.update(ranked, batch["target"], batch["user_idx"])

    # States are reset when an epoch starts (not when it ends), so that the stage can read the
    # per-user ranks of the last run (``compute_with_ci``) after ``trainer.validate``/``test``.
    def on_validation_epoch_start(self) -> None:
        self.val_metrics.reset()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        # compute() syncs the ranks of all processes itself: no sync_dist needed.
        for name, value in self.val_metrics.compute().items():
            self.log(f"val/{name}", value, prog_bar=name == "ndcg@10")

    def on_test_epoch_start(self) -> None:
        self.test_metrics.reset()
        self.test_result = None

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self.test_result = self.test_metrics.compute_with_ci()
        self.log_dict(
            {f"test/{n}": r["mean"] for n, r in self.test_result.items() if n != "num_users"}
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
