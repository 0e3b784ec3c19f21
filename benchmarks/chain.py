"""The whole chain of one config, end to end: wall time per stage and the final metrics.

    python benchmarks/chain.py --config configs/beauty.yaml --overlay configs/trainer/gpu-bf16.yaml \
        --name chain_beauty_gpu

Runs what ``mscg fit`` runs (stages already up to date in ``--run_dir`` count 0 s; pass ``--force``
for a clean timing) and writes ``benchmarks/results/<name>.json`` with the stage wall times, the
SASRec and GenRec test metrics (with CIs) and the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import append_row, write_result  # noqa: E402

from mscg_lightning import pipeline  # noqa: E402
from mscg_lightning.cli import parse_chain  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", required=True, help="a chain config, e.g. configs/beauty.yaml")
    p.add_argument("--overlay", action="append", default=[], help="more --config files")
    p.add_argument("--name", required=True, help="result file name, e.g. chain_beauty_gpu")
    p.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--force", action="store_true", help="redo stages that are up to date")
    p.add_argument("extra", nargs="*", help="more `mscg fit` overrides, after --")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    fit_args = ["--config", args.config]
    for overlay in args.overlay:
        fit_args += ["--config", overlay]
    _, config, graph = parse_chain("fit", [*fit_args, *args.extra])
    run_dir = Path(config.run_dir)
    start = time.perf_counter()
    timings = pipeline.run_chain(config, graph, force=args.force)
    wall = time.perf_counter() - start
    metrics = {}
    for stage in graph.model_rows():
        path = run_dir / stage / "metrics.json"
        if path.is_file():
            metrics[stage] = json.loads(path.read_text())["test"]
    payload = {
        "config": [args.config, *args.overlay],
        "overrides": args.extra,
        "run_dir": str(run_dir),
        "stage_wall_seconds": {k: round(v, 1) for k, v in timings.items()},
        "wall_seconds": wall,
        "test": metrics,
    }
    path = write_result(args.name, payload, Path(args.results_dir))
    summary = ", ".join(
        f"{s} R@10 {m['recall@10']['mean']:.4f} N@10 {m['ndcg@10']['mean']:.4f}"
        for s, m in metrics.items()
    )
    append_row(
        args.name, summary or "no test metrics", wall, table=Path(args.results_dir) / "README.md"
    )
    print(json.dumps({"stage_wall_seconds": payload["stage_wall_seconds"], "wall": wall}))
    print(f"[chain] {summary}; wrote {path}")
    return payload


if __name__ == "__main__":
    main()
