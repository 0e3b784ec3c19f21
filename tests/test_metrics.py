import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mscg_lightning.metrics import RetrievalMetrics, bootstrap_ci, format_table, target_ranks


def test_hand_computed_example():
    # user 0: target at rank 0; user 1: rank 2; user 2: rank 6; user 3: absent.
    ranked = torch.tensor(
        [
            [5, 1, 2, 3, 4, 6, 7, 8, 9, 10],
            [1, 2, 5, 3, 4, 6, 7, 8, 9, 10],
            [1, 2, 3, 4, 6, 7, 5, 8, 9, 10],
            [1, 2, 3, 4, 6, 7, 8, 9, 10, 11],
        ]
    )
    target = torch.tensor([5, 5, 5, 5])
    metric = RetrievalMetrics(ks=(1, 5, 10))
    metric.update(ranked, target, torch.arange(4))
    out = {k: v.item() for k, v in metric.compute().items()}
    assert out["recall@1"] == pytest.approx(1 / 4)
    assert out["recall@5"] == pytest.approx(2 / 4)
    assert out["recall@10"] == pytest.approx(3 / 4)
    assert out["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert out["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(8)) / 4)
    assert out["mrr@10"] == pytest.approx((1 + 1 / 3 + 1 / 7) / 4)
    assert out["mrr@1"] == pytest.approx(1 / 4)


def test_duplicate_hits_count_once():
    # The target appears twice: only the first position counts (no NDCG above 1).
    ranked = torch.tensor([[3, 3, 1, 2, 4, 5, 6, 7, 8, 9]])
    assert target_ranks(ranked, torch.tensor([3])).tolist() == [0]
    metric = RetrievalMetrics()
    metric.update(ranked, torch.tensor([3]), torch.tensor([0]))
    assert metric.compute()["ndcg@10"].item() == pytest.approx(1.0)


def test_repeated_users_are_counted_once():
    metric = RetrievalMetrics(ks=(1,))
    hit = torch.tensor([[1, 2]])
    miss = torch.tensor([[2, 1]])
    metric.update(hit, torch.tensor([1]), torch.tensor([7]))
    metric.update(miss, torch.tensor([1]), torch.tensor([8]))
    metric.update(hit, torch.tensor([1]), torch.tensor([7]))  # a padding sampler repeated user 7
    assert metric.compute()["recall@1"].item() == pytest.approx(0.5)


def test_too_short_ranked_lists_are_refused():
    with pytest.raises(ValueError, match="fewer than k=10"):
        RetrievalMetrics().update(
            torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, dtype=torch.long)
        )


def test_bootstrap_ci_brackets_the_mean_and_shrinks_with_n():
    gen = torch.Generator().manual_seed(0)
    small = (torch.rand(200, generator=gen) < 0.3).double()
    large = (torch.rand(20000, generator=gen) < 0.3).double()
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean().item() < hi_s
    assert lo_l < large.mean().item() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5
    # the normal approximation of a proportion's CI half-width, within 20%
    half = 1.96 * math.sqrt(0.3 * 0.7 / 20000)
    assert (hi_l - lo_l) / 2 == pytest.approx(half, rel=0.2)


def test_compute_with_ci_and_table():
    metric = RetrievalMetrics(ks=(1, 5, 10))
    gen = torch.Generator().manual_seed(1)
    ranked = torch.stack([torch.randperm(20, generator=gen)[:10] for _ in range(50)])
    target = torch.randint(20, (50,), generator=gen)
    metric.update(ranked, target, torch.arange(50))
    res = metric.compute_with_ci(num_samples=200)
    assert res["num_users"]["mean"] == 50
    for name in ("recall@10", "ndcg@5", "mrr@1"):
        assert res[name]["ci_low"] <= res[name]["mean"] <= res[name]["ci_high"]
    table = format_table({"m": res})
    assert "| m | 50 |" in table and "recall@10" in table


def _random_batch(seed: int, n: int = 101):
    gen = torch.Generator().manual_seed(seed)
    ranked = torch.stack([torch.randperm(30, generator=gen)[:10] for _ in range(n)])
    target = torch.randint(30, (n,), generator=gen)
    return ranked, target, torch.arange(n)


def _ddp_worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ranked, target, users = _random_batch(0)
    # uneven split: rank 0 gets 51 users, rank 1 gets 50, and rank 1 repeats one user of
    # rank 0's part as a padding sampler would
    part = slice(0, 51) if rank == 0 else slice(51, 101)
    metric = RetrievalMetrics()
    metric.update(ranked[part], target[part], users[part])
    if rank == 1:
        metric.update(ranked[:1], target[:1], users[:1])
    result = {k: v.item() for k, v in metric.compute().items()}
    if rank == 0:
        queue.put(result)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_equals_single_process():
    ranked, target, users = _random_batch(0)
    single = RetrievalMetrics()
    single.update(ranked, target, users)
    expected = {k: v.item() for k, v in single.compute().items()}
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.spawn(_ddp_worker, args=(2, _free_port(), queue), nprocs=2, join=True)
    got = queue.get(timeout=30)
    assert got == pytest.approx(expected, abs=1e-12)
