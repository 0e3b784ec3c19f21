"""Parquet DataModules over ``prepared/``: next-item samples for every sequential model.

Sequences are held as flat int32 arrays with offsets (never pandas): 10M interactions take
40 MB. Histories come left-padded with -1, most recent item last: ``history[:, -1]`` is the item
just before the target.

DDP: the train split is partitioned across ranks by Lightning's ``DistributedSampler``; the
valid/test splits use :class:`UnpaddedDistributedSampler`, which gives every user to exactly one
rank (the default sampler pads by repeating users, which would count them twice).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import pyarrow as pa
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from mscg_lightning.artifacts import is_distributed, read_manifest, read_table
from mscg_lightning.errors import MscgError


def _flat_lists(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A list<int> column as (values [total] int32, offsets [N+1] int64)."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = column.offsets.to_numpy().astype(np.int64)
    values = column.values.to_numpy(zero_copy_only=False).astype(np.int32)
    # A sliced list array has offsets that do not start at 0.
    values = values[offsets[0] : offsets[-1]]
    return values, offsets - offsets[0]


def pad_left(rows: list[np.ndarray], length: int, pad: int = -1) -> torch.Tensor:
    """Stack 1-D int arrays into [B, length], keeping each row's last ``length`` values at the right."""
    out = np.full((len(rows), length), pad, dtype=np.int64)
    for i, row in enumerate(rows):
        row = row[-length:]
        if len(row):
            out[i, length - len(row) :] = row
    return torch.from_numpy(out)


def trim_left_padding(history: Tensor, *aligned: Tensor) -> tuple[Tensor, ...]:
    """Drop the leading columns that are padding in every row: [B, T] -> [B, T'].

    For models whose positions do not depend on the left padding (SASRec counts from the first
    real item, GenRec from the latest), this changes no output; length-grouped batches
    (``group_by_length``) then skip most of the padding compute. At least one column is kept.
    ``aligned`` tensors ([B, T], e.g. window targets) are cut the same way.
    Returns ``(history, *aligned)``.
    """
    real = (history >= 0).any(dim=0)
    first = int(real.float().argmax()) if bool(real.any()) else history.shape[1] - 1
    return (history[:, first:], *(t[:, first:] for t in aligned))


class NextItemDataset(Dataset):
    """Samples ``(user_idx, history, target)``; ``__getitem__`` returns a dict of numpy values.

    Built either from train sequences (every position a target, or only the last) or from
    prepared valid/test rows (history + target given).
    """

    def __init__(
        self,
        user_idx: np.ndarray,
        values: np.ndarray,
        offsets: np.ndarray,
        targets: np.ndarray | None = None,
        target_mode: Literal["per_item", "last_item"] = "per_item",
        max_history: int = 20,
    ) -> None:
        self.user_idx = user_idx
        self.values = values
        self.offsets = offsets
        self.max_history = max_history
        if targets is not None:  # eval rows: the whole list is the history
            self.row = np.arange(len(user_idx), dtype=np.int64)
            self.end = offsets[1:]  # history = values[start:end], target given
            self.targets = targets
        else:  # train sequences: sample (row, position) pairs, target = values[position]
            lengths = np.diff(offsets)
            if target_mode == "per_item":
                counts = np.maximum(lengths - 1, 0)
                self.row = np.repeat(np.arange(len(lengths)), counts)
                # position of the target within its row: 1 .. len-1
                within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + 1
                self.end = offsets[self.row] + within
            else:
                self.row = np.nonzero(lengths >= 2)[0]
                self.end = offsets[self.row + 1] - 1
            self.targets = None

    def __len__(self) -> int:
        return len(self.row)

    def sample_lengths(self) -> np.ndarray:
        """History length of every sample (before padding): [len(self)]."""
        return np.minimum(self.end - self.offsets[self.row], self.max_history)

    def sort_by_length(self) -> None:
        """Reorder the samples by history length (stable): batches of similar lengths."""
        order = np.argsort(self.sample_lengths(), kind="stable")
        self.row, self.end = self.row[order], self.end[order]

    def __getitem__(self, i: int) -> dict:
        row, end = self.row[i], self.end[i]
        start = max(self.offsets[row], end - self.max_history)
        target = self.targets[row] if self.targets is not None else self.values[end]
        return {
            "user_idx": int(self.user_idx[row]),
            "history": self.values[start:end],
            "target": int(target),
        }


class WindowDataset(Dataset):
    """Whole training windows: every position of a window is a next-item target.

    A train sequence ``s`` of length n gives the targets ``s[1:]``; they are cut from the end into
    chunks of at most ``window`` targets, and a chunk of targets ``s[a:b]`` comes with the inputs
    ``s[a-1:b-1]``. A causal model then trains every target of a chunk in one forward pass, which
    is the per-item sample set of :class:`NextItemDataset` (each target exactly once) at a fraction
    of the cost; the only difference is that a target in an earlier chunk of a sequence longer
    than ``window + 1`` sees its chunk's inputs only, not the full ``window`` items before it.
    ``__getitem__`` returns ``user_idx``, ``history`` (inputs) and ``targets`` (same length).
    """

    def __init__(
        self, user_idx: np.ndarray, values: np.ndarray, offsets: np.ndarray, window: int = 20
    ) -> None:
        self.user_idx = user_idx
        self.values = values
        self.offsets = offsets
        lengths = np.diff(offsets)
        # chunks per sequence: ceil((n - 1) / window) for n >= 2
        counts = np.where(lengths >= 2, -(-(lengths - 1) // window), 0)
        self.row = np.repeat(np.arange(len(lengths)), counts)
        chunk = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        # absolute end (exclusive) of the chunk's targets; the first chunk ends the sequence
        self.end = offsets[self.row + 1] - chunk * window
        self.start = np.maximum(offsets[self.row] + 1, self.end - window)

    def __len__(self) -> int:
        return len(self.row)

    def sample_lengths(self) -> np.ndarray:
        """Number of targets (= inputs) of every window: [len(self)]."""
        return self.end - self.start

    def __getitem__(self, i: int) -> dict:
        start, end = self.start[i], self.end[i]
        return {
            "user_idx": int(self.user_idx[self.row[i]]),
            "history": self.values[start - 1 : end - 1],
            "targets": self.values[start:end],
        }


def collate_windows(
    batch: list[dict], max_history: int, loss_norm: float | None = None
) -> dict[str, torch.Tensor]:
    """``user_idx`` [B], ``history`` and ``targets`` [B, max_history], both left-padded with -1.

    ``targets[:, t]`` is the item that follows ``history[:, t]``. With ``loss_norm``, the batch
    also carries it as a scalar tensor (see :meth:`SequenceDataModule.loss_norm`).
    """
    out = {
        "user_idx": torch.tensor([b["user_idx"] for b in batch], dtype=torch.long),
        "history": pad_left([b["history"] for b in batch], max_history),
        "targets": pad_left([b["targets"] for b in batch], max_history),
    }
    if loss_norm is not None:
        out["loss_norm"] = torch.tensor(loss_norm, dtype=torch.float32)
    return out


def collate_next_item(batch: list[dict], max_history: int) -> dict[str, torch.Tensor]:
    """``user_idx`` [B], ``history`` [B, max_history] (-1 = padding, left), ``target`` [B]."""
    return {
        "user_idx": torch.tensor([b["user_idx"] for b in batch], dtype=torch.long),
        "history": pad_left([b["history"] for b in batch], max_history),
        "target": torch.tensor([b["target"] for b in batch], dtype=torch.long),
    }


class LengthGroupedSampler(Sampler[int]):
    """A random order of indices in which each run of ``batch_size`` has similar ``lengths``.

    Indices are shuffled, cut into groups of ``group_batches`` batches, sorted by length within
    a group and cut into batches; the batches are shuffled (a final short batch stays last, so
    that the DataLoader's own batching stays aligned). Models that trim padding columns then
    compute on little padding, at the price of slightly correlated batches.
    """

    def __init__(
        self, lengths: np.ndarray, batch_size: int, group_batches: int = 64, seed: int = 0
    ) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.group_batches = group_batches
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this before each epoch; a different order per epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        self.epoch += 1  # a new order on the next pass also without set_epoch
        perm = rng.permutation(len(self.lengths))
        group = self.batch_size * self.group_batches
        batches = []
        for start in range(0, len(perm), group):
            chunk = perm[start : start + group]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [
                chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)
            ]
        tail = [batches.pop()] if batches and len(batches[-1]) < self.batch_size else []
        order = rng.permutation(len(batches))
        return iter(int(i) for b in [batches[j] for j in order] + tail for i in b)


class UnpaddedDistributedSampler(DistributedSampler):
    """Contiguous, unpadded split of an eval set over ranks: every index on exactly one rank."""

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        n = len(dataset)
        per = math.ceil(n / self.num_replicas)
        self.start, self.stop = min(n, self.rank * per), min(n, (self.rank + 1) * per)

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


class SequenceDataModule(L.LightningDataModule):
    """Next-item batches from ``prepared/`` for SASRec and GenRec.

    Args:
        prepared_dir: the ``prepared/`` artifact (set by the pipeline from the run directory).
        batch_size: training batch size (evaluation uses ``eval_batch_size``).
        max_history: history length fed to the model (at most the prepared one).
        target_mode: ``per_item`` (every position of a train sequence is a target), ``last_item``
            (only the last), or ``None`` to use what ``prepare`` recorded.
        num_workers: DataLoader worker processes.
        train_mode: ``samples`` (one ``(history, target)`` pair per target, ``target`` [B]) or
            ``windows`` (whole windows, ``targets`` [B, max_history]; for causal models such as
            SASRec, same targets as ``per_item`` samples, several times faster). ``windows``
            needs ``per_item`` targets.
        group_by_length: train batches of similar history lengths (:class:`LengthGroupedSampler`)
            and valid/test rows sorted by history length, so that a model that drops all-padding
            columns computes little padding (SASRec does; per-user metrics do not change).
            Window batches carry ``loss_norm`` so that a model can keep every target's weight
            equal (a per-batch mean would favour the targets of short windows).
        seed: seed of the length-grouped train order; ``None`` (default) takes torch's seed when
            the train loader is built, which is the run's ``--seed`` (the stage seeds every RNG
            before it builds the data), so that another ``--seed`` also gives another order.
    """

    def __init__(
        self,
        prepared_dir: str | None = None,
        batch_size: int = 256,
        eval_batch_size: int = 512,
        max_history: int = 20,
        target_mode: Literal["per_item", "last_item"] | None = None,
        num_workers: int = 0,
        train_mode: Literal["samples", "windows"] = "samples",
        group_by_length: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.prepared_dir = prepared_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.max_history = max_history
        self.target_mode = target_mode
        self.num_workers = num_workers
        self.train_mode = train_mode
        self.group_by_length = group_by_length
        self.seed = seed
        self.datasets: dict[str, Dataset] = {}

    @property
    def manifest(self):
        if self.prepared_dir is None:
            raise MscgError("data.init_args.prepared_dir is not set: run the prepare stage first.")
        return read_manifest(self.prepared_dir, stage="prepare")

    @property
    def num_items(self) -> int:
        return int(self.manifest.extra["num_items"])

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        extra = self.manifest.extra
        target_mode = self.target_mode or extra.get("target_mode", "per_item")
        root = Path(self.prepared_dir)
        train = read_table(root / "train", columns=["user_idx", "items"])
        values, offsets = _flat_lists(train.column("items"))
        train_users = train.column("user_idx").to_numpy()
        if self.train_mode == "windows":
            if target_mode != "per_item":
                raise MscgError(
                    f"data.init_args.train_mode 'windows' needs per_item targets, but the "
                    f"target_mode is '{target_mode}'; use train_mode 'samples'."
                )
            self.datasets["train"] = WindowDataset(train_users, values, offsets, self.max_history)
        else:
            self.datasets["train"] = NextItemDataset(
                train_users, values, offsets, None, target_mode, self.max_history
            )
        for split in ("valid", "test"):
            table = read_table(root / split, columns=["user_idx", "history", "target"])
            values, offsets = _flat_lists(table.column("history"))
            self.datasets[split] = NextItemDataset(
                table.column("user_idx").to_numpy(),
                values,
                offsets,
                table.column("target").to_numpy(),
                max_history=self.max_history,
            )
            if self.group_by_length:
                self.datasets[split].sort_by_length()

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        sampler = None if shuffle or not is_distributed() else UnpaddedDistributedSampler(dataset)
        if shuffle and self.group_by_length:
            # Under DDP Lightning wraps this sampler in a distributed one (order kept per rank).
            seed = torch.initial_seed() if self.seed is None else self.seed
            sampler = LengthGroupedSampler(dataset.sample_lengths(), self.batch_size, seed=seed)
        collate = functools.partial(collate_next_item, max_history=self.max_history)
        if isinstance(dataset, WindowDataset):
            collate = functools.partial(
                collate_windows, max_history=self.max_history, loss_norm=self.loss_norm()
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle if sampler is None else False,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
        )

    def loss_norm(self) -> float:
        """Expected number of targets in a full window batch: ``batch_size`` x mean per window.

        A loss summed over a batch's targets and divided by this weighs every target of the
        epoch equally. A per-batch mean would not once batches are grouped by length: a target
        in a batch of short windows would weigh up to ``max_history`` times more than one in a
        batch of long windows.
        """
        lengths = self.datasets["train"].sample_lengths()
        return float(self.batch_size * lengths.mean()) if len(lengths) else 1.0

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
