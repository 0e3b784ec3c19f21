"""Collision level and code diagnostics on hand examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.rq.collisions import append_collision_level, code_diagnostics

CODES = np.array([[1, 2], [0, 0], [1, 2], [3, 1], [1, 2], [0, 0]])
ITEM_IDX = np.array([5, 0, 2, 7, 1, 9])


def test_collision_rank_follows_item_idx() -> None:
    out = append_collision_level(CODES, order=ITEM_IDX)
    # prefix (1,2): item_idx 1 -> 0, 2 -> 1, 5 -> 2; (0,0): 0 -> 0, 9 -> 1; (3,1): alone
    assert out[:, -1].tolist() == [2, 0, 1, 0, 0, 1]
    assert np.array_equal(out[:, :2], CODES)
    assert len({tuple(r) for r in out.tolist()}) == len(CODES)  # now unique


def test_collision_default_order_is_row_position_and_tensor_in_tensor_out() -> None:
    out = append_collision_level(torch.tensor(CODES))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64
    assert out[:, -1].tolist() == [0, 0, 1, 0, 2, 1]
    # order does not depend on the row layout: shuffling rows keeps each item's code
    perm = np.array([3, 0, 5, 1, 4, 2])
    shuffled = append_collision_level(CODES[perm], order=ITEM_IDX[perm])
    assert np.array_equal(shuffled, append_collision_level(CODES, order=ITEM_IDX)[perm])


def test_collision_edge_cases() -> None:
    assert append_collision_level(np.zeros((0, 3), dtype=np.int64)).shape == (0, 4)
    with pytest.raises(MscgError, match="order has shape"):
        append_collision_level(CODES, order=np.arange(3))
    with pytest.raises(MscgError, match="2-d"):
        append_collision_level(np.arange(4))


def test_diagnostics_hand_example() -> None:
    d = code_diagnostics(CODES, codebook_size=4)
    assert d["num_items"] == 6 and d["levels"] == 2
    assert d["distinct_prefixes"] == 3
    assert d["collision_rate"] == pytest.approx(5 / 6)
    assert d["largest_group"] == 3
    assert d["items_per_prefix"] == {1: 1, 2: 1, 3: 1}
    # level 1 codes 1,0,1,3,1,0: 3 of 4 used; p = (2, 3, 1) / 6
    ent = -sum(p * math.log(p) for p in (2 / 6, 3 / 6, 1 / 6))
    lv1 = d["per_level"][0]
    assert lv1["level"] == 1 and lv1["used_codes"] == 3 and lv1["usage"] == pytest.approx(75.0)
    assert lv1["perplexity"] == pytest.approx(math.exp(ent))


def test_diagnostics_ignore_collision_column_when_told() -> None:
    full = append_collision_level(CODES, order=ITEM_IDX)
    assert code_diagnostics(full, 4, levels=2) == code_diagnostics(CODES, 4)
    # counting the collision column as a level: every tuple unique, no collision
    assert code_diagnostics(full, 4)["collision_rate"] == 0.0


def test_diagnostics_uniform_and_errors() -> None:
    d = code_diagnostics(np.arange(8)[:, None], codebook_size=16)
    assert d["per_level"][0]["perplexity"] == pytest.approx(8.0)
    assert d["per_level"][0]["usage"] == pytest.approx(50.0)
    assert d["collision_rate"] == 0.0 and d["largest_group"] == 1
    with pytest.raises(MscgError, match=r"Code 3 is outside the codebook range \[0, 3\)"):
        code_diagnostics(CODES, codebook_size=3)
    with pytest.raises(MscgError, match="levels=3"):
        code_diagnostics(CODES, 4, levels=3)
