"""DINOv2 multi-crop augmentation and the eval transform, with PIL and torch only.

Every random draw goes through one `torch.Generator`, so a seeded generator reproduces the crops
exactly. Outputs are normalised float tensors `[3, S, S]` (ImageNet mean/std).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _rand(generator: torch.Generator | None) -> float:
    return torch.rand((), generator=generator).item()


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * _rand(generator)


def to_normalized_tensor(
    image: Image.Image, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Tensor:
    """RGB PIL image -> float tensor `[3, H, W]`, scaled to [0, 1] then normalised."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    x = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)
    return (x - mean_t) / std_t


def random_resized_crop(
    image: Image.Image,
    size: int,
    scale: tuple[float, float],
    generator: torch.Generator | None,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Image.Image:
    """Crop a random area fraction in `scale` with a log-uniform aspect ratio, resize to `size`.

    Same sampling as torchvision's RandomResizedCrop: ten tries, then a centre crop with the
    aspect ratio clamped to `ratio`. Bicubic resampling, as DINOv2.
    """
    width, height = image.size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    box = None
    for _ in range(10):
        target_area = area * _uniform(*scale, generator)
        aspect = math.exp(_uniform(*log_ratio, generator))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            box = (left, top, left + w, top + h)
            break
    if box is None:  # fallback: the largest centred crop within the allowed aspect ratios
        in_ratio = width / height
        if in_ratio < ratio[0]:
            w, h = width, int(round(width / ratio[0]))
        elif in_ratio > ratio[1]:
            w, h = int(round(height * ratio[1])), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        box = (left, top, left + w, top + h)
    return image.resize((size, size), Image.Resampling.BICUBIC, box=box)


def _adjust_hue(image: Image.Image, shift: float) -> Image.Image:
    """Rotate the hue by `shift` in [-0.5, 0.5] of a full turn (uint8 wrap-around in HSV)."""
    h, s, v = image.convert("HSV").split()
    h_arr = np.asarray(h, dtype=np.uint8).copy()
    h_arr += np.uint8(int(round(shift * 255)) % 256)  # uint8 overflow is the wrap-around
    return Image.merge("HSV", (Image.fromarray(h_arr, "L"), s, v)).convert("RGB")


def color_jitter(
    image: Image.Image,
    generator: torch.Generator | None,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.2,
    hue: float = 0.1,
) -> Image.Image:
    """Brightness, contrast, saturation and hue changes in a random order (torchvision's)."""
    factors = {
        "brightness": _uniform(1 - brightness, 1 + brightness, generator),
        "contrast": _uniform(1 - contrast, 1 + contrast, generator),
        "saturation": _uniform(1 - saturation, 1 + saturation, generator),
        "hue": _uniform(-hue, hue, generator),
    }
    names = list(factors)
    for idx in torch.randperm(4, generator=generator).tolist():
        name = names[idx]
        if name == "brightness":
            image = ImageEnhance.Brightness(image).enhance(factors[name])
        elif name == "contrast":
            image = ImageEnhance.Contrast(image).enhance(factors[name])
        elif name == "saturation":
            image = ImageEnhance.Color(image).enhance(factors[name])
        else:
            image = _adjust_hue(image, factors[name])
    return image


class MultiCropAugmentation:
    """DINOv2's multi-crop: 2 global crops and `n_local` local crops of one image.

    Per crop: random resized crop + horizontal flip (p 0.5), colour jitter (p 0.8), grayscale
    (p 0.2), then Gaussian blur with p 1.0 (first global), 0.1 (second global), 0.5 (local) and
    solarisation (p 0.2, second global only). DINOv2's own GaussianBlur wrapper inverts its
    probability (p=1.0 never blurs); we apply the probabilities as documented in its paper.

    The blur's sigma range (DINOv2: 0.1-2.0 px) is meant for 224-px global crops; it is scaled
    by `global_size / 224`, so that a 32-px crop of a 32-px image is blurred as much, relative
    to its content, as a 224-px crop is. (Unscaled, sigma 2 px on a 32-px image leaves a
    featureless smudge that no view can be matched to.)

    Args:
        global_size: side of a global crop in pixels (224).
        local_size: side of a local crop (98 = 7 patches of 14, the paper's setting).
        n_local: local crops per image (paper: 4; DINOv2: 8).
        global_scale: area fraction range of global crops.
        local_scale: area fraction range of local crops.
        blur_p: blur probabilities of (first global, second global, local) crops.
        solarize_p: solarisation probability of the second global crop.
        jitter_p: colour-jitter probability of every crop.
        grayscale_p: grayscale probability of every crop.
        blur_sigma: sigma range of the blur in pixels at a 224-px global crop size.
    """

    def __init__(
        self,
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
    ) -> None:
        self.global_size = global_size
        self.local_size = local_size
        self.n_local = n_local
        self.global_scale = tuple(global_scale)
        self.local_scale = tuple(local_scale)
        self.blur_p = tuple(blur_p)
        self.solarize_p = solarize_p
        self.jitter_p, self.grayscale_p = jitter_p, grayscale_p
        factor = global_size / 224
        self.blur_sigma = (blur_sigma[0] * factor, blur_sigma[1] * factor)

    def _view(
        self,
        image: Image.Image,
        size: int,
        scale: tuple[float, float],
        blur_p: float,
        solarize_p: float,
        generator: torch.Generator | None,
    ) -> Tensor:
        view = random_resized_crop(image, size, scale, generator)
        if _rand(generator) < 0.5:
            view = ImageOps.mirror(view)
        if _rand(generator) < self.jitter_p:
            view = color_jitter(view, generator)
        if _rand(generator) < self.grayscale_p:
            view = view.convert("L").convert("RGB")
        if _rand(generator) < blur_p:
            view = view.filter(
                ImageFilter.GaussianBlur(radius=_uniform(*self.blur_sigma, generator))
            )
        if _rand(generator) < solarize_p:
            view = ImageOps.solarize(view, threshold=128)
        return to_normalized_tensor(view)

    def __call__(
        self, image: Image.Image, generator: torch.Generator | None = None
    ) -> dict[str, list[Tensor]]:
        """Return `{"global_crops": 2 x [3, Sg, Sg], "local_crops": n_local x [3, Sl, Sl]}`."""
        image = image.convert("RGB")
        g, gs = self.global_size, self.global_scale
        blur_1, blur_2, blur_local = self.blur_p
        global_crops = [
            self._view(image, g, gs, blur_p=blur_1, solarize_p=0.0, generator=generator),
            self._view(image, g, gs, blur_2, solarize_p=self.solarize_p, generator=generator),
        ]
        local_crops = [
            self._view(image, self.local_size, self.local_scale, blur_local, 0.0, generator)
            for _ in range(self.n_local)
        ]
        return {"global_crops": global_crops, "local_crops": local_crops}


class EvalTransform:
    """Resize the shorter side to `size * resize_ratio` (bicubic), centre-crop `size`, normalise.

    Args:
        size: output side in pixels.
        resize_ratio: 256/224 as in the usual ImageNet evaluation.
    """

    def __init__(self, size: int = 224, resize_ratio: float = 256 / 224) -> None:
        self.size = size
        self.resize = int(round(size * resize_ratio))

    def __call__(self, image: Image.Image) -> Tensor:
        """PIL image -> `[3, size, size]` normalised tensor."""
        image = image.convert("RGB")
        width, height = image.size
        scale = self.resize / min(width, height)
        new_w, new_h = max(self.size, round(width * scale)), max(self.size, round(height * scale))
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = (new_w - self.size) // 2, (new_h - self.size) // 2
        image = image.crop((left, top, left + self.size, top + self.size))
        return to_normalized_tensor(image)


def collate_multicrop(
    samples: Sequence[dict[str, list[Tensor]]],
    mask_sampler: Callable[[int], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Stack per-image crops into the batch layout of `RQDino.training_losses`.

    Args:
        samples: outputs of `MultiCropAugmentation`, one per image (B of them).
        mask_sampler: e.g. `IBOTMaskSampler`; called with `G * B`, returns `[G * B, P]` masks.

    Returns:
        `global_crops` `[G, B, 3, Sg, Sg]`, `local_crops` `[Lc, B, 3, Sl, Sl]` (absent when
        there are no local crops) and `masks` `[G, B, P]` bool when a sampler is given.
    """
    n_global = len(samples[0]["global_crops"])
    n_local = len(samples[0]["local_crops"])
    global_crops = torch.stack(
        [torch.stack([s["global_crops"][i] for s in samples]) for i in range(n_global)]
    )
    batch = {"global_crops": global_crops}
    if n_local > 0:
        batch["local_crops"] = torch.stack(
            [torch.stack([s["local_crops"][i] for s in samples]) for i in range(n_local)]
        )
    if mask_sampler is not None:
        n_images = n_global * len(samples)
        batch["masks"] = mask_sampler(n_images).view(n_global, len(samples), -1)
    return batch
