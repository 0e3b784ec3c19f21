"""GenRec quality: SASRec, MSCGRec, TIGER and the Table 3a ablations of configs/compare/<dataset>.yaml.

    python benchmarks/genrec_quality.py --dataset instruments
    python benchmarks/genrec_quality.py --dataset beauty --variants mscgrec,tiger
    python benchmarks/genrec_quality.py --dataset scientific --jobs 2 --max_epochs 15 \\
        --overlay configs/model/genrec-small.yaml
    python benchmarks/genrec_quality.py --dataset instruments --seeds 0 1 --max_epochs 4 \\
        --variants mscgrec,no_const_train,no_pos_emb,tiger --overlay configs/model/genrec-small.yaml

A thin wrapper around ``mscg fit --config configs/compare/<dataset>.yaml``: the upstream stages
(prepare, SASRec, the quantizers) run once in one run directory, then every selected genrec
instance (``--variants``, default all), ``--jobs`` of them at once as separate ``mscg
<instance>`` processes writing their own artifacts in the same run directory (nothing is
copied). The table is :mod:`mscg_lightning.compare`'s: full-ranking test Recall(=HR)/NDCG/MRR at
1, 5, 10 with bootstrap 95% CIs and paired differences vs the config's reference, next to the
published rows of DESIGN.md section 6. With ``--seeds`` the whole chain runs once per seed (run
directory ``<run_dir>-s<seed>``, ``mscg fit --seed``) and each user's metric is averaged over the
seeds before the bootstrap (:func:`mscg_lightning.compare.average_seeds`); ``per_seed`` keeps
each seed's means. ``--share_upstream`` varies only the genrec instances' seeds: every seed
reads the first seed's prepare / SASRec / quantizer artifacts (symlinked), so every row and
seed sees the same codes. With ``--seeds`` and ``--jobs``, the upstream stages of every seed
run first, then all seeds' genrec instances share one pool of ``--jobs`` processes (logs in
``<seed dir>/logs/<instance>.log``). An ``--overlay`` with a ``genrec:`` section (e.g.
configs/model/genrec-small.yaml) applies to every genrec instance. Writes
``benchmarks/results/genrec_<dataset>.json``: ``variants.<name>.test.<metric>.{mean, ci_low,
ci_high}`` (+ ``vs_reference``), ``machine``, ``command``, ``wall_seconds``. ``--archive DIR``
keeps each trained row's test ranks in DIR (:mod:`_row_archive`), so a comparison whose seeds
take more than one session (run directories do not outlive one) is assembled from rows trained
in several: rows found there are restored, not retrained, once the rebuilt upstream tables are
byte-identical to those the rows read.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import append_row, artifacts_made_at, run_mscg_processes, write_result  # noqa: E402
from _row_archive import archive_rows, restore_rows  # noqa: E402

from mscg_lightning.cli import main, parse_chain  # noqa: E402
from mscg_lightning.compare import (  # noqa: E402
    average_seeds,
    compare,
    format_terminal,
    load_row,
)
from mscg_lightning.pipeline import artifact_dir  # noqa: E402

DATASETS = ("tiny", "ml100k", "beauty", "instruments", "scientific")
PUBLISHED = {
    "instruments": {
        "SASRec (MACRec paper)": {"recall@10": 0.1233, "ndcg@10": 0.0746},
        "TIGER (MACRec paper)": {"recall@10": 0.1221, "ndcg@10": 0.0950},
        "MQL4GRec (bar)": {"recall@10": 0.1291, "ndcg@10": 0.0997},
        "MACRec (moonshot)": {"recall@10": 0.1363, "ndcg@10": 0.1046},
    },
    "beauty": {
        "TIGER": {"recall@10": 0.0648, "ndcg@10": 0.0384},
        "LETTER": {"recall@10": 0.0672, "ndcg@10": 0.0364},
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument(
        "--variants", default=None, help="comma-separated model instances (default: all)"
    )
    p.add_argument("--run_dir", default=None, help="default: runs/benchmarks/genrec_<dataset>")
    p.add_argument("--data_root", default=None, help="default: the config's data_root")
    p.add_argument(
        "--overlay", action="append", default=[], help="extra --config files (trainer, model)"
    )
    p.add_argument("--max_time", default=None, help="genrec trainer.max_time, DD:HH:MM:SS")
    p.add_argument("--max_epochs", type=int, default=None, help="genrec trainer.max_epochs")
    p.add_argument("--precision", default=None, help="genrec trainer.precision, e.g. bf16-mixed")
    p.add_argument("--sasrec_epochs", type=int, default=None, help="cap SASRec's max_epochs")
    p.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="one chain per seed (default: config's)"
    )
    p.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--name", default=None, help="result file name (default genrec_<dataset>)")
    p.add_argument(
        "--note",
        default=None,
        help="provenance stored as `note` in the JSON (e.g. which session trained which seed)",
    )
    p.add_argument("--jobs", type=int, default=1, help="genrec instances trained at once")
    p.add_argument(
        "--archive",
        default=None,
        help="folder (e.g. benchmarks/results/rows/<name>) keeping each trained row's test ranks: "
        "rows found there are restored into a rebuilt run directory instead of retrained, once "
        "the upstream tables they read are byte-identical; new rows are added",
    )
    p.add_argument(
        "--share_upstream",
        action="store_true",
        help="seeds vary the genrec instances only (`--<instance>.seed`); every seed reads the "
        "first seed's upstream artifacts (prepare, SASRec, quantizers: the same codes)",
    )
    p.add_argument("extra", nargs="*", help="more `mscg fit` overrides, after --")
    return p.parse_args(argv)


def _overlays(files: list[str], genrecs: list[str], folder: Path) -> list[str]:
    """``--config`` arguments; a ``genrec:`` section of an overlay goes to every genrec instance."""
    args = []
    for name in files:
        data = yaml.safe_load(Path(name).read_text()) or {}
        if "genrec" in data and "genrec" not in genrecs:
            section = data.pop("genrec")
            data.update({g: section for g in genrecs})
            name = str(folder / Path(name).name)
            Path(name).write_text(yaml.safe_dump(data))
        args += ["--config", name]
    return args


def main_benchmark(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    config_file = REPO / "configs" / "compare" / f"{args.dataset}.yaml"
    run_dir = Path(args.run_dir or REPO / "runs" / "benchmarks" / f"genrec_{args.dataset}")
    _, config, graph = parse_chain("fit", ["--config", str(config_file)])
    rows = graph.model_rows()
    genrecs = [n for n in rows if graph.instances[n].kind.name == "genrec"]
    selected = args.variants.split(",") if args.variants else rows
    unknown = [v for v in selected if v not in rows]
    if unknown:
        raise SystemExit(
            f"--variants {unknown[0]} is not a model instance of {config_file}: {rows}"
        )
    tmp = tempfile.TemporaryDirectory()
    base = ["--config", str(config_file), *_overlays(args.overlay, genrecs, Path(tmp.name))]
    if args.data_root:
        base += ["--data_root", args.data_root]
    for name in (v for v in selected if v in genrecs):
        if args.max_time:
            base += [f"--{name}.trainer.max_time", args.max_time]
        if args.max_epochs:
            base += [f"--{name}.trainer.max_epochs", str(args.max_epochs)]
        if args.precision:
            base += [f"--{name}.trainer.precision", args.precision]
    if args.sasrec_epochs and "sasrec" in graph.instances:
        base += ["--sasrec.trainer.max_epochs", str(args.sasrec_epochs)]
    base += args.extra
    start = time.perf_counter()
    trained = [v for v in selected if v in genrecs]
    upstream = [n for n in graph.closure(selected) if n not in trained or args.jobs <= 1]
    per_seed: dict[str, list] = {v: [] for v in selected}
    run_dirs: list[str] = []
    generators: dict[tuple[Path, str], list[str]] = {}
    restored: dict[str, list[str]] = {}
    for seed in args.seeds or [None]:
        seed_dir = run_dir if seed is None else Path(f"{run_dir}-s{seed}")
        seed_args = [*base, "--run_dir", str(seed_dir)]
        if seed is not None and args.share_upstream:
            seed_args += [a for n in trained for a in (f"--{n}.seed", str(seed))]
            if run_dirs:
                _link_upstream(
                    Path(run_dirs[0]), seed_dir, [n for n in upstream if n not in trained]
                )
        elif seed is not None:
            seed_args += ["--seed", str(seed)]
        before = [n for n in upstream if n not in trained]
        if before and main(["fit", *seed_args, "--stages", ",".join(before)]) != 0:
            raise SystemExit(f"mscg fit failed ({seed_dir})")
        if args.archive:
            restored[str(seed_dir)] = restore_rows(seed_dir, trained, graph, Path(args.archive))
        now = [n for n in upstream if n in trained]
        if now and main(["fit", *seed_args, "--stages", ",".join(now)]) != 0:
            raise SystemExit(f"mscg fit failed ({seed_dir})")
        # with --jobs, every seed's genrec instances share one pool of processes
        generators.update({(seed_dir, name): [name, *seed_args] for name in trained})
        run_dirs.append(str(seed_dir))
    if args.jobs > 1 and generators:
        _run_parallel(generators, args.jobs)
    for seed_dir in map(Path, run_dirs):
        for name in selected:
            per_seed[name].append(load_row(name, artifact_dir(seed_dir, name)))
        if args.archive:
            archive_rows(seed_dir, trained, graph, Path(args.archive))
    reference = graph.reference if graph.reference in selected else None
    result = compare([average_seeds(per_seed[v]) for v in selected], reference)
    print(format_terminal(result))
    payload = {
        "dataset": args.dataset,
        "config": str(config_file.relative_to(REPO)),
        "run_dirs": run_dirs,
        "seeds": args.seeds,
        "reference": result["reference"],
        "variants": {
            name: {
                "label": row["label"],
                "test": row["test"],
                **_diff(row),
                "per_seed": [
                    {m: float(v.mean()) for m, v in r.values.items()} for r in per_seed[name]
                ],
            }
            for name, row in result["rows"].items()
        },
        "published": PUBLISHED.get(args.dataset, {}),
        "wall_seconds": time.perf_counter() - start,
        "artifacts_made_at": {
            d: artifacts_made_at(Path(d), graph.closure(selected)) for d in run_dirs
        },
        "protocol": "full ranking over the catalogue, leave-one-out, one hit per user, "
        "history items not masked",
    }
    if args.archive:  # rows restored from the archive keep their manifests' created_at
        payload["archive"] = {"path": args.archive, "restored": restored}
    if args.note:
        payload["note"] = args.note
    name = args.name or f"genrec_{args.dataset}"
    path = write_result(name, payload, Path(args.results_dir))
    summary = ", ".join(
        f"{v} R@10 {r['test']['recall@10']['mean']:.4f} N@10 {r['test']['ndcg@10']['mean']:.4f}"
        for v, r in payload["variants"].items()
    )
    append_row(name, summary, payload["wall_seconds"], table=Path(args.results_dir) / "README.md")
    print(f"[genrec_quality] wrote {path}")
    return payload


def _diff(row: dict) -> dict:
    return {"vs_reference": row["vs_reference"]} if "vs_reference" in row else {}


def _link_upstream(first: Path, seed_dir: Path, names: list[str]) -> None:
    """Symlink the first seed's upstream artifacts into ``seed_dir`` (then "up to date")."""
    for name in names:
        link = artifact_dir(seed_dir, name)
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(artifact_dir(first, name).resolve(), target_is_directory=True)


def _run_parallel(commands: dict[tuple[Path, str], list[str]], jobs: int) -> None:
    """``mscg <instance> ... --run_dir <seed dir>`` for each (seed dir, instance), ``jobs``
    processes at once; logs in ``<seed dir>/logs/<instance>.log``."""
    root = next(iter(commands))[0].parent
    named = {f"{d.name}/logs/{name}": cmd for (d, name), cmd in commands.items()}
    codes = run_mscg_processes(named, jobs, root, "genrec_quality")
    failed = [name for name, code in codes.items() if code != 0]
    if failed:
        raise SystemExit(
            f"mscg failed for {failed[0]} (exit {codes[failed[0]]}); log: {root / failed[0]}.log"
        )


if __name__ == "__main__":
    main_benchmark()
