"""``mscg``: run the MSCGRec chain or one of its stages from a chain config.

    mscg fit --config configs/ml100k.yaml            # every stage, skipping those up to date
    mscg fit --config X.yaml --stages prepare,sasrec --force
    mscg prepare --config configs/beauty.yaml --run_dir D --data_root ../shared/data
    mscg <stage> --config X.yaml                      # any single stage: sasrec, rq_text, genrec...
    mscg test --config X.yaml                         # metrics table of the finished run
    mscg fit --config X.yaml --print_config           # the resolved chain config
    mscg report --run_dir D [--out D/report.png]      # PNG of the TensorBoard curves + table
    mscg export --config X.yaml [--format csv]        # codes + predictions with raw ids

Exit codes: 0 success, 2 bad config or bad input (one sentence on stderr), 130 interrupted
(Ctrl-C: rerunning the command resumes), 1 anything else.
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
    "export": "item codes per modality and predictions, with raw ids, as Parquet or CSV",
    **{name: f"run only the stage '{name}' (with --force to redo it)" for name in CHAIN_ORDER},
}


#: ``mscg predict --user_histories``: the schema, checked before ranking (data/validate.py).
USER_HISTORIES_HELP = (
    "Parquet file with a column 'history': one list of raw item ids (integers or strings, "
    "oldest first) per user; other columns (e.g. user_id) are copied to the output. Unknown "
    "ids are skipped and counted; users with no known item are ranked from an empty history "
    "and flagged in the output column cold_start. A history that is a string or a single "
    "integer is refused."
)


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
    if command == "export":
        parser.add_argument("--out", type=str | None, default=None, help="(<run_dir>/export)")
        parser.add_argument("--format", type=str, default="parquet", help="parquet or csv")
    if command == "predict":
        parser.add_argument("--user_histories", type=str, required=True, help=USER_HISTORIES_HELP)
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
    from mscg_lightning.console import quiet_third_party

    quiet_third_party()
    if command == "report":
        return _report(rest)
    parser = _parser(command)
    from mscg_lightning.cli_help import help_topic

    topic = help_topic(rest)
    if topic is not None:
        return _help(command, topic, parser)
    try:
        config = parser.parse_args(rest)  # jsonargparse prints its message and exits 2
    except SystemExit as exc:
        return int(exc.code or 0)
    from mscg_lightning.artifacts import is_rank_zero
    from mscg_lightning.storage import call_guarded

    def body() -> int:
        run_dir = Path(config.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        # The resolved chain config of the latest command, next to the results (rank 0 only).
        if is_rank_zero():
            parser.save(config, run_dir / "config.yaml", overwrite=True, skip_validation=True)
        return _run(command, config)

    try:
        # Ctrl-C: one line, exit 130; disk full / read-only run dir: one sentence (storage.py)
        return call_guarded(body, config.run_dir)
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
    if command == "export":
        from mscg_lightning.export import export

        export(config, out=config.out, fmt=config.format)
        return 0
    if command == "predict":
        from mscg_lightning.stages.genrec.stage import predict

        predict(config)
        return 0
    pipeline.run_chain(config, stages=[command], force=config.force)
    return 0


def _help(command: str, topic: str, parser) -> int:
    """``mscg COMMAND --help [SECTION|all]`` (cli_help.py)."""
    from mscg_lightning.cli_help import SECTIONS, section_help, short_help

    if topic == "":
        print(short_help(command, COMMANDS[command]))
    elif topic == "all":
        parser.print_help()
    elif topic in SECTIONS:
        print(section_help(parser.format_help(), topic))
    else:
        print(f"mscg {command}: no help topic '{topic}' (one of {', '.join(SECTIONS)}, all).")
        return 2
    return 0


def _print_report(config, missing_ok: bool = True) -> None:
    from mscg_lightning.artifacts import is_rank_zero
    from mscg_lightning.report import console_report, metrics_report, write_tensorboard_text

    if not is_rank_zero():
        return
    run_dir = Path(config.run_dir)
    text = console_report(run_dir, missing_ok=missing_ok)  # the full table goes to a file
    if text:
        print(text)
        write_tensorboard_text(run_dir, metrics_report(run_dir))


def _report(args: Sequence[str]) -> int:
    """``mscg report --run_dir D [--out PNG]``: the curves of a run as one PNG, and its table."""
    from jsonargparse import ArgumentParser

    from mscg_lightning.report import console_report, plot_report

    parser = ArgumentParser(prog="mscg report", description=COMMANDS["report"])
    parser.add_argument("--run_dir", type=str, required=True, help="the run directory of mscg fit")
    parser.add_argument("--out", type=str | None, default=None, help="PNG (<run_dir>/report.png)")
    try:
        opts = parser.parse_args(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    run_dir = Path(opts.run_dir)
    from mscg_lightning.storage import describe_write_error

    try:
        out, drawn = plot_report(run_dir, Path(opts.out) if opts.out else None)
        text = console_report(run_dir, missing_ok=True)
    except MscgError as err:
        print(f"mscg: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the PNG's folder is read-only or full (storage.py)
        message = describe_write_error(err, opts.out or run_dir)
        if message is None:
            raise
        print(f"mscg: error: {message}", file=sys.stderr)
        return 2
    curves = "; ".join(f"{stage}: {', '.join(tags)}" for stage, tags in drawn.items() if tags)
    print(f"[mscg] report: {out} ({curves})")
    if text:
        print(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
