"""Exact Shapley values of the input modalities (paper Table 3b).

The value of a coalition S of modalities is the test metric when every other modality is
replaced by its mask tokens in every history item. With M modalities that is 2^M evaluations
(8 for text, image and collab). The paper computes them on the model trained with modality
masking (``mask_prob`` > 0); a model trained without it has never learned what its mask tokens
mean, so :func:`attribute` refuses it rather than print numbers that measure untrained
embeddings. It runs on a GPU when one is available.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from mscg_lightning.errors import MscgError
from mscg_lightning.metrics import RetrievalMetrics


def shapley_values(
    players: Sequence[str], value: Callable[[frozenset[str]], float]
) -> dict[str, float]:
    """phi_i = sum over S not containing i of |S|! (n-|S|-1)! / n! * (v(S + i) - v(S))."""
    n = len(players)
    phi = {}
    for player in players:
        others = [p for p in players if p != player]
        total = 0.0
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for coalition in itertools.combinations(others, size):
                s = frozenset(coalition)
                total += weight * (value(s | {player}) - value(s))
        phi[player] = total
    return phi


def require_masked_training(hparams: dict, run_dir: Path | str) -> None:
    """Refuse a genrec model trained without modality masking (``mask_prob`` 0)."""
    if float(hparams.get("mask_prob", 0.0)) <= 0.0:
        raise MscgError(
            f"mscg attribute needs a genrec model trained with modality masking, but {run_dir} "
            "was trained with genrec.model.init_args.mask_prob 0 (the paper uses 0.75)."
        )


def attribute(config, metric: str = "ndcg@10", out: Path | None = None) -> dict:
    """``mscg attribute``: the metric of every modality subset and each modality's Shapley value.

    Prints the tables; writes ``attribution.json`` only to ``out`` when given (the run directory
    is only read).
    """
    from mscg_lightning.data.datamodule import SequenceDataModule
    from mscg_lightning.stages.genrec.stage import history_length, load_trained

    run_dir = Path(config.run_dir)
    instance = config.get("instance") or "genrec"
    model, prepared = load_trained(run_dir, config, instance)
    require_masked_training(dict(model.hparams), run_dir)
    model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    data = SequenceDataModule(
        str(prepared), eval_batch_size=256, max_history=history_length(config, instance)
    )
    data.setup("test")
    modalities = list(model.layout.modalities)
    cache: dict[frozenset[str], dict] = {}

    def evaluate(kept: frozenset[str]) -> float:
        if kept not in cache:
            metrics = RetrievalMetrics(model.ks)
            masked = [m for m in modalities if m not in kept]
            with torch.no_grad():
                for batch in data.test_dataloader():
                    history = batch["history"].to(model.device)
                    items, _ = model.rank(history, masked_modalities=masked)
                    metrics.update(items.cpu(), batch["target"], batch["user_idx"])
            cache[kept] = {k: v.item() for k, v in metrics.compute().items()}
        return cache[kept][metric]

    phi = shapley_values(modalities, evaluate)
    subsets = {"+".join(sorted(s)) or "(all masked)": cache[s] for s in sorted(cache, key=len)}
    result = {"metric": metric, "shapley": phi, "subsets": subsets, "modalities": modalities}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Modality attribution ({metric}), {run_dir}:",
        "| subset kept | " + metric + " |",
        "|---|---|",
    ]
    lines += [f"| {name} | {values[metric]:.4f} |" for name, values in subsets.items()]
    lines += ["", "| modality | Shapley value |", "|---|---|"]
    lines += [f"| {m} | {v:+.4f} |" for m, v in phi.items()]
    print("\n".join(lines))
    return result
