"""What ``mscg`` prints: one line per validation epoch, third-party noise once, a narrow table.

- `quiet_third_party()`: deprecation and future warnings of libraries are shown once per
  message (Lightning re-arms Python's per-location registry with every Trainer, so without this
  the same warning comes back for every stage); Lightning's info lines that repeat for every
  stage ("GPU available", "Seed set to") are shown once; its checkpoint-reload chatter is
  dropped.
- `EpochLine`: when the progress bar is off, one compact line per validation epoch, e.g.
  ``[mscg] genrec epoch 3/10: train/loss 2.314  val/loss 2.101  val/ndcg@10 0.1636  (4.2 s)``.
The final table (within 120 columns, every metric in ``metrics.md``) is compare.py's.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import lightning as L

WIDTH = 120
#: Columns of the console table; every other metric is in the files.
CONSOLE_METRICS = ("recall@10", "ndcg@10", "mrr@10")
#: Lightning info lines that say nothing a user acts on (each stage reloads its best checkpoint).
_CHATTER = ("Restoring states from the checkpoint", "Loaded model weights from the checkpoint")
#: Validation values shown first (the rest follow by name while the line has room).
_PRIORITY = ("val/loss", "val/ndcg@10", "val/recall@10", "val/mrr@10")
_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed")


class _OnceFilter(logging.Filter):
    """Drops a record whose message was already shown, and the reload chatter."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(message.startswith(c) for c in _CHATTER):
            return False
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


_ONCE = _OnceFilter()


_SEEN_WARNINGS: set[tuple[type, str]] = set()
_OWN = str(Path(__file__).resolve().parent)


def _show_once(show):
    """`warnings.showwarning` that drops a third-party message already shown (whatever the
    filters say)."""

    def showwarning(message, category, filename, lineno, file=None, line=None):
        key = (category, str(message))
        if _OWN not in str(filename):  # the project's own warnings are always shown
            if key in _SEEN_WARNINGS:
                return
            _SEEN_WARNINGS.add(key)
        show(message, category, filename, lineno, file, line)

    showwarning.mscg_once = True  # type: ignore[attr-defined]
    return showwarning


def quiet_third_party() -> None:
    """Show each third-party deprecation/future warning and each repeated info line once."""
    # Filters alone do not hold: libraries insert their own in front with every Trainer.
    if not getattr(warnings.showwarning, "mscg_once", False):
        warnings.showwarning = _show_once(warnings.showwarning)
    # tiny data sets have fewer batches than the logging interval: not worth a warning per stage
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _ONCE not in logger.filters:
            logger.addFilter(_ONCE)


def _number(value: float) -> str:
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


class EpochLine(L.Callback):
    """One line per validation epoch (rank 0) when the trainer shows no progress bar.

    Prints the epoch-level `train/*loss*` and the `val/*` values (val/loss and the @10 metrics
    first), cut to fit `WIDTH` columns; the sanity check prints nothing. Lightning aggregates an
    epoch's values after the callbacks' epoch-end hooks, so the line of an epoch is printed when
    the next one starts, or when fitting ends.
    """

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.start = time.monotonic()
        self.pending: tuple[int, float] | None = None  # (epoch, seconds) awaiting its line

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer)
        self.start = time.monotonic()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.pending = (trainer.current_epoch, time.monotonic() - self.start)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer)

    def _flush(self, trainer: L.Trainer) -> None:
        pending, self.pending = self.pending, None
        if pending is None or trainer.progress_bar_callback is not None:
            return
        if trainer.is_global_zero:
            print(self.line(trainer, *pending), flush=True)

    def line(self, trainer: L.Trainer, epoch: int, seconds: float) -> str:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        train = [k for k in metrics if k.startswith("train/") and "loss" in k]
        # the epoch mean where Lightning keeps both it and the last step's value
        keys = [k for k in train if not k.endswith("_step") and f"{k}_epoch" not in metrics]
        val = [k for k in metrics if k.startswith("val/")]
        keys += sorted(val, key=lambda k: (_PRIORITY.index(k) if k in _PRIORITY else 99, k))
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        head = f"[mscg] {self.stage} epoch {epoch + 1}{total}:"
        tail = f"  ({seconds:.1f} s)"
        parts = [head]
        for key in keys:
            item = f" {key.removesuffix('_epoch')} {_number(metrics[key])}"
            if len("".join(parts)) + len(item) + len(tail) > WIDTH:
                break
            parts.append(" " + item if len(parts) > 1 else item)
        return "".join(parts) + tail
