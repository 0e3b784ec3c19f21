"""``mscg``: run the MSCGRec chain or one of its stages from a chain config.

    mscg fit --config configs/ml100k.yaml            # every stage, skipping those up to date
    mscg fit --config X.yaml --stages prepare,sasrec --force
    mscg prepare --config configs/beauty.yaml --run_dir D --data_root ../shared/data
    mscg <stage> --config X.yaml                      # any single stage: sasrec, rq_text, genrec...
    mscg test --config X.yaml                         # metrics table of the finished run
    mscg fit --config X.yaml --print_config           # the resolved chain config
    mscg report --run_dir D [--out D/report.png]      # PNG of the TensorBoard curves + table

Exit codes: 0 success, 2 bad config or bad input (one sentence on stderr), 1 anything else.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mscg_lightning.allocator import tune_allocator
from mscg_lightning.errors import MscgError
from mscg_lightning.pipeline import CHAIN_ORDER

COMMANDS = {
    "fit": "run the chain: every configured stage in order, skipping those up to date",
    "test": "print the metrics table (SASRec and GenRec, with 95% bootstrap CIs) of a finished run",
    "predict": "top-K items for user histories given as Parquet",
    "attribute": "exact Shapley values of the input modalities on the test split (paper Table 3b)",
    "report": "PNG of the main training curves from TensorBoard, and the metrics table",
    **{name: f"run only the stage '{name}' (with --force to redo it)" for name in CHAIN_ORDER},
}


def _usage() -> str:
    lines = ["usage: mscg COMMAND --config CHAIN.yaml [options]", "", "commands:"]
    lines += [f"  {name:<12} {text}" for name, text in COMMANDS.items()]
    lines += ["", "`mscg COMMAND --help` lists the options of a command."]
    return "\n".join(lines)


def _parser(command: str):
    from mscg_lightning.config import chain_parser

    parser = chain_parser(prog=f"mscg {command}")
    parser.add_argument("--force", action="store_true", help="redo stages even when up to date")
    if command == "fit":
        parser.add_argument(
            "--stages", type=str | None, default=None, help="comma-separated subset of stages"
        )
    if command == "attribute":
        parser.add_argument("--metric", type=str, default="ndcg@10", help="e.g. recall@10")
    if command == "predict":
        parser.add_argument("--user_histories", type=str, required=True)
        parser.add_argument("--output", type=str, default=None)
        parser.add_argument("--top_k", type=int, default=10)
    return parser


def main(args: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (tests call it in-process)."""
    tune_allocator()  # keep large freed blocks (glibc); MSCG_MALLOC=default: off
    args = list(sys.argv[1:] if args is None else args)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"mscg: unknown command '{command}'.\n\n{_usage()}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if command == "report":
        return _report(rest)
    parser = _parser(command)
    try:
        config = parser.parse_args(rest)  # jsonargparse prints its message and exits 2
    except SystemExit as exc:
        return int(exc.code or 0)
    from mscg_lightning.artifacts import is_rank_zero

    try:
        run_dir = Path(config.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        # The resolved chain config of the latest command, next to the results (rank 0 only).
        if is_rank_zero():
            parser.save(config, run_dir / "config.yaml", overwrite=True, skip_check=True)
        return _run(command, config)
    except MscgError as err:
        print(f"mscg: error: {err}", file=sys.stderr)
        return 2


def _run(command: str, config) -> int:
    from mscg_lightning import pipeline

    if command == "fit":
        stages = [s.strip() for s in config.stages.split(",")] if config.stages else None
        pipeline.run_chain(config, stages=stages, force=config.force)
        _print_report(config)
        return 0
    if command == "test":
        _print_report(config, missing_ok=False)
        return 0
    if command == "attribute":
        from mscg_lightning.stages.genrec.attribution import attribute

        attribute(config, metric=config.metric)
        return 0
    if command == "predict":
        from mscg_lightning.stages.genrec.stage import predict

        predict(config)
        return 0
    pipeline.run_chain(config, stages=[command], force=config.force)
    return 0


def _print_report(config, missing_ok: bool = True) -> None:
    from mscg_lightning.artifacts import is_rank_zero
    from mscg_lightning.report import metrics_report, write_tensorboard_text

    if not is_rank_zero():
        return
    text = metrics_report(Path(config.run_dir), missing_ok=missing_ok)
    if text:
        print(text)
        write_tensorboard_text(Path(config.run_dir), text)


def _report(args: Sequence[str]) -> int:
    """``mscg report --run_dir D [--out PNG]``: the curves of a run as one PNG, and its table."""
    from jsonargparse import ArgumentParser

    from mscg_lightning.report import metrics_report, plot_report

    parser = ArgumentParser(prog="mscg report", description=COMMANDS["report"])
    parser.add_argument("--run_dir", type=str, required=True, help="the run directory of mscg fit")
    parser.add_argument("--out", type=str | None, default=None, help="PNG (<run_dir>/report.png)")
    try:
        opts = parser.parse_args(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    run_dir = Path(opts.run_dir)
    try:
        out, drawn = plot_report(run_dir, Path(opts.out) if opts.out else None)
        text = metrics_report(run_dir, missing_ok=True)
    except MscgError as err:
        print(f"mscg: error: {err}", file=sys.stderr)
        return 2
    curves = "; ".join(f"{stage}: {', '.join(tags)}" for stage, tags in drawn.items() if tags)
    print(f"[mscg] report: {out} ({curves})")
    if text:
        print(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
