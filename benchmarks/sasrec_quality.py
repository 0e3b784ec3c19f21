"""SASRec quality on Amazon Beauty / Instruments: test Recall/NDCG/MRR@1,5,10 with 95% CIs.

    python benchmarks/sasrec_quality.py --dataset beauty
    python benchmarks/sasrec_quality.py --dataset instruments --max_epochs 100 --patience 10

Runs the real chain code: the ``prepare`` stage (``amazon2014`` / ``amazon2018`` adapter), then the
``sasrec`` stage (SASRecModule + SequenceDataModule in whole-window mode, early stopping on
validation NDCG@10, test on the best checkpoint). Writes
``benchmarks/results/sasrec_<dataset>.json`` and a row of ``benchmarks/results/README.md``.
Evaluation: full ranking over the whole catalogue, leave-one-out, history items not masked
(DESIGN.md section 5); ``test_history_masked`` is the same test with them masked, for reference.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
from _common import append_row, command_line, machine_info, write_result  # noqa: E402
from jsonargparse import Namespace  # noqa: E402

from mscg_lightning.artifacts import Manifest, atomic_artifact, stable_hash  # noqa: E402
from mscg_lightning.config import stage_parser  # noqa: E402
from mscg_lightning.data.prepare import prepare  # noqa: E402
from mscg_lightning.data.prepare_config import config_for  # noqa: E402
from mscg_lightning.pipeline import StageContext, run_stage  # noqa: E402

DATASETS = {
    # name: (adapter, folder under data_root)
    "beauty": ("amazon2014", "amazon-beauty"),
    "instruments": ("amazon2018", "amazon-instruments"),
}
#: Published SASRec rows this run must reach (R@10, N@10): TIGER paper / MACRec paper.
BARS = {
    "beauty": {"recall@10": 0.0605, "ndcg@10": 0.0318},
    "instruments": {"recall@10": 0.1233, "ndcg@10": 0.0746},
}
#: Per-dataset dropout and lr: Instruments' pair was chosen by validation NDCG@10 among 8 settings
#: (benchmarks/results/sasrec_instruments_sweep.json).
DEFAULTS = {"beauty": {"dropout": 0.5, "lr": 1e-3}, "instruments": {"dropout": 0.3, "lr": 5e-4}}
STRETCH = {"beauty": {"recall@10": 0.0740, "ndcg@10": 0.0423}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    p.add_argument("--data_root", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--run_dir", default=None, help="default: runs/benchmarks/sasrec_<dataset>")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--max_len", type=int, default=50)
    p.add_argument("--hidden_size", type=int, default=64)
    p.add_argument("--num_layers", type=int, default=2)
    p.add_argument("--num_heads", type=int, default=2)
    p.add_argument("--inner_size", type=int, default=256)
    p.add_argument("--dropout", type=float, default=None, help="default: per dataset (DEFAULTS)")
    p.add_argument("--lr", type=float, default=None, help="default: per dataset (DEFAULTS)")
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--batch_size", type=int, default=128, help="windows per batch")
    p.add_argument("--eval_batch_size", type=int, default=1024)
    p.add_argument("--train_mode", choices=["windows", "samples"], default="windows")
    p.add_argument("--max_epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=10, help="epochs without val NDCG@10 gain")
    p.add_argument("--max_minutes", type=int, default=None, help="stop training after this")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--no_row", action="store_true", help="do not append to results/README.md")
    args = p.parse_args(argv)
    for key, value in DEFAULTS[args.dataset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def sasrec_section(args: argparse.Namespace) -> Namespace:
    """The ``sasrec`` section of a chain config, as a config file would give it."""
    trainer = {
        "accelerator": args.accelerator,
        "devices": 1,
        "max_epochs": args.max_epochs,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 20,
        "callbacks": [
            {
                "class_path": "lightning.pytorch.callbacks.EarlyStopping",
                "init_args": {"monitor": "val/ndcg@10", "mode": "max", "patience": args.patience},
            }
        ],
    }
    if args.max_minutes:
        trainer["max_time"] = {"minutes": int(args.max_minutes)}
    return stage_parser().parse_object(
        {
            "model": {
                "class_path": "mscg_lightning.stages.sasrec.module.SASRecModule",
                "init_args": {
                    "hidden_size": args.hidden_size,
                    "num_layers": args.num_layers,
                    "num_heads": args.num_heads,
                    "inner_size": args.inner_size,
                    "dropout": args.dropout,
                    "max_len": args.max_len,
                    "lr": args.lr,
                    "weight_decay": args.weight_decay,
                },
            },
            "data": {
                "class_path": "mscg_lightning.data.datamodule.SequenceDataModule",
                "init_args": {
                    "batch_size": args.batch_size,
                    "eval_batch_size": args.eval_batch_size,
                    "max_history": args.max_len,
                    "train_mode": args.train_mode,
                    "group_by_length": True,
                    "seed": args.seed,
                },
            },
            "trainer": trainer,
        }
    )


def run_prepare(args: argparse.Namespace, run_dir: Path) -> tuple[Path, float]:
    """The prepared/ artifact (reused when it exists with the same config); seconds spent."""
    adapter, folder = DATASETS[args.dataset]
    cfg = config_for(adapter, folder, max_history=args.max_len)
    config_hash = stable_hash({"stage": "prepare", "config": vars(cfg)})
    out = run_dir / "prepare"
    if (out / "manifest.json").is_file() and Manifest.read(out).config_hash == config_hash:
        return out, 0.0
    start = time.perf_counter()
    with atomic_artifact(out) as tmp:
        prepare(cfg, tmp, Path(args.data_root), config_hash)
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir or REPO / "runs" / "benchmarks" / f"sasrec_{args.dataset}")
    run_dir.mkdir(parents=True, exist_ok=True)
    prepared, prepare_seconds = run_prepare(args, run_dir)

    section = sasrec_section(args)
    hparams = {
        k: v for k, v in vars(args).items() if k not in ("data_root", "run_dir", "results_dir")
    }
    config_hash = stable_hash({"stage": "sasrec", "hparams": hparams})
    ctx = StageContext(
        name="sasrec",
        section=section,
        config=Namespace(seed=args.seed),
        run_dir=run_dir,
        data_root=Path(args.data_root),
        seed=args.seed,
        inputs={"prepare": prepared},
        config_hash=config_hash,
        input_hashes={"prepare": Manifest.read(prepared).content_hash},
    )
    if not args.resume:  # a fresh run unless asked to continue: the result is then reproducible
        shutil.rmtree(ctx.checkpoint_dir, ignore_errors=True)
    start = time.perf_counter()
    run_stage(ctx)
    wall = time.perf_counter() - start
    metrics = json.loads((run_dir / "sasrec" / "metrics.json").read_text())

    test = metrics["test"]
    bar = BARS[args.dataset]
    result = {
        "benchmark": "sasrec_quality",
        "dataset": args.dataset,
        "protocol": "leave-one-out, full ranking over all items, history items not masked",
        "test": test,
        "test_history_masked": metrics.get("test_history_masked"),
        "valid": metrics["valid"],
        "epochs": metrics["epochs"],
        "best_val_ndcg@10": metrics["best_val_ndcg@10"],
        "wall_seconds": wall,
        "stage_wall_seconds": metrics["wall_seconds"],
        "prepare_seconds": prepare_seconds,
        "hyperparameters": hparams,
        "bars": bar,
        "stretch": STRETCH.get(args.dataset),
        "meets_bar": all(test[k]["mean"] >= v for k, v in bar.items()),
        "run_dir": str(run_dir),
        "machine": machine_info(),
        "command": command_line(),
    }
    path = write_result(f"sasrec_{args.dataset}", result, Path(args.results_dir))
    r10, n10 = test["recall@10"], test["ndcg@10"]
    summary = (
        f"{args.dataset}: R@10 {r10['mean']:.4f} [{r10['ci_low']:.4f}, {r10['ci_high']:.4f}], "
        f"N@10 {n10['mean']:.4f} [{n10['ci_low']:.4f}, {n10['ci_high']:.4f}], "
        f"{metrics['epochs']} epochs, bar {'met' if result['meets_bar'] else 'NOT met'}"
    )
    if not args.no_row:
        append_row("sasrec_quality", summary, wall, result["machine"], result["command"])
    print(summary)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
