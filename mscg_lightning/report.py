"""The metrics table of a run: every stage's ``metrics.json`` side by side, with 95% CIs."""

from __future__ import annotations

import json
from pathlib import Path

from mscg_lightning.errors import MscgError
from mscg_lightning.metrics import format_table

#: Stages whose artifact holds test metrics, in report order.
METRIC_STAGES = ("sasrec", "genrec")


def metrics_report(run_dir: Path, missing_ok: bool = True) -> str:
    """A markdown table of the test metrics found in ``run_dir`` ('' when none and missing_ok)."""
    rows = {}
    for stage in METRIC_STAGES:
        path = run_dir / stage / "metrics.json"
        if path.is_file():
            data = json.loads(path.read_text())
            rows[data.get("model", stage)] = data["test"]
    if not rows:
        if missing_ok:
            return ""
        raise MscgError(f"{run_dir} holds no test metrics yet: run `mscg fit` first.")
    return f"Test metrics, {run_dir} (mean [95% bootstrap CI over users]):\n" + format_table(rows)
