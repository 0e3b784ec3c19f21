"""The comparison table: one row per model instance, bootstrap CIs, paired tests vs a reference.

Every model instance (kinds with ``model_row``: sasrec, genrec) writes ``test_ranks.parquet``
into its artifact: per test user the 0-based rank of the target in its top-K list (-1 = not in
it), and the list length K in the file's metadata. Every metric at k <= K follows from these
ranks, so the table needs no model and no retraining.

The paired test resamples the *same* users for both rows (a paired bootstrap over the users the
two rows share): the difference of means, its percentile 95% CI, and whether that CI excludes 0.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mscg_lightning.errors import MscgError
from mscg_lightning.metrics import METRIC_NAMES, bootstrap_ci, per_user_metrics

TEST_RANKS = "test_ranks.parquet"
#: Metrics of the terminal table (every metric goes to metrics.md / metrics.json).
TABLE_METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")
#: The metric of the paired difference shown in the terminal table.
DEFAULT_METRIC = "ndcg@10"
MAX_WIDTH = 120


def write_test_ranks(directory: Path, users: torch.Tensor, ranks: torch.Tensor, k: int) -> None:
    """``test_ranks.parquet``: ``user_idx`` int32, ``rank`` int32 (0-based, -1 = miss); K in
    the schema metadata (``list_length``)."""
    table = pa.table(
        {
            "user_idx": pa.array(users.numpy().astype(np.int32)),
            "rank": pa.array(ranks.numpy().astype(np.int32)),
        }
    )
    table = table.replace_schema_metadata({"list_length": str(int(k))})
    pq.write_table(table, Path(directory) / TEST_RANKS)


def read_test_ranks(directory: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(user_idx [N], rank [N], K) of a model artifact, validated."""
    path = Path(directory) / TEST_RANKS
    if not path.is_file():
        raise MscgError(f"{path} does not exist: rerun `mscg fit` to make it.")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise MscgError(f"{path} is not a readable Parquet file ({err}).") from err
    if {"user_idx", "rank"} - set(table.column_names):
        raise MscgError(f"{path} lacks the columns user_idx and rank.")
    meta = table.schema.metadata or {}
    k = int(meta.get(b"list_length", b"0"))
    users = table.column("user_idx").to_numpy().astype(np.int64)
    ranks = table.column("rank").to_numpy().astype(np.int64)
    if len(np.unique(users)) != len(users) or (ranks < -1).any() or (k and (ranks >= k).any()):
        raise MscgError(f"{path} has repeated users or ranks outside [-1, {k}).")
    return users, ranks, k


@dataclass
class Row:
    """One model instance: its label, users and per-user metric values ``{metric: [N]}``."""

    name: str
    label: str
    users: np.ndarray
    values: dict[str, np.ndarray]


def load_row(name: str, directory: Path, ks: Sequence[int] = (1, 5, 10)) -> Row:
    users, ranks, k = read_test_ranks(directory)
    usable = [c for c in ks if not k or c <= k]
    per_user = per_user_metrics(torch.from_numpy(ranks), usable)
    label = name
    metrics = Path(directory) / "metrics.json"
    if metrics.is_file():
        label = str(json.loads(metrics.read_text()).get("model", name))
    return Row(name, label, users, {m: v.numpy() for m, v in per_user.items()})


def average_seeds(rows: Sequence[Row]) -> Row:
    """One row from the same instance trained with several seeds: each user's metric averaged
    over the seeds, on the users every seed scored (the paired tests then resample users)."""
    if not rows:
        raise MscgError("average_seeds needs at least one row.")
    common = rows[0].users
    for row in rows[1:]:
        common = np.intersect1d(common, row.users)
    positions = []
    for row in rows:
        order = np.argsort(row.users)
        positions.append(order[np.searchsorted(row.users, common, sorter=order)])
    values = {
        metric: np.mean([row.values[metric][pos] for row, pos in zip(rows, positions)], axis=0)
        for metric in rows[0].values
    }
    return Row(rows[0].name, rows[0].label, common, values)


def paired_diff(
    a: Row, b: Row, metric: str, num_samples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Paired bootstrap of mean(a) - mean(b) over the users both rows have."""
    common, ia, ib = np.intersect1d(a.users, b.users, return_indices=True)
    if not len(common):
        raise MscgError(f"'{a.name}' and '{b.name}' share no test users: they cannot be paired.")
    diff = torch.from_numpy(a.values[metric][ia] - b.values[metric][ib])
    low, high = bootstrap_ci(diff, num_samples=num_samples, seed=seed)
    return {
        "mean": float(diff.mean()),
        "ci_low": low,
        "ci_high": high,
        "excludes_zero": bool(low > 0 or high < 0),
        "users": int(len(common)),
    }


def compare(rows: list[Row], reference: str | None, seed: int = 0) -> dict[str, Any]:
    """Every metric of every row with its CI, and the paired difference vs ``reference``."""
    if reference is not None and reference not in {r.name for r in rows}:
        raise MscgError(
            f"reference '{reference}' is not one of the model instances {[r.name for r in rows]}."
        )
    ref = next((r for r in rows if r.name == reference), None)
    out: dict[str, Any] = {"reference": reference, "rows": {}}
    for row in rows:
        test = {"num_users": {"mean": float(len(row.users))}}
        for metric, values in row.values.items():
            low, high = bootstrap_ci(torch.from_numpy(values), seed=seed)
            test[metric] = {"mean": float(values.mean()), "ci_low": low, "ci_high": high}
        entry: dict[str, Any] = {"label": row.label, "test": test}
        if ref is not None and row is not ref:
            entry["vs_reference"] = {m: paired_diff(row, ref, m, seed=seed) for m in row.values}
        out["rows"][row.name] = entry
    return out


def _num(value: float) -> str:
    """A metric in [0, 1] in 4 characters: ``.123`` (``1.00`` for one)."""
    return "1.00" if value >= 0.9995 else f"{value:.3f}".lstrip("0")


def _signed(value: float) -> str:
    text = f"{abs(value):.3f}".lstrip("0")
    return ("-" if value < 0 else "+") + text


def format_terminal(result: dict[str, Any], metric: str = DEFAULT_METRIC) -> str:
    """The comparison as a fixed-width table of at most 120 columns."""
    rows = result["rows"]
    reference = result.get("reference")
    name_width = min(24, max([5, *(len(n) for n in rows)]))
    head = f"{'model':<{name_width}} {'users':>5}"
    head += "".join(f" {m.replace('recall', 'R').replace('ndcg', 'N'):<16}" for m in TABLE_METRICS)
    if reference:
        short = metric.replace("recall", "R").replace("ndcg", "N")
        head += f" d{short} vs {reference}"[: MAX_WIDTH - len(head)]
    lines = [head]
    for name, entry in rows.items():
        test = entry["test"]
        line = f"{name[:name_width]:<{name_width}} {int(test['num_users']['mean']):>5}"
        for m in TABLE_METRICS:
            r = test.get(m)
            cell = (
                "-"
                if r is None
                else f"{_num(r['mean'])} [{_num(r['ci_low'])},{_num(r['ci_high'])}]"
            )
            line += f" {cell:<16}"
        diff = entry.get("vs_reference", {}).get(metric)
        if diff is not None:
            star = " *" if diff["excludes_zero"] else ""
            line += (
                f" {_signed(diff['mean'])} [{_signed(diff['ci_low'])},{_signed(diff['ci_high'])}]"
                f"{star}"
            )
        elif reference == name:
            line += " (reference)"
        lines.append(line.rstrip())
    notes = "mean [95% bootstrap CI over test users]"
    if reference:
        notes += f"; d = paired difference vs {reference} [95% CI], * = CI excludes 0"
    return "\n".join([*lines, textwrap.fill(notes, MAX_WIDTH)])


def format_markdown(result: dict[str, Any]) -> str:
    """Every metric of every row (and every paired difference) as markdown tables."""
    rows = result["rows"]
    names = [f"{m}@{k}" for m in METRIC_NAMES for k in (1, 5, 10)]
    names = [n for n in names if any(n in e["test"] for e in rows.values())]
    lines = ["| model | instance | users | " + " | ".join(names) + " |"]
    lines.append("|---" * (len(names) + 3) + "|")
    for name, entry in rows.items():
        cells = []
        for n in names:
            r = entry["test"].get(n)
            cells.append(
                "-" if r is None else f"{r['mean']:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}]"
            )
        users = int(entry["test"]["num_users"]["mean"])
        lines.append(f"| {entry['label']} | {name} | {users} | " + " | ".join(cells) + " |")
    reference = result.get("reference")
    if reference:
        lines += ["", f"Paired bootstrap difference vs {reference} (95% CI; * = excludes 0):", ""]
        lines.append("| instance | " + " | ".join(names) + " |")
        lines.append("|---" * (len(names) + 1) + "|")
        for name, entry in rows.items():
            diffs = entry.get("vs_reference")
            if not diffs:
                continue
            cells = []
            for n in names:
                d = diffs.get(n)
                mark = " *" if d and d["excludes_zero"] else ""
                cells.append(
                    "-"
                    if d is None
                    else f"{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]{mark}"
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison(
    run_dir: Path, instances: Sequence[str], reference: str | None, missing_ok: bool = False
) -> dict[str, Any] | None:
    """The comparison of the model instances finished in ``run_dir`` (None when none is)."""
    from mscg_lightning.pipeline import artifact_dir

    rows = []
    for name in instances:
        directory = artifact_dir(run_dir, name)
        if not (directory / TEST_RANKS).is_file():
            if missing_ok:
                continue
            raise MscgError(f"{directory / TEST_RANKS} does not exist: run `mscg fit` first.")
        rows.append(load_row(name, directory))
    if not rows:
        if missing_ok:
            return None
        raise MscgError(f"{run_dir} holds no test results yet: run `mscg fit` first.")
    names = [r.name for r in rows]
    if reference is not None and reference not in names and missing_ok:
        reference = None  # a partial run (fit --stages): the reference is not there yet
    if reference is None and len(rows) > 1:
        reference = names[0]  # no reference configured: the first model instance
    return compare(rows, reference)


def write_outputs(result: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """``metrics.md`` and ``metrics.json`` into ``folder`` (created)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MscgError(f"--out {folder} is a file, not a directory.")
    folder.mkdir(parents=True, exist_ok=True)
    md, js = folder / "metrics.md", folder / "metrics.json"
    md.write_text(format_markdown(result) + "\n")
    js.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return md, js
