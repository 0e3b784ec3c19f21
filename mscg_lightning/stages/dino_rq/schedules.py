"""Step-indexed schedules of RQ-DINO training (DINOv2 defaults).

All functions are pure: they map a global optimiser step to a float, so the Lightning glue only
has to call them with `trainer.global_step` and `trainer.estimated_stepping_batches`.
"""

from __future__ import annotations

import math


def cosine_schedule(
    step: int,
    total_steps: int,
    start: float,
    end: float,
    warmup_steps: int = 0,
    warmup_start: float = 0.0,
) -> float:
    """Linear warm-up from `warmup_start` to `start`, then a half cosine from `start` to `end`.

    After `total_steps` the value stays at `end`. DINOv2 uses it for the learning rate, the weight
    decay (0.04 -> 0.4) and the teacher momentum (0.992 -> 1.0).
    """
    if step < warmup_steps:
        return warmup_start + (start - warmup_start) * step / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def teacher_momentum(step: int, total_steps: int, base: float = 0.992, final: float = 1.0) -> float:
    """EMA momentum of the teacher at `step`: cosine from `base` to `final` over the whole run."""
    return cosine_schedule(step, total_steps, base, final)


def teacher_temperature(
    step: int, warmup_steps: int, warmup_temp: float = 0.04, temp: float = 0.07
) -> float:
    """Teacher softmax temperature: linear from `warmup_temp` to `temp`, then constant.

    DINOv2 warms up over 30 epochs; the paper trains 30 epochs, so by default the warm-up spans
    the whole run.
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return temp
    return warmup_temp + (temp - warmup_temp) * step / warmup_steps


def scaled_learning_rate(base_lr: float, global_batch_size: int) -> float:
    """DINOv2's `sqrt_wrt_1024` rule: `base_lr` is the rate for a global batch of 1024 images."""
    return base_lr * math.sqrt(global_batch_size / 1024)
