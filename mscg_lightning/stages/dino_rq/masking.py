"""iBOT block masking of patch grids (BEiT-style rectangles), driven by a torch generator."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in `[low, high]` (both inclusive)."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())


class BlockMaskGenerator:
    """Masks roughly `n` patches of an `H x W` grid as a union of random rectangles.

    Each rectangle has an area drawn in `[min_block, remaining budget]` and a log-uniform aspect
    ratio in `[min_aspect, 1 / min_aspect]`; only rectangles that add at most the remaining
    budget are accepted, so a mask never exceeds `n` patches. It may stop a few patches short
    when ten tries in a row add nothing.

    Args:
        grid_size: `H` (square grid) or `(H, W)` in patches.
        min_block: smallest rectangle area tried, in patches.
        max_block: largest area of one rectangle (None: no limit beyond the budget).
        min_aspect: smallest aspect ratio of a rectangle.
    """

    def __init__(
        self,
        grid_size: int | tuple[int, int],
        min_block: int = 4,
        max_block: int | None = None,
        min_aspect: float = 0.3,
    ) -> None:
        self.height, self.width = (
            (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
        )
        self.num_patches = self.height * self.width
        self.min_block = min_block
        self.max_block = max_block if max_block is not None else self.num_patches
        self.log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))

    def _add_block(self, mask: Tensor, budget: int, generator: torch.Generator | None) -> int:
        for _ in range(10):
            area = _uniform(self.min_block, budget, generator)
            aspect = math.exp(_uniform(*self.log_aspect, generator))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            # strictly smaller than the grid: never mask a whole row or column span
            if 0 < h < self.height and 0 < w < self.width:
                top = _randint(0, self.height - h, generator)
                left = _randint(0, self.width - w, generator)
                region = mask[top : top + h, left : left + w]
                added = int((~region).sum())
                if 0 < added <= budget:
                    region.fill_(True)
                    return added
        return 0

    def __call__(self, n_masked: int, generator: torch.Generator | None = None) -> Tensor:
        """Return a bool mask `[H, W]` with at most `n_masked` True patches."""
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        count = 0
        while count < n_masked:
            budget = min(n_masked - count, self.max_block)
            added = self._add_block(mask, budget, generator)
            if added == 0:
                break
            count += added
        return mask


class IBOTMaskSampler:
    """Masks for a batch of global crops as in DINOv2's collate function.

    A fraction `probability` of the images is masked; their target ratios are stratified over
    `ratio` (image i draws from the i-th of equal sub-intervals) so that one batch covers the
    whole range, and the masked images are placed at random positions.

    Args:
        grid_size: patch grid of a global crop (`crop_size // patch_size`).
        ratio: (min, max) fraction of the patches masked in a masked image.
        probability: fraction of the images that are masked.
    """

    def __init__(
        self,
        grid_size: int | tuple[int, int],
        ratio: tuple[float, float] = (0.1, 0.5),
        probability: float = 0.5,
    ) -> None:
        self.blocks = BlockMaskGenerator(grid_size)
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.probability = probability

    def __call__(self, n_images: int, generator: torch.Generator | None = None) -> Tensor:
        """Return bool masks `[n_images, H * W]`; `int(n_images * probability)` rows are masked."""
        n_masked_images = int(n_images * self.probability)
        edges = torch.linspace(self.ratio[0], self.ratio[1], n_masked_images + 1).tolist()
        n = self.blocks.num_patches
        masks = [
            self.blocks(int(n * _uniform(edges[i], edges[i + 1], generator)), generator).flatten()
            for i in range(n_masked_images)
        ]
        masks += [torch.zeros(n, dtype=torch.bool)] * (n_images - n_masked_images)
        order = torch.randperm(n_images, generator=generator)
        return torch.stack(masks)[order]
