"""Issue 17 item 5: the fast training path vs the paper's, paired over the same test users.

Reads finished genrec run directories (one per arm and seed, all on the same prepared data),
scores every test user from ``<run>/genrec/predictions.parquet`` against
``<run>/prepared/test``, averages each user's metric over the seeds of an arm, and writes
``variants.<arm>.test.<metric>.{mean,ci_low,ci_high}`` (95% bootstrap over users) plus the
paired difference of each arm against the first one::

    python benchmarks/genrec_encoder_attention.py --name genrec_encoder_attention \\
        --arm paper=runs/ea/paper-s0,runs/ea/paper-s1 --arm fast=runs/ea/fast-s0,runs/ea/fast-s1 \\
        --note "Instruments, genrec-small, 4 epochs ..."
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_row, command_line, machine_info, utc_now, write_result  # noqa: E402

from mscg_lightning.artifacts import read_table  # noqa: E402

KS = (5, 10)
N_BOOT = 2000


def user_metrics(run: Path) -> dict[int, np.ndarray]:
    """``{user_idx: [recall@5, ndcg@5, recall@10, ndcg@10]}`` of one finished run."""
    test = read_table(run / "prepared" / "test", columns=["user_idx", "target"])
    target = dict(zip(test.column("user_idx").to_pylist(), test.column("target").to_pylist()))
    preds = pq.read_table(run / "genrec" / "predictions.parquet", columns=["user_idx", "items"])
    out = {}
    for user, items in zip(preds.column("user_idx").to_pylist(), preds.column("items").to_pylist()):
        rank = items.index(target[user]) if target[user] in items else None
        row = []
        for k in KS:
            hit = rank is not None and rank < k
            row += [float(hit), 1.0 / np.log2(rank + 2) if hit else 0.0]
        out[user] = np.array(row)
    return out


def metric_names() -> list[str]:
    return [f"{m}@{k}" for k in KS for m in ("recall", "ndcg")]


def arm_matrix(runs: list[Path], users: list[int]) -> np.ndarray:
    """[U, M] per-user metrics averaged over the arm's seeds."""
    per_seed = [user_metrics(r) for r in runs]
    return np.mean([[m[u] for u in users] for m in per_seed], axis=0)


def run_times(run: Path) -> dict[str, float]:
    """CPU and wall seconds of a run from ``<run>.log`` (``/usr/bin/time -v``), if there."""
    log = Path(f"{run}.log")
    out: dict[str, float] = {}
    if not log.is_file():
        return out
    for line in log.read_text(errors="replace").splitlines():
        line = line.strip()
        if line.startswith(("User time", "System time")):
            out["cpu_seconds"] = out.get("cpu_seconds", 0.0) + float(line.rsplit(":", 1)[1])
        elif line.startswith("Elapsed (wall clock)"):
            parts = [float(x) for x in line.rsplit(": ", 1)[1].split(":")]
            out["wall_seconds"] = sum(v * 60**i for i, v in enumerate(reversed(parts)))
    return out


def interval(values: np.ndarray, idx: np.ndarray) -> tuple[float, float]:
    boots = values[idx].mean(1)
    return float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arm", action="append", required=True, help="NAME=RUN[,RUN...]")
    parser.add_argument("--name", default="genrec_encoder_attention")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    arms = {}
    for spec in args.arm:
        name, _, runs = spec.partition("=")
        arms[name] = [Path(r) for r in runs.split(",")]
    missing = [str(r) for rs in arms.values() for r in rs if not (r / "genrec").is_dir()]
    if missing:
        raise SystemExit(f"no finished genrec in: {', '.join(missing)}")
    users = sorted(set.intersection(*(set(user_metrics(rs[0])) for rs in arms.values())))
    matrices = {name: arm_matrix(rs, users) for name, rs in arms.items()}
    idx = np.random.default_rng(0).integers(0, len(users), (N_BOOT, len(users)))
    names = metric_names()
    variants, paired = {}, {}
    reference = next(iter(arms))
    for arm, mat in matrices.items():
        test = {}
        for j, metric in enumerate(names):
            low, high = interval(mat[:, j], idx)
            test[metric] = {"mean": float(mat[:, j].mean()), "ci_low": low, "ci_high": high}
        times = [run_times(r) for r in arms[arm]]
        variants[arm] = {"runs": [str(r) for r in arms[arm]], "times": times, "test": test}
        if arm != reference:
            diff = mat - matrices[reference]
            paired[f"{arm}-{reference}"] = {}
            for j, metric in enumerate(names):
                low, high = interval(diff[:, j], idx)
                paired[f"{arm}-{reference}"][metric] = {
                    "diff": float(diff[:, j].mean()),
                    "ci_low": low,
                    "ci_high": high,
                    "excludes_zero": bool(low > 0 or high < 0),
                }
    payload = {
        "benchmark": args.name,
        "date": utc_now(),
        "command": command_line(),
        "machine": machine_info(),
        "note": args.note,
        "users": len(users),
        "variants": variants,
        "paired": paired,
    }
    summary = "; ".join(
        f"{a} R@10 {v['test']['recall@10']['mean']:.4f} N@10 {v['test']['ndcg@10']['mean']:.4f}"
        for a, v in variants.items()
    )
    wall = sum(t.get("wall_seconds", 0.0) for v in variants.values() for t in v["times"])
    payload["wall_seconds"] = wall
    path = write_result(args.name, payload)
    append_row(args.name, summary, wall, machine_info(), command_line())
    print(summary, "->", path)
    return payload


if __name__ == "__main__":
    main()
