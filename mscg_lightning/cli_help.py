"""Readable ``--help`` for ``mscg``: a short page per command, stage options behind a topic.

jsonargparse's own help of the chain parser lists every option of every stage (thousands of
lines). ``mscg fit --help`` shows the common options and the stage sections; ``mscg fit --help
genrec`` shows the options of one section (the same lines jsonargparse prints, filtered).
"""

from __future__ import annotations

#: Columns of the Parquet file ``mscg predict --user_histories`` reads.
PREDICT_SCHEMA = """input (--user_histories, Parquet), one row per user:
  history     list<int|string>  one list of raw item ids per user, oldest first; unknown ids are
                                skipped and counted; a history that is a string or a single
                                integer is refused
  user_id     any               optional; copied to the output with every other input column
output (--output, default <input>.predictions.parquet): the input columns plus
  items       list<string>      the top-K raw item ids, best first
  scores      list<float>       their beam log-probabilities
  cold_start  bool              the user had no known item (ranked from an empty history)"""

_COMMON = """common options:
  --config FILE         chain config file(s), merged in order (required)
  --run_dir DIR         all artifacts go here
  --data_root DIR       folder that prepare.path is relative to
  --name, --seed        name of the run, seed of every stage
  --force               redo stages even when up to date
  --print_config        print the resolved chain config and exit
  --SECTION.KEY VALUE   override any config value, e.g. --genrec.trainer.max_epochs 3"""

_EXTRA = {
    "fit": "  --stages a,b          comma-separated subset of stages",
    "attribute": "  --metric NAME         metric of the Shapley values (default ndcg@10)",
    "export": (
        "  --out DIR             output folder (default <run_dir>/export)\n"
        "  --format FMT          parquet (default) or csv"
    ),
    "predict": (
        "  --user_histories F    Parquet of user histories (schema below)\n"
        "  --output F            output Parquet\n"
        "  --top_k K             items per user (default 10; at most the model's beams)"
    ),
}


def sections(instances: dict) -> list[str]:
    """The help topics: the config's stage instances, else every registered stage kind."""
    if instances:
        return list(instances)
    from mscg_lightning.registry import kinds

    return list(kinds())


def short_help(command: str, description: str, instances: dict | None = None) -> str:
    """The page of ``mscg COMMAND --help``."""
    lines = [f"usage: mscg {command} --config CHAIN.yaml [options]", "", description, ""]
    lines.append(_COMMON)
    if command in _EXTRA:
        lines.append(_EXTRA[command])
    if command == "predict":
        lines += ["", PREDICT_SCHEMA]
    lines += [
        "",
        f"stage sections: {', '.join(sections(instances or {}))}",
        f"`mscg {command} --help SECTION` lists a section's options (e.g. --help genrec);",
        f"`mscg {command} --help all` lists every option.",
    ]
    return "\n".join(lines)


def section_help(full: str, section: str) -> str:
    """The option entries of ``full`` (jsonargparse help) whose name starts with ``--section``."""
    out: list[str] = []
    keep = False
    prefixes = (f"--{section}.", f"--{section} ", f"--{section}\n")
    for line in full.splitlines():
        text = line.lstrip()
        indent = len(line) - len(text)
        if text.startswith("-") and indent <= 4:
            keep = (text + "\n").startswith(prefixes)
        elif indent == 0:
            keep = False  # a group header or description
        if keep:
            out.append(line)
    return "\n".join(out)


def help_topic(args: list[str]) -> str | None:
    """The word after -h/--help ('' when none, None when no help was asked for)."""
    for i, arg in enumerate(args):
        if arg in ("-h", "--help"):
            return args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("-") else ""
    return None
