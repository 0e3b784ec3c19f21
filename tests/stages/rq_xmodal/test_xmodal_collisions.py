"""Reassignment of colliding codes by last-level distance (MQL4GRec's rule)."""

import torch

from mscg_lightning.stages.rq_xmodal.collisions import reassign_by_distance


def test_closest_item_keeps_code_and_others_take_nearest_free_code():
    codes = torch.tensor([[0, 1], [0, 1], [0, 1], [1, 2], [0, 2]])
    dist = torch.tensor(
        [
            [9.0, 0.5, 1.0, 3.0],  # farther from code 1 than row 1
            [9.0, 0.1, 0.2, 0.3],  # closest: keeps (0, 1)
            [0.4, 2.0, 0.3, 5.0],  # nearest code 2 is taken by row 4 -> code 0
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    out = reassign_by_distance(codes, dist)
    assert out.tolist() == [[0, 3], [0, 1], [0, 0], [1, 2], [0, 2]]
    assert len(set(map(tuple, out.tolist()))) == 5


def test_full_prefix_leaves_duplicates_and_unique_input_is_unchanged():
    codes = torch.tensor([[0, 0], [0, 0], [0, 1]])
    dist = torch.rand(3, 2)
    out = reassign_by_distance(codes, dist)
    assert sorted(map(tuple, out.tolist())) == [(0, 0), (0, 0), (0, 1)]
    unique = torch.tensor([[0, 0], [1, 1]])
    assert torch.equal(reassign_by_distance(unique, torch.rand(2, 2)), unique)
