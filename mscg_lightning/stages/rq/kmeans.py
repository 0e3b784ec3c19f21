"""k-means and nearest-codeword search shared by every quantizer (pure torch).

Distributed: when a process group is initialised, k-means statistics are summed over ranks and
random choices (seeds, re-seeded empty clusters) are broadcast from rank 0, so every rank gets
the same centroids. A single process needs no process group.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mscg_lightning.artifacts import is_distributed


def all_reduce_sum(t: Tensor) -> Tensor:
    """``t`` summed over ranks in place (unchanged in a single process)."""
    if is_distributed():
        torch.distributed.all_reduce(t)
    return t


def broadcast_from_rank0(t: Tensor) -> Tensor:
    """``t`` overwritten in place with rank 0's value (unchanged in a single process)."""
    if is_distributed():
        torch.distributed.broadcast(t, src=0)
    return t


def random_rows(x: Tensor, n: int) -> Tensor:
    """``n`` rows of ``x`` [N, D] drawn with the global CPU RNG (seeded by the caller).

    Without replacement when possible; CPU RNG so that results do not depend on the device.
    """
    if x.shape[0] >= n:
        idx = torch.randperm(x.shape[0])[:n]
    else:
        idx = torch.randint(x.shape[0], (n,))
    return x[idx.to(x.device)]


def nearest_code(x: Tensor, codebook: Tensor, chunk: int = 16384) -> Tensor:
    """Index of the nearest codeword in squared Euclidean distance.

    x [N, D], codebook [K, D] -> [N] int64. Rows are processed in chunks so that the
    [chunk, K] distance matrix stays small for large tables.
    """
    c_sq = codebook.pow(2).sum(1)
    out = [
        # ||x||^2 is the same for every codeword of a row, so it is left out of the argmin.
        (c_sq[None, :] - 2.0 * x[s : s + chunk] @ codebook.T).argmin(1)
        for s in range(0, x.shape[0], chunk)
    ]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


def kmeans_plus_plus(x: Tensor, k: int) -> Tensor:
    """k-means++ seeds: each next seed is a row drawn with probability ~ squared distance to
    the nearest seed so far. x [N, D] -> [K, D]. Random seeds often put two centroids in one
    cluster and none in another, which Lloyd iterations do not repair.

    Draws use the global CPU RNG. Once every distinct row is a seed (fewer than ``k``
    distinct rows), the remaining seeds repeat random rows.
    """
    x_sq = x.pow(2).sum(1)

    def sq_dist_to(i: int) -> Tensor:  # [N]; a matrix-vector product, cheaper than (x - c)^2
        return (x_sq - 2.0 * (x @ x[i]) + x_sq[i]).clamp(min=0)

    chosen = [int(torch.randint(x.shape[0], ()))]
    d2 = sq_dist_to(chosen[0])
    for _ in range(1, k):
        cum = d2.double().cumsum(0)
        if float(cum[-1]) > 0:
            # inverse-CDF draw: rows at distance 0 (already seeds) have zero width
            u = torch.rand((), dtype=torch.float64) * cum[-1].cpu()
            idx = min(int(torch.searchsorted(cum, u.to(cum.device), right=True)), len(cum) - 1)
        else:
            idx = int(torch.randint(x.shape[0], ()))
        chosen.append(idx)
        d2 = torch.minimum(d2, sq_dist_to(idx))
    return x[torch.tensor(chosen, device=x.device)]


def kmeans(x: Tensor, k: int, iters: int) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means from k-means++ seeds; statistics summed over ranks under DDP.

    x [N, D] float32 -> (centroids [K, D], share of points per centroid [K], summing to 1).
    ``iters=0`` returns the seeds. Seeds come from rank 0's rows (broadcast). With fewer than
    ``k`` distinct rows some seeds repeat; a repeat wins no point (ties go to the lowest
    index) and is later restarted as a dead code. Clusters that empty during the iterations
    are re-seeded with random rows.
    """
    centroids = broadcast_from_rank0(kmeans_plus_plus(x, k).contiguous())
    for _ in range(iters):
        assign = nearest_code(x, centroids)
        sums = all_reduce_sum(torch.zeros_like(centroids).index_add_(0, assign, x))
        counts = all_reduce_sum(torch.bincount(assign, minlength=k).to(x.dtype))
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
        if bool(empty.any()):
            centroids[empty] = random_rows(x, int(empty.sum()))
            broadcast_from_rank0(centroids)
    counts = all_reduce_sum(torch.bincount(nearest_code(x, centroids), minlength=k).to(x.dtype))
    return centroids, counts / counts.sum().clamp(min=1)
