"""Full-ranking retrieval metrics (Recall, NDCG, MRR at K) as a DDP-correct torchmetrics Metric.

Leave-one-out evaluation has exactly one relevant item per user, so each user contributes the
rank of its target in the ranked list (or a miss). A target that appears several times in a
ranked list counts once, at its first position (the duplicate-hit NDCG bug of some research code
counts it again). Per-user ranks are kept (``cat`` state), so the metric is exact under DDP, users
counted twice by a padding sampler are removed by ``user_idx``, and bootstrap confidence
intervals over users come for free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

METRIC_NAMES = ("recall", "ndcg", "mrr")


def target_ranks(ranked: Tensor, target: Tensor) -> Tensor:
    """0-based position of the first occurrence of ``target`` in each ranked list, -1 if absent.

    ranked: [B, K] item ids (entries < 0 are padding); target: [B]. Returns [B] int64.
    """
    hits = ranked == target.unsqueeze(1)
    first = hits.float().argmax(dim=1)  # argmax returns the first maximum
    return torch.where(hits.any(dim=1), first, torch.full_like(first, -1)).long()


def per_user_metrics(ranks: Tensor, ks: Sequence[int]) -> dict[str, Tensor]:
    """Per-user Recall/NDCG/MRR@k from 0-based target ranks [N] (-1 = miss). Each value is [N]."""
    hit_rank = ranks.double()
    out: dict[str, Tensor] = {}
    for k in ks:
        hit = (ranks >= 0) & (ranks < k)
        out[f"recall@{k}"] = hit.double()
        out[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(hit_rank + 2.0), 0.0)
        out[f"mrr@{k}"] = torch.where(hit, 1.0 / (hit_rank + 1.0), 0.0)
    return out


def bootstrap_ci(
    values: Tensor, num_samples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` [N] over users."""
    n = values.numel()
    if n == 0:
        return (math.nan, math.nan)
    gen = torch.Generator().manual_seed(seed)
    values = values.double().cpu()
    means = torch.empty(num_samples, dtype=torch.float64)
    # Resample in chunks to bound memory on large test sets.
    chunk = max(1, 2_000_000 // n)
    for start in range(0, num_samples, chunk):
        stop = min(num_samples, start + chunk)
        idx = torch.randint(n, (stop - start, n), generator=gen)
        means[start:stop] = values[idx].mean(dim=1)
    alpha = (1.0 - level) / 2.0
    low, high = torch.quantile(means, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64))
    return (low.item(), high.item())


class RetrievalMetrics(Metric):
    """Recall/NDCG/MRR at each k of ``ks`` for leave-one-out full ranking.

    ``update(ranked [B, K], target [B], user_idx [B])`` with ranked item ids, best first, K >=
    max(ks). ``compute()`` returns ``{"recall@10": ..., "ndcg@10": ..., "mrr@10": ...}`` means
    over unique users.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, ks: Sequence[int] = (1, 5, 10), **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks = tuple(int(k) for k in ks)
        self.add_state("ranks", default=[], dist_reduce_fx="cat")
        self.add_state("user_idx", default=[], dist_reduce_fx="cat")

    def update(self, ranked: Tensor, target: Tensor, user_idx: Tensor | None = None) -> None:
        if ranked.shape[1] < max(self.ks):
            raise ValueError(
                f"ranked lists have {ranked.shape[1]} items, fewer than k={max(self.ks)}"
            )
        self.ranks.append(target_ranks(ranked, target))
        if user_idx is None:
            user_idx = torch.full_like(target, -1)
        self.user_idx.append(user_idx.long())

    def _unique_ranks(self) -> Tensor:
        # A list before a DDP sync, one concatenated tensor after it.
        if isinstance(self.ranks, list) and not self.ranks:
            return torch.zeros(0, dtype=torch.long)
        ranks = dim_zero_cat(self.ranks)
        users = dim_zero_cat(self.user_idx)
        known = users >= 0
        if known.any():
            # Keep one row per user: padding samplers under DDP repeat some users.
            order = torch.argsort(users, stable=True)
            u, r = users[order], ranks[order]
            first = torch.ones_like(u, dtype=torch.bool)
            first[1:] = u[1:] != u[:-1]
            keep = first | (u < 0)
            return r[keep]
        return ranks

    def user_ranks(self) -> tuple[Tensor, Tensor]:
        """(user_idx [N], 0-based target rank [N], -1 = not in the list) per unique user, by user.

        Over the ranks of every process (call it on every rank under DDP). Every metric of
        :func:`per_user_metrics` at k <= the ranked list length follows from these ranks.
        """
        with self.sync_context():
            if isinstance(self.ranks, list) and not self.ranks:
                empty = torch.zeros(0, dtype=torch.long)
                return empty, empty
            ranks = dim_zero_cat(self.ranks).long().cpu()
            users = dim_zero_cat(self.user_idx).long().cpu()
        order = torch.argsort(users, stable=True)
        users, ranks = users[order], ranks[order]
        first = torch.ones_like(users, dtype=torch.bool)
        first[1:] = users[1:] != users[:-1]
        keep = first | (users < 0)
        return users[keep], ranks[keep]

    def compute(self) -> dict[str, Tensor]:
        per_user = per_user_metrics(self._unique_ranks(), self.ks)
        return {
            name: v.mean() if v.numel() else torch.tensor(math.nan) for name, v in per_user.items()
        }

    def compute_with_ci(
        self, num_samples: int = 1000, seed: int = 0
    ) -> dict[str, dict[str, float]]:
        """Mean and bootstrap 95% CI per metric: ``{"recall@10": {"mean", "ci_low", "ci_high"}}``.

        Over the ranks of every process (``sync_context`` is a no-op without a process group).
        """
        with self.sync_context():
            ranks = self._unique_ranks()
        out = {"num_users": {"mean": float(ranks.numel())}}
        for name, values in per_user_metrics(ranks, self.ks).items():
            low, high = bootstrap_ci(values, num_samples=num_samples, seed=seed)
            mean = values.mean().item() if values.numel() else math.nan
            out[name] = {"mean": mean, "ci_low": low, "ci_high": high}
        return out


def format_table(
    rows: dict[str, dict[str, dict[str, float]]], ks: Sequence[int] = (1, 5, 10)
) -> str:
    """A markdown table: one row per model, one column per metric, 'mean [low, high]'."""
    names = [f"{m}@{k}" for m in METRIC_NAMES for k in ks]
    lines = ["| model | users | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for model, result in rows.items():
        cells = []
        for name in names:
            r = result.get(name)
            cells.append(
                "—" if r is None else f"{r['mean']:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}]"
            )
        users = int(result.get("num_users", {}).get("mean", 0))
        lines.append(f"| {model} | {users} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
