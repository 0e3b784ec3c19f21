"""Item images for RQ-DINO: multi-crop training batches and eval-transformed export batches.

Images come from the prepared items table (``image_path`` and/or ``image_bytes``, see
``mscg_lightning.data.images``) or from a plain list of image files (benchmarks). Every image is
decoded once at setup; unusable ones are left out and listed in :attr:`ImageDataModule.missing`.
An image that fails later (file changed during training) is dropped from its batch with a
warning, so a bad file never stops an epoch.

iBOT masks are not drawn here but by ``RQDino.training_losses``: the patch size and the mask
ratios then live in one place, the model config.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from mscg_lightning.artifacts import read_table, shard_paths
from mscg_lightning.data.images import load_item_images
from mscg_lightning.errors import MscgError
from mscg_lightning.stages.dino_rq.crops import (
    EvalTransform,
    MultiCropAugmentation,
    collate_multicrop,
)

log = logging.getLogger("mscg")

# What PIL raises for a missing, truncated or undecodable image.
IMAGE_ERRORS = (OSError, ValueError, UnidentifiedImageError)


class _TrainImages(Dataset):
    """Position ``i`` -> multi-crop views of image ``i``, or None when it cannot be opened."""

    def __init__(self, loader: Callable[[int], Image.Image], n: int, aug: MultiCropAugmentation):
        self.loader, self.n, self.aug = loader, n, aug

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, list[Tensor]] | None:
        try:
            image = self.loader(i)
        except IMAGE_ERRORS as err:
            log.warning("dino_rq: skipping image at position %d (%s)", i, type(err).__name__)
            return None
        return self.aug(image)


class _EvalImages(Dataset):
    """Position ``i`` -> (i, eval tensor ``[3, S, S]`` or None when it cannot be opened)."""

    def __init__(self, loader: Callable[[int], Image.Image], n: int, transform: EvalTransform):
        self.loader, self.n, self.transform = loader, n, transform

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, Tensor | None, str]:
        try:
            return i, self.transform(self.loader(i)), ""
        except IMAGE_ERRORS as err:
            return i, None, f"unreadable image: {type(err).__name__}"


def collate_train(samples: Sequence[dict[str, list[Tensor]] | None]) -> dict[str, Tensor]:
    """`collate_multicrop` over the samples that loaded; ``{}`` when none did (step skipped)."""
    good = [s for s in samples if s is not None]
    return collate_multicrop(good) if good else {}


def collate_eval(samples: Sequence[tuple[int, Tensor | None, str]]) -> dict[str, object]:
    """Stack eval images: ``positions`` [B'] int64, ``pixels`` [B', 3, S, S], ``failed``.

    ``failed`` lists (position, reason) of the images that could not be opened.
    """
    good = [(i, x) for i, x, _ in samples if x is not None]
    failed = [(i, reason) for i, x, reason in samples if x is None]
    positions = torch.tensor([i for i, _ in good], dtype=torch.long)
    pixels = torch.stack([x for _, x in good]) if good else torch.zeros(0)
    return {"positions": positions, "pixels": pixels, "failed": failed}


class ImageDataModule(LightningDataModule):
    """Multi-crop batches of item images (paper: 2 global crops of 224 px, 4 local of 98 px).

    Exactly one of ``prepared_dir`` and ``image_paths`` is given.

    Args:
        prepared_dir: the ``prepared/`` artifact (the pipeline injects it); images of its items
            table, keyed by ``item_idx``.
        image_paths: a plain list of image files instead; ``item_idx`` = position in the list.
        batch_size: images per training batch and device.
        num_workers: DataLoader worker processes (augmentation runs there).
        global_size, local_size, n_local: crop sides in pixels and local crops per image.
        global_scale, local_scale: area fraction ranges of the random resized crops.
        blur_p, solarize_p, blur_sigma, jitter_p, grayscale_p: photometric augmentation (see
            ``MultiCropAugmentation``; the blur sigma scales with ``global_size / 224``).
        eval_size: side of the centre crop used to export codes (None: ``global_size``).
        eval_batch_size: images per export batch (None: ``batch_size``).
        drop_last: drop an incomplete last training batch (unless there is only one batch).
    """

    def __init__(
        self,
        prepared_dir: str | None = None,
        image_paths: list[str] | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        global_size: int = 224,
        local_size: int = 98,
        n_local: int = 4,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
        blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5),
        solarize_p: float = 0.2,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        eval_size: int | None = None,
        eval_batch_size: int | None = None,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        if (prepared_dir is None) == (image_paths is None):
            raise MscgError("ImageDataModule needs exactly one of prepared_dir and image_paths.")
        self.prepared_dir = None if prepared_dir is None else Path(prepared_dir)
        self.image_paths = None if image_paths is None else [str(p) for p in image_paths]
        self.batch_size, self.num_workers = batch_size, num_workers
        self.eval_batch_size = eval_batch_size or batch_size
        self.drop_last = drop_last
        self.augmentation = MultiCropAugmentation(
            global_size,
            local_size,
            n_local,
            tuple(global_scale),
            tuple(local_scale),
            tuple(blur_p),
            solarize_p,
            tuple(blur_sigma),
            jitter_p,
            grayscale_p,
        )
        self.eval_transform = EvalTransform(eval_size or global_size)
        self.loader: Callable[[int], Image.Image] | None = None
        self.item_idx = np.zeros(0, dtype=np.int64)
        self.num_items = 0
        self.missing: dict[int, str] = {}

    def _items_table(self) -> pa.Table:
        if self.image_paths is not None:
            n = len(self.image_paths)
            return pa.table(
                {"item_idx": pa.array(range(n), pa.int32()), "image_path": self.image_paths}
            )
        items = self.prepared_dir / "items"
        names = pq.read_schema(shard_paths(items)[0]).names
        columns = ["item_idx"] + [c for c in ("image_path", "image_bytes") if c in names]
        if len(columns) == 1:
            raise MscgError(
                f"{items} has no image_path or image_bytes column: there are no images."
            )
        return read_table(items, columns=columns)

    def setup(self, stage: str | None = None) -> None:
        """Decode every image once; keep the usable ones (idempotent)."""
        if self.loader is not None:
            return
        table = self._items_table()
        self.num_items = table.num_rows
        loader, item_idx, missing = load_item_images(table)
        if len(item_idx) == 0:
            where = self.prepared_dir / "items" if self.prepared_dir else "image_paths"
            raise MscgError(f"None of the {self.num_items} images of {where} can be opened.")
        if missing:
            log.warning(
                "dino_rq: %d of %d items have no usable image", len(missing), self.num_items
            )
        self.loader, self.item_idx, self.missing = loader, item_idx.astype(np.int64), missing

    def train_dataloader(self) -> DataLoader:
        self.setup()
        n = len(self.item_idx)
        return DataLoader(
            _TrainImages(self.loader, n, self.augmentation),
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_train,
            drop_last=self.drop_last and n > self.batch_size,
        )

    def export_dataloader(self) -> DataLoader:
        """Every usable image once, in ``item_idx`` order, with the eval transform."""
        self.setup()
        return DataLoader(
            _EvalImages(self.loader, len(self.item_idx), self.eval_transform),
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_eval,
        )


@torch.no_grad()
def embed_images(
    backbone: nn.Module, data: ImageDataModule, device: torch.device | str = "cpu"
) -> tuple[np.ndarray, torch.Tensor, dict[int, str]]:
    """CLS embeddings of every usable image of ``data`` (eval transform, backbone in eval mode).

    Returns ``item_idx`` [N] int64, embeddings [N, D] float32 on CPU, and {item_idx: reason}
    of the images that failed to open during this pass.
    """
    was_training = backbone.training
    backbone.eval().to(device)
    positions, chunks, failed = [], [], {}
    try:
        for batch in data.export_dataloader():
            for pos, reason in batch["failed"]:
                failed[int(data.item_idx[pos])] = reason
            if len(batch["positions"]) == 0:
                continue
            out = backbone(pixel_values=batch["pixels"].to(device))
            chunks.append(out.pooler_output.float().cpu())
            positions.append(batch["positions"])
    finally:
        backbone.train(was_training)
    if not chunks:
        raise MscgError("None of the images could be opened for the export.")
    pos = torch.cat(positions).numpy()
    return data.item_idx[pos], torch.cat(chunks), failed
