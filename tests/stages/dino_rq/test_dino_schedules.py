"""Schedules of RQ-DINO: cosine momentum, teacher temperature warm-up, lr scaling."""

import math

import pytest

from mscg_lightning.stages.dino_rq.schedules import (
    cosine_schedule,
    scaled_learning_rate,
    teacher_momentum,
    teacher_temperature,
)


def test_teacher_momentum_cosine_from_0992_to_1():
    total = 100
    values = [teacher_momentum(s, total) for s in range(total + 1)]
    assert values[0] == pytest.approx(0.992)
    assert values[-1] == pytest.approx(1.0)
    assert values[50] == pytest.approx(0.996)  # cosine midpoint is the mean
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert teacher_momentum(500, total) == pytest.approx(1.0)  # stays at the end value


def test_cosine_schedule_with_linear_warmup():
    # warm-up from 0 to 1 over 10 steps, then cosine to 0.1 over the remaining 90
    assert cosine_schedule(5, 100, 1.0, 0.1, warmup_steps=10) == pytest.approx(0.5)
    assert cosine_schedule(10, 100, 1.0, 0.1, warmup_steps=10) == pytest.approx(1.0)
    expected = 0.1 + 0.45 * (1 + math.cos(math.pi * 45 / 90))
    assert cosine_schedule(55, 100, 1.0, 0.1, warmup_steps=10) == pytest.approx(expected)


def test_teacher_temperature_warmup_then_constant():
    assert teacher_temperature(0, 30) == pytest.approx(0.04)
    assert teacher_temperature(15, 30) == pytest.approx(0.055)
    assert teacher_temperature(30, 30) == pytest.approx(0.07)
    assert teacher_temperature(1000, 30) == pytest.approx(0.07)
    assert teacher_temperature(0, 0) == pytest.approx(0.07)


def test_sqrt_learning_rate_scaling():
    assert scaled_learning_rate(0.004, 1024) == pytest.approx(0.004)
    assert scaled_learning_rate(0.004, 256) == pytest.approx(0.002)
