"""iBOT block masking: budgets, ratio range, share of masked images, determinism."""

import torch

from mscg_lightning.stages.dino_rq.masking import BlockMaskGenerator, IBOTMaskSampler


def test_block_mask_never_exceeds_budget_and_nearly_reaches_it():
    gen = torch.Generator().manual_seed(0)
    blocks = BlockMaskGenerator(14)
    for n in (0, 1, 5, 20, 50, 98):
        mask = blocks(n, gen)
        assert mask.shape == (14, 14) and mask.dtype == torch.bool
        assert n - blocks.min_block <= int(mask.sum()) <= n


def test_block_mask_is_made_of_rectangles_not_scattered_pixels():
    # A single block of area <= budget: its bounding box is exactly filled.
    gen = torch.Generator().manual_seed(1)
    blocks = BlockMaskGenerator(16)
    mask = torch.zeros(16, 16, dtype=torch.bool)
    added = blocks._add_block(mask, 30, gen)
    rows, cols = mask.nonzero(as_tuple=True)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert added == int(mask.sum()) == int(box)


def test_sampler_masks_half_the_images_within_the_ratio_range():
    gen = torch.Generator().manual_seed(2)
    sampler = IBOTMaskSampler(16, ratio=(0.1, 0.5), probability=0.5)
    n_patches = 256
    for n_images in (2, 7, 32):
        masks = sampler(n_images, gen)
        assert masks.shape == (n_images, n_patches)
        counts = masks.sum(1)
        masked = counts[counts > 0]
        assert len(masked) == int(n_images * 0.5)
        ratios = masked.float() / n_patches
        # stop-short tolerance of one minimal block
        assert bool((ratios >= 0.1 - 4 / n_patches).all())
        assert bool((ratios <= 0.5).all())
    # stratified ratios: a large batch covers the whole range
    ratios = sampler(64, gen).sum(1).float() / n_patches
    ratios = ratios[ratios > 0]
    assert ratios.min() < 0.15 and ratios.max() > 0.45


def test_sampler_is_deterministic_with_a_seeded_generator():
    sampler = IBOTMaskSampler(8)
    a = sampler(10, torch.Generator().manual_seed(3))
    b = sampler(10, torch.Generator().manual_seed(3))
    c = sampler(10, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
