"""``mscg``: run a chain of stage instances, or one of them, from a chain config.

    mscg fit --config configs/ml100k.yaml            # every instance, skipping those up to date
    mscg fit --config configs/compare/tiny.yaml      # SASRec, TIGER, MSCGRec, ablations: one table
    mscg fit --config X.yaml --stages prepare,sasrec --force
    mscg <instance> --config X.yaml                   # one instance: sasrec, rq_text, tiger...
    mscg test --run_dir D [--reference NAME] [--out DIR]   # the comparison table of a finished run
    mscg predict --run_dir D --user_histories H.parquet [--instance tiger]
    mscg fit --config X.yaml --print_config           # the resolved chain config
    mscg report --run_dir D [--out report.png]        # PNG of the TensorBoard curves + table
    mscg export --config X.yaml [--format csv]        # codes + predictions with raw ids

``test``, ``predict``, ``attribute`` and ``report`` only read the run directory (its
``config.yaml`` stands in for ``--config``); their outputs go where ``--out`` / ``--output`` say.
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

COMMANDS = {
    "fit": "run the chain: every stage instance in order, skipping those up to date",
    "test": "print the comparison table (every SASRec and GenRec instance, 95% bootstrap CIs, "
    "paired differences vs the reference) of a finished run",
    "predict": "top-K items for user histories given as Parquet",
    "attribute": "exact Shapley values of the input modalities on the test split (paper Table 3b)",
    "report": "PNG of the main training curves from TensorBoard, and the comparison table",
    "export": "item codes per modality and predictions, with raw ids, as Parquet or CSV",
}
#: Commands that only read a run directory: they never create or write into it.
READ_ONLY = ("test", "predict", "attribute")
#: Options of a command that are not part of the chain config (not saved in config.yaml).
COMMAND_KEYS = (
    "force",
    "stages",
    "metric",
    "user_histories",
    "output",
    "top_k",
    "instance",
    "out",
    "print_config",
)


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
    lines += [
        "  INSTANCE     run only the stage instance INSTANCE of the config (--force redoes it)"
    ]
    lines += ["", "`mscg COMMAND --help` lists the options of a command."]
    return "\n".join(lines)


def _parser(command: str, instances: dict[str, str]):
    from mscg_lightning.config import chain_parser

    parser = chain_parser(prog=f"mscg {command}", instances=instances)
    if command not in READ_ONLY:
        parser.add_argument("--force", action="store_true", help="redo stages even when up to date")
    if command == "fit":
        parser.add_argument(
            "--stages", type=str | None, default=None, help="comma-separated subset of instances"
        )
    if command in ("predict", "attribute"):
        parser.add_argument(
            "--instance",
            type=str | None,
            default=None,
            help="the genrec instance to use (default: the only one, or 'genrec')",
        )
    if command == "attribute":
        parser.add_argument("--metric", type=str, default="ndcg@10", help="e.g. recall@10")
        parser.add_argument("--out", type=str | None, default=None, help="attribution JSON file")
    if command == "test":
        parser.add_argument(
            "--out", type=str | None, default=None, help="folder for metrics.md and metrics.json"
        )
    if command == "export":
        parser.add_argument("--out", type=str | None, default=None, help="(<run_dir>/export)")
        parser.add_argument("--format", type=str, default="parquet", help="parquet or csv")
    if command == "predict":
        parser.add_argument("--user_histories", type=str, required=True, help=USER_HISTORIES_HELP)
        parser.add_argument("--output", type=str, default=None)
        parser.add_argument("--top_k", type=int, default=10)
    return parser


def _option(args: Sequence[str], name: str) -> str | None:
    """The value of ``--name V`` / ``--name=V`` in ``args`` (the last one), else None."""
    value = None
    for i, arg in enumerate(args):
        if arg == f"--{name}" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
    return value


def _existing_run_dir(run_dir: str | None, command: str) -> Path:
    """A read-only command's run directory: it must exist (nothing is created)."""
    if not run_dir:
        raise MscgError(f"mscg {command} needs --run_dir (the run directory of mscg fit).")
    path = Path(run_dir)
    if not path.is_dir():
        raise MscgError(f"the run directory {path} does not exist: check --run_dir.")
    return path


def _with_saved_config(command: str, args: list[str]) -> list[str]:
    """A read-only command without ``--config`` reads ``<run_dir>/config.yaml``."""
    if command not in READ_ONLY or _option(args, "config") is not None:
        return args
    if any(a in ("-h", "--help") for a in args):
        return args
    run_dir = _existing_run_dir(_option(args, "run_dir"), command)
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise MscgError(f"{saved} does not exist: pass --config, or run `mscg fit` first.")
    return ["--config", str(saved), *args]


def parse_chain(command: str, args: Sequence[str]):
    """(parser, config, graph) of ``mscg COMMAND ARGS``: both passes and every chain check.

    Raises :class:`MscgError` for a bad chain, ``SystemExit(2)`` for a bad option (printed).
    """
    from mscg_lightning.graph import build_graph, config_files, discover, load_raw

    args = _with_saved_config(command, list(args))
    instances = discover(load_raw(config_files(args)))
    parser = _parser(command, instances)
    config = parser.parse_args(args)
    return parser, config, build_graph(config, instances)


def main(args: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (tests call it in-process)."""
    tune_allocator()  # keep large freed blocks (glibc); MSCG_MALLOC=default: off
    args = list(sys.argv[1:] if args is None else args)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from mscg_lightning.console import quiet_third_party

    quiet_third_party()
    if command == "report":
        return _report(rest)
    from mscg_lightning.cli_help import help_topic
    from mscg_lightning.graph import build_graph, config_files, discover, load_raw
    from mscg_lightning.registry import kinds

    topic = help_topic(rest)
    try:
        if topic is None:
            rest = _with_saved_config(command, rest)
        instances = discover(load_raw(config_files(rest)))
    except MscgError as err:
        print(f"mscg: error: {err}", file=sys.stderr)
        return 2
    if not config_files(rest):
        if topic is not None:  # `mscg fit --help genrec` without a config: one section per kind
            instances = {kind: kind for kind in kinds()}
        elif command not in COMMANDS and command in kinds():
            instances = {command: command}  # `mscg prepare --prepare.adapter ...`
    if command not in COMMANDS and command not in instances:
        print(f"mscg: unknown command '{command}'.\n\n{_usage()}", file=sys.stderr)
        return 2
    parser = _parser(command, instances)
    if topic is not None:
        return _help(command, topic, parser, instances)
    try:
        config = parser.parse_args(rest)  # jsonargparse prints its message and exits 2
    except SystemExit as exc:
        return int(exc.code or 0)
    from mscg_lightning.artifacts import is_rank_zero
    from mscg_lightning.storage import call_guarded

    def body() -> int:
        # the whole chain is checked before anything runs or is written
        graph = build_graph(config, instances)
        if command in READ_ONLY:
            _existing_run_dir(config.run_dir, command)
            return _run(command, config, graph)
        _check_stages(command, config, graph)
        run_dir = Path(config.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)  # OSError: one sentence (call_guarded)
        # The resolved chain config of the latest run, next to the results (rank 0 only).
        if is_rank_zero():
            save_config(parser, config, run_dir / "config.yaml")
        return _run(command, config, graph)

    try:
        # Ctrl-C: one line, exit 130; disk full / read-only run dir: one sentence (storage.py)
        return call_guarded(body, config.run_dir)
    except MscgError as err:
        print(f"mscg: error: {err}", file=sys.stderr)
        return 2


def _check_stages(command: str, config, graph) -> None:
    """The instances ``fit --stages`` or ``mscg INSTANCE`` names exist and run (before any write)."""
    names = [command] if command not in COMMANDS else []
    if command == "fit" and config.stages:
        names = [s.strip() for s in config.stages.split(",")]
    for name in names:
        if name in graph.disabled:
            raise MscgError(f"stage '{name}' has no model configured, so it cannot run.")
        if name not in graph.instances:
            raise MscgError(
                f"unknown stage '{name}'; the stage instances are: {', '.join(graph.order())}."
            )


def save_config(parser, config, path: Path) -> None:
    """The chain config (without command options) as YAML, written atomically."""
    import yaml

    data = yaml.safe_load(parser.dump(config, skip_check=True))
    for key in COMMAND_KEYS:
        data.pop(key, None)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)


def _run(command: str, config, graph) -> int:
    from mscg_lightning import pipeline

    if command == "fit":
        stages = [s.strip() for s in config.stages.split(",")] if config.stages else None
        pipeline.run_chain(config, graph, stages=stages, force=config.force)
        _compare(config, graph, missing_ok=True, out=Path(config.run_dir))
        return 0
    if command == "test":
        _compare(config, graph, missing_ok=False, out=Path(config.out) if config.out else None)
        return 0
    if command in ("attribute", "predict"):
        config.instance = _genrec_instance(config, graph)
    if command == "attribute":
        from mscg_lightning.stages.genrec.attribution import attribute

        attribute(config, metric=config.metric, out=Path(config.out) if config.out else None)
        return 0
    if command == "export":
        from mscg_lightning.export import export

        export(config, out=config.out, fmt=config.format)
        return 0
    if command == "predict":
        from mscg_lightning.stages.genrec.stage import predict

        predict(config)
        return 0
    pipeline.run_chain(config, graph, stages=[command], force=config.force)
    return 0


def _help(command: str, topic: str, parser, instances: dict) -> int:
    """``mscg COMMAND --help [SECTION|all]`` (cli_help.py)."""
    from mscg_lightning.cli_help import section_help, sections, short_help

    if topic == "":
        print(short_help(command, COMMANDS.get(command, "run one stage instance"), instances))
    elif topic == "all":
        parser.print_help()
    elif topic in sections(instances):
        print(section_help(parser.format_help(), topic))
    else:
        print(
            f"mscg {command}: no help topic '{topic}' (one of {', '.join(sections(instances))}, all)."
        )
        return 2
    return 0


def _genrec_instance(config, graph) -> str:
    genrecs = [n for n, inst in graph.instances.items() if inst.kind.name == "genrec"]
    if config.instance:
        if config.instance not in genrecs:
            raise MscgError(
                f"--instance {config.instance} is not a genrec instance of the config "
                f"(genrec instances: {', '.join(genrecs) or 'none'})."
            )
        return config.instance
    if len(genrecs) == 1:
        return genrecs[0]
    if "genrec" in genrecs:
        return "genrec"
    raise MscgError(
        f"the config has several genrec instances ({', '.join(genrecs)}): choose one with "
        "--instance NAME."
    )


def _compare(config, graph, missing_ok: bool, out: Path | None) -> None:
    """Print the comparison table; write metrics.md / metrics.json (and TensorBoard) to ``out``.

    ``mscg fit`` passes its run directory; ``mscg test`` writes only where ``--out`` says.
    """
    from mscg_lightning.artifacts import is_rank_zero
    from mscg_lightning.compare import comparison, format_markdown, format_terminal, write_outputs
    from mscg_lightning.report import write_tensorboard_text

    if not is_rank_zero():
        return
    run_dir = Path(config.run_dir)
    reference = config.reference or graph.reference
    result = comparison(run_dir, graph.model_rows(), reference, missing_ok=missing_ok)
    if result is None:
        return
    print(f"Test metrics, {run_dir}:")
    print(format_terminal(result))
    if out is not None:
        md, _ = write_outputs(result, out)
        print(f"[mscg] every metric: {md} and {md.with_suffix('.json')}")
        if out == run_dir:
            write_tensorboard_text(run_dir, format_markdown(result))


def _report(args: Sequence[str]) -> int:
    """``mscg report --run_dir D [--out PNG]``: the curves of a run as one PNG, and its table."""
    from jsonargparse import ArgumentParser

    from mscg_lightning.report import metrics_report, plot_report

    parser = ArgumentParser(prog="mscg report", description=COMMANDS["report"])
    parser.add_argument("--run_dir", type=str, required=True, help="the run directory of mscg fit")
    parser.add_argument(
        "--out", type=str | None, default=None, help="PNG (default: ./<run_dir name>-report.png)"
    )
    try:
        opts = parser.parse_args(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    from mscg_lightning.storage import describe_write_error

    try:
        run_dir = _existing_run_dir(opts.run_dir, "report")
        out, drawn = plot_report(run_dir, Path(opts.out) if opts.out else None)
        text = metrics_report(run_dir, missing_ok=True)
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
