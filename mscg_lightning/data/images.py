"""Item images from the prepared items table: file paths or bytes, corrupt ones marked missing."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pyarrow as pa
from PIL import Image, UnidentifiedImageError


def open_image(path: str | None, data: bytes | None) -> Image.Image:
    """An RGB image from bytes (preferred) or a file path; raises OSError/ValueError if unusable."""
    if data is not None:
        image = Image.open(io.BytesIO(data))
    elif path:
        image = Image.open(path)
    else:
        raise ValueError("no image")
    image.load()  # decode now, so a truncated file fails here and not inside a batch
    return image.convert("RGB")


def load_item_images(
    items: pa.Table,
) -> tuple[Callable[[int], Image.Image], np.ndarray, dict[int, str]]:
    """Check every item's image once; return (loader by position, item_idx [N], missing reasons).

    ``loader(i)`` opens the image of ``item_idx[i]``. Items without an image, or whose image
    cannot be decoded, are left out and listed in ``missing`` ({item_idx: reason}).
    """
    idx = items.column("item_idx").to_numpy()
    paths = items.column("image_path").to_pylist() if "image_path" in items.column_names else None
    blobs = items.column("image_bytes").to_pylist() if "image_bytes" in items.column_names else None
    keep, missing = [], {}
    for row, item in enumerate(idx):
        path = paths[row] if paths else None
        data = blobs[row] if blobs else None
        if path is None and data is None:
            missing[int(item)] = "no image"
            continue
        try:
            open_image(path, data)
        except (OSError, ValueError, UnidentifiedImageError) as err:
            missing[int(item)] = f"unreadable image: {type(err).__name__}"
            continue
        keep.append(row)
    keep_arr = np.array(keep, dtype=np.int64)

    def loader(i: int) -> Image.Image:
        row = keep_arr[i]
        return open_image(paths[row] if paths else None, blobs[row] if blobs else None)

    return loader, idx[keep_arr] if len(keep_arr) else idx[:0], missing
