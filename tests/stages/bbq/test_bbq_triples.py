"""Triple tokens: mixed-radix join/split, compact vocabulary, collision report."""

import numpy as np
import torch

from mscg_lightning.stages.bbq.triples import (
    collision_rate,
    collision_report,
    compact_vocabulary,
    join_triples,
    split_triples,
)


def test_join_split_round_trip_and_order():
    codes = torch.tensor([[[1, 0], [2, 3], [0, 1]]])  # [N=1, S=3, L=2], K = 4
    tokens = join_triples(codes, 4)
    assert tokens.tolist() == [[1 * 16 + 2 * 4 + 0, 0 * 16 + 3 * 4 + 1]]
    g = torch.Generator().manual_seed(0)
    many = torch.randint(0, 7, (50, 3, 4), generator=g)
    assert torch.equal(split_triples(join_triples(many, 7), 7, 3), many)


def test_compact_vocabulary_indexes_the_occurring_triples():
    tokens = torch.tensor([[900, 5], [12, 5], [900, 7]])
    dense, vocab = compact_vocabulary(tokens)
    assert dense.tolist() == [[1, 0], [0, 0], [1, 1]]
    for level in range(2):
        assert torch.equal(vocab[level][dense[:, level]], tokens[:, level])


def test_collision_report_against_brute_force():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, size=(40, 3, 2))
    report = collision_report(codes, ["id", "text", "image"])

    def brute(rows):
        keys = [tuple(r) for r in rows.reshape(len(rows), -1)]
        return sum(keys.count(k) > 1 for k in keys) / len(keys)

    assert report["text"] == brute(codes[:, 1])
    assert report["triple"] == brute(codes)
    assert report["triple"] <= min(report["id"], report["text"], report["image"])
    assert collision_rate(np.zeros((0, 2))) == 0.0
