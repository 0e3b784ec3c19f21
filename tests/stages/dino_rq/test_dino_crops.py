"""Multi-crop augmentation, eval transform and collation (PIL + torch only)."""

import numpy as np
import pytest
import torch
from PIL import Image

from mscg_lightning.stages.dino_rq.crops import (
    IMAGENET_MEAN,
    EvalTransform,
    MultiCropAugmentation,
    collate_multicrop,
    random_resized_crop,
    to_normalized_tensor,
)
from mscg_lightning.stages.dino_rq.masking import IBOTMaskSampler


def _image(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_crop_sizes_and_counts():
    aug = MultiCropAugmentation(global_size=32, local_size=16, n_local=3)
    out = aug(_image(0), torch.Generator().manual_seed(0))
    assert [t.shape for t in out["global_crops"]] == [(3, 32, 32)] * 2
    assert [t.shape for t in out["local_crops"]] == [(3, 16, 16)] * 3
    assert all(t.dtype == torch.float32 for t in out["global_crops"] + out["local_crops"])


def test_default_sizes_are_the_papers_224_and_98():
    out = MultiCropAugmentation()(_image(1, (300, 200)), torch.Generator().manual_seed(1))
    assert [t.shape for t in out["global_crops"]] == [(3, 224, 224)] * 2
    assert [t.shape for t in out["local_crops"]] == [(3, 98, 98)] * 4


def test_fixed_seed_gives_identical_crops_and_another_seed_differs():
    aug = MultiCropAugmentation(global_size=32, local_size=16, n_local=2)
    image = _image(2)
    a = aug(image, torch.Generator().manual_seed(7))
    b = aug(image, torch.Generator().manual_seed(7))
    c = aug(image, torch.Generator().manual_seed(8))
    for key in ("global_crops", "local_crops"):
        assert all(torch.equal(x, y) for x, y in zip(a[key], b[key], strict=True))
    assert not torch.equal(a["global_crops"][0], c["global_crops"][0])
    # the two global crops of one image are different views
    assert not torch.equal(a["global_crops"][0], a["global_crops"][1])


def test_random_resized_crop_of_the_full_area_is_a_plain_resize():
    image = _image(3, (20, 20))
    crop = random_resized_crop(image, 12, (1.0, 1.0), torch.Generator(), ratio=(1.0, 1.0))
    assert np.array_equal(np.asarray(crop), np.asarray(image.resize((12, 12), Image.BICUBIC)))


def test_crop_area_follows_the_scale_range():
    # red encodes x, green encodes y: the value ranges of a crop give its box in the image
    xs, ys = np.meshgrid(np.arange(64) * 4, np.arange(64) * 4)
    array = np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    image = Image.fromarray(array)
    gen = torch.Generator().manual_seed(4)

    def area_fraction(crop: Image.Image) -> float:
        c = np.asarray(crop).astype(float)
        width = (c[..., 0].max() - c[..., 0].min()) / 4 + 1
        height = (c[..., 1].max() - c[..., 1].min()) / 4 + 1
        return width * height / 64**2

    local = [area_fraction(random_resized_crop(image, 16, (0.05, 0.32), gen)) for _ in range(20)]
    glob = [area_fraction(random_resized_crop(image, 32, (0.32, 1.0), gen)) for _ in range(20)]
    assert 0.04 <= min(local) and max(local) <= 0.34
    assert 0.28 <= min(glob) and max(glob) <= 1.0
    assert max(local) < 0.5 * max(glob)


def test_normalisation_uses_imagenet_statistics():
    colour = tuple(int(round(m * 255)) for m in IMAGENET_MEAN)
    x = to_normalized_tensor(Image.new("RGB", (4, 4), colour))
    assert x.shape == (3, 4, 4)
    assert x.abs().max().item() < 0.01


def test_eval_transform_resizes_and_centre_crops():
    transform = EvalTransform(32)
    x = transform(_image(5, (80, 40)))
    assert x.shape == (3, 32, 32)
    assert torch.equal(x, transform(_image(5, (80, 40))))  # no randomness
    # a left/right split image: the centre crop of the wide image sees both halves equally
    array = np.zeros((40, 80, 3), dtype=np.uint8)
    array[:, 40:] = 255
    x = EvalTransform(32)(Image.fromarray(array))
    assert x[0, :, :14].max() < 0 < x[0, :, 18:].min()


def test_collate_builds_crop_major_batches_with_masks():
    aug = MultiCropAugmentation(global_size=32, local_size=16, n_local=2)
    gen = torch.Generator().manual_seed(6)
    samples = [aug(_image(i), gen) for i in range(3)]
    batch = collate_multicrop(samples, IBOTMaskSampler(4))
    assert batch["global_crops"].shape == (2, 3, 3, 32, 32)
    assert batch["local_crops"].shape == (2, 3, 3, 16, 16)
    assert batch["masks"].shape == (2, 3, 16) and batch["masks"].dtype == torch.bool
    assert torch.equal(batch["global_crops"][1, 2], samples[2]["global_crops"][1])
    assert torch.equal(batch["local_crops"][0, 1], samples[1]["local_crops"][0])
    no_local = collate_multicrop(
        [{"global_crops": s["global_crops"], "local_crops": []} for s in samples]
    )
    assert "local_crops" not in no_local and "masks" not in no_local


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_non_rgb_images_are_converted(mode):
    image = _image(7).convert(mode)
    out = MultiCropAugmentation(32, 16, 1)(image, torch.Generator().manual_seed(0))
    assert out["global_crops"][0].shape == (3, 32, 32)


def _unflipped(crop: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The crop or its mirror image, whichever is closer to ``reference`` (flip is random)."""
    mirrored = crop.flip(-1)
    return (
        crop if (crop - reference).abs().sum() <= (mirrored - reference).abs().sum() else mirrored
    )


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def test_photometric_options_off_give_the_plain_resized_image():
    image = _image(8, (32, 32))
    aug = MultiCropAugmentation(
        32,
        16,
        1,
        global_scale=(1.0, 1.0),
        blur_p=(0, 0, 0),
        solarize_p=0.0,
        jitter_p=0.0,
        grayscale_p=0.0,
    )
    reference = to_normalized_tensor(image)
    for seed in range(4):
        out = aug(image, torch.Generator().manual_seed(seed))
        for crop in out["global_crops"]:  # 32 px of a 32-px image at scale 1: unchanged pixels
            assert torch.allclose(_unflipped(crop, reference), reference, atol=1e-6)


def test_blur_sigma_scales_with_the_global_crop_size():
    """DINOv2's sigma 0.1-2 px is meant for 224-px crops; at 32 px it must shrink by 32/224."""
    assert MultiCropAugmentation(224).blur_sigma == (0.1, 2.0)
    assert MultiCropAugmentation(32).blur_sigma == pytest.approx((0.1 / 7, 2.0 / 7))
    image = _image(9, (32, 32))  # pixel noise: any blur lowers the correlation with the input
    reference = to_normalized_tensor(image)

    def first_crop_correlation(blur_sigma: tuple[float, float]) -> float:
        aug = MultiCropAugmentation(
            32,
            16,
            0,
            global_scale=(1.0, 1.0),
            blur_p=(1.0, 0, 0),
            jitter_p=0.0,
            grayscale_p=0.0,
            blur_sigma=blur_sigma,
        )
        crop = aug(image, torch.Generator().manual_seed(0))["global_crops"][0]
        return _correlation(_unflipped(crop, reference), reference)

    assert first_crop_correlation((2.0, 2.0)) > 0.9  # 2 px at 224 = 0.29 px at 32: mild
    assert first_crop_correlation((14.0, 14.0)) < 0.5  # 2 px on a 32-px image: a smudge
