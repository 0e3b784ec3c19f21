"""MACRec vs MQL4GRec-style vs TIGER (and MACRec's ablations) on Scientific or Instruments.

    python benchmarks/macrec_quality.py --dataset scientific [--seeds 0 1] [--max_epochs 15]
    python benchmarks/macrec_quality.py --dataset instruments --variants macrec,mql4grec,tiger_text
    python benchmarks/macrec_quality.py --dataset scientific --quick      # smoke run, ~1 min

Time (2-core CPU at load ~6, 1 thread, small T5, batch 64): Scientific ~75 s per generator epoch
with its validation ranking (3 epochs: R@10 0.046, 249 s with a 20-epoch tokenizer); the default
9 variants x 2 seeds x 15 epochs therefore take ~6 h there. Instruments has ~10x the training
rows: use a GPU (``--accelerator gpu --precision bf16-mixed``).

Scientific has aligned 512-d text and image features for every item, so the whole MACRec runs:
``rq_xmodal`` tokenizers (paper; without L_con; without L_align; without both = independent
RQ-VAEs, the MQL4GRec-style tokenizer), then the ``macrec`` generator per variant. Instruments
holds MQL4GRec's given text and image codes only: every generator row uses those same codes.

Variants (generator on the codes of the named tokenizer; ``size`` identical for every row):

* ``macrec``: paper (six tasks, implicit alignment 0.01, mean ensemble);
* ``mql4grec``: independent RQ-VAEs, same tasks, no implicit alignment, same ensemble;
* ``tiger_text`` / ``tiger_image``: seqrec (seqimage) only, one modality decoded, same T5;
* ``no_con`` / ``no_align``: tokenizer ablations; ``no_implicit`` / ``no_explicit``: generator
  ablations (``tasks: [seqrec, seqimage]``);
* ``mscgrec`` (Scientific): the chain's genrec (text + image + SASRec codes -> collab) through
  ``mscg fit`` on ``configs/scientific.yaml`` with the same T5 size.

The stages run in-process through their ``run(ctx)`` (the stage graph need not know the kinds);
finished artifacts under ``--run_root`` are reused. Writes ``benchmarks/results/
macrec_<dataset>.json``: ``variants.<name>.test.<metric>.{mean,ci_low,ci_high}`` (mean over seeds;
95% bootstrap interval over users of the per-user metric averaged over the seeds), per-seed
values, ``paired`` differences (user bootstrap) and, for Instruments, the published rows of
MACRec's Table 2 under ``published_macrec_table2`` (not ours).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from _common import append_row, write_result  # noqa: E402
from jsonargparse import Namespace  # noqa: E402

from mscg_lightning.artifacts import read_table  # noqa: E402
from mscg_lightning.cli import main  # noqa: E402
from mscg_lightning.config import stage_parser  # noqa: E402
from mscg_lightning.metrics import bootstrap_ci, per_user_metrics, target_ranks  # noqa: E402
from mscg_lightning.pipeline import StageContext  # noqa: E402

OFF_CON = {"con_weights": [0.0, 0.0, 0.0, 0.0]}
OFF_ALIGN = {"align_weight": 0.0}
TOKENIZERS = {
    "xm_macrec": {},
    "xm_no_con": OFF_CON,
    "xm_no_align": OFF_ALIGN,
    "xm_independent": {**OFF_CON, **OFF_ALIGN},
}
NO_IMPLICIT = {"implicit_weight": 0.0}
#: variant -> (tokenizer, MacrecModule overrides); on Instruments the tokenizer is the given codes
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "macrec": ("xm_macrec", {}),
    "mql4grec": ("xm_independent", NO_IMPLICIT),
    "tiger_text": ("xm_independent", {"tasks": ["seqrec"], "inference": "text", **NO_IMPLICIT}),
    "tiger_image": (
        "xm_independent",
        {"tasks": ["seqimage"], "inference": "image", **NO_IMPLICIT},
    ),
    "no_con": ("xm_no_con", {}),
    "no_align": ("xm_no_align", {}),
    "no_implicit": ("xm_macrec", NO_IMPLICIT),
    "no_explicit": ("xm_macrec", {"tasks": ["seqrec", "seqimage"]}),
}
DEFAULTS = {
    "scientific": [
        "macrec", "mql4grec", "tiger_text", "tiger_image", "mscgrec",
        "no_con", "no_align", "no_implicit", "no_explicit",
    ],
    # on given codes the MQL4GRec-style row is MACRec without L_implicit (no tokenizer here)
    "instruments": ["macrec", "mql4grec", "tiger_text", "no_explicit"],
}  # fmt: skip
GIVEN = {"text": "prepare:codes_lemb", "image": "prepare:codes_vitemb"}  # Instruments
#: reduced T5, the same for every row (small: the project's genrec-small sizes)
SIZES = {
    "small": dict(d_model=64, num_heads=4, d_kv=16, d_ff=256, encoder_layers=2, decoder_layers=2),
    "paper": dict(d_model=128, num_heads=6, d_kv=64, d_ff=1024, encoder_layers=4, decoder_layers=4),
}
PUBLISHED = {  # MACRec paper Table 2, Instruments, HR@10 / NDCG@10 (not ours)
    "SASRec": {"recall@10": 0.1233, "ndcg@10": 0.0746},
    "TIGER": {"recall@10": 0.1221, "ndcg@10": 0.0950},
    "MQL4GRec": {"recall@10": 0.1291, "ndcg@10": 0.0997},
    "MACRec": {"recall@10": 0.1363, "ndcg@10": 0.1046},
}
PAIRS = [
    ("macrec", "mql4grec"), ("mql4grec", "tiger_text"), ("macrec", "tiger_text"),
    ("macrec", "no_con"), ("macrec", "no_align"), ("macrec", "no_implicit"),
    ("macrec", "no_explicit"), ("macrec", "mscgrec"),
]  # fmt: skip
METRICS = ("recall@1", "recall@5", "recall@10", "ndcg@5", "ndcg@10")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", choices=("scientific", "instruments"), required=True)
    p.add_argument("--variants", default=None, help="comma-separated (default: all of the dataset)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--max_epochs", type=int, default=15)
    p.add_argument("--tokenizer_epochs", type=int, default=200)
    p.add_argument("--clusters", type=int, default=128, help="pseudo-label K (paper 512)")
    p.add_argument("--size", choices=tuple(SIZES), default="small")
    p.add_argument("--batch_size", type=int, default=64, help="64 on CPU (genrec-small)")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--precision", default=None, help="trainer precision, e.g. bf16-mixed")
    p.add_argument("--data_root", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--run_root", default=str(REPO / "runs" / "macrec_bench"))
    p.add_argument("--quick", action="store_true", help="smoke run: few batches, 1 epoch")
    p.add_argument("--name", default=None, help="result name (default macrec_<dataset>[_quick])")
    return p.parse_args(argv)


def trainer(args: argparse.Namespace, epochs: int, monitor: str | None = None) -> dict:
    t: dict[str, Any] = {
        "max_epochs": epochs,
        "accelerator": args.accelerator,
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
    }
    if args.precision:
        t["precision"] = args.precision
    if args.quick:
        t.update(limit_train_batches=3, limit_val_batches=1, limit_test_batches=2)
    if monitor:
        t["callbacks"] = [
            {
                "class_path": "lightning.pytorch.callbacks.EarlyStopping",
                "init_args": {"monitor": monitor, "mode": "max", "patience": 5},
            }
        ]
    return t


def run_stage(module: str, name: str, run_dir: Path, section: Namespace, inputs, seed: int):
    """Run a stage's ``run(ctx)`` into ``run_dir/name`` (skipped when already there)."""
    out = run_dir / name
    if (out / "manifest.json").is_file():
        return out
    tmp = run_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ctx = StageContext(
        name=name, section=section, config=Namespace(), run_dir=run_dir, data_root=run_dir,
        seed=seed, inputs=inputs, config_hash=f"{name}-{seed}", out_dir=tmp,
    )  # fmt: skip
    __import__(module, fromlist=["run"]).run(ctx)
    tmp.rename(out)
    shutil.rmtree(run_dir / "checkpoints" / f"{name}-{name}-{seed}", ignore_errors=True)
    return out


def upstream(args: argparse.Namespace, run_dir: Path, seed: int, stages: str) -> None:
    cmd = ["fit", "--config", str(REPO / "configs" / f"{args.dataset}.yaml")]
    cmd += ["--run_dir", str(run_dir), "--data_root", args.data_root, "--seed", str(seed)]
    if main([*cmd, "--stages", stages]) != 0:
        raise SystemExit(f"mscg fit --stages {stages} failed")


def tokenizer(args, run_dir: Path, name: str, seed: int) -> Path:
    section = stage_parser().parse_object(
        {
            "model": {
                "class_path": "mscg_lightning.stages.rq_xmodal.module.CrossModalRQModule",
                "init_args": {
                    "text_dim": 1,
                    "image_dim": 1,
                    "levels": 4,
                    "codebook_size": 256,
                    "pseudo_label_clusters": args.clusters,
                    "collision": "reassign",
                    **TOKENIZERS[name],
                },  # fmt: skip
            },
            "trainer": trainer(args, 2 if args.quick else args.tokenizer_epochs),
        }
    )
    section.data = Namespace(init_args=Namespace(batch_size=256))
    inputs = {m: run_dir / f"{m}_embed" for m in ("text", "image")}
    inputs["prepare"] = run_dir / "prepared"
    return run_stage("mscg_lightning.stages.rq_xmodal.stage", name, run_dir, section, inputs, seed)


def generator(args, run_dir: Path, variant: str, seed: int) -> Path:
    tok, overrides = VARIANTS[variant]
    init = {**SIZES[args.size], "warmup_steps": 100, **overrides}
    section = stage_parser().parse_object(
        {
            "model": {
                "class_path": "mscg_lightning.stages.genrec.macrec_module.MacrecModule",
                "init_args": init,
            },
            "data": {
                "class_path": "mscg_lightning.data.datamodule.SequenceDataModule",
                "init_args": {
                    "batch_size": args.batch_size,
                    "eval_batch_size": 256,
                    "max_history": 20,
                    "group_by_length": True,
                },  # fmt: skip
            },
            "trainer": trainer(args, 1 if args.quick else args.max_epochs, "val/ndcg@10"),
        }
    )
    inputs = {"prepare": run_dir / "prepared"}
    if args.dataset == "instruments":
        section.inputs = Namespace(**GIVEN)
    else:
        inputs.update({m: tokenizer(args, run_dir, tok, seed) / m for m in ("text", "image")})
    return run_stage(
        "mscg_lightning.stages.genrec.macrec_stage", variant, run_dir, section, inputs, seed
    )


def mscgrec(args, run_dir: Path, seed: int) -> Path:
    """The chain's MSCGRec genrec with the same T5 size (its own rq_text / rq_image / SASRec)."""
    size = SIZES[args.size]
    extra = [f"--genrec.model.init_args.{k}={v}" for k, v in size.items()]
    extra += [f"--genrec.data.init_args.batch_size={args.batch_size}"]
    extra += [f"--genrec.trainer.max_epochs={1 if args.quick else args.max_epochs}"]
    extra += [f"--genrec.trainer.accelerator={args.accelerator}"]
    if args.quick:
        for stage in ("sasrec", "rq_text", "rq_image", "rq_collab", "genrec"):
            extra += [f"--{stage}.trainer.max_epochs=1"]
        extra += ["--genrec.trainer.limit_train_batches=3", "--genrec.trainer.limit_test_batches=2"]
        extra += ["--genrec.trainer.limit_val_batches=1"]
    cmd = ["fit", "--config", str(REPO / "configs" / f"{args.dataset}.yaml")]
    cmd += ["--run_dir", str(run_dir), "--data_root", args.data_root, "--seed", str(seed)]
    stages = "prepare,sasrec,text_embed,image_embed,rq_text,rq_image,rq_collab,genrec"
    if main([*cmd, *extra, "--stages", stages]) != 0:
        raise SystemExit("mscg fit (mscgrec) failed")
    return run_dir / "genrec"


def user_ranks(artifact: Path, prepared: Path) -> tuple[np.ndarray, np.ndarray]:
    """(user_idx, 0-based target rank or -1) from an artifact's predictions and the test split."""
    preds = pq.read_table(artifact / "predictions.parquet").to_pydict()
    test = read_table(prepared / "test", columns=["user_idx", "target"]).to_pydict()
    target = dict(zip(test["user_idx"], test["target"]))
    users = np.array(preds["user_idx"])
    width = max((len(i) for i in preds["items"]), default=0)
    items = torch.full((len(users), max(width, 1)), -1, dtype=torch.long)
    for row, ranked in enumerate(preds["items"]):
        items[row, : len(ranked)] = torch.tensor(ranked, dtype=torch.long)
    ranks = target_ranks(items, torch.tensor([target[int(u)] for u in users]))
    return users, ranks.numpy()


def summarize(ranks: dict[str, list[tuple[np.ndarray, np.ndarray]]]) -> tuple[dict, dict]:
    """Per variant: mean over seeds and user-bootstrap CI; paired differences."""
    per_user: dict[str, dict[str, torch.Tensor]] = {}
    variants: dict[str, Any] = {}
    common = None
    for runs in ranks.values():
        for users, _ in runs:
            common = set(users.tolist()) if common is None else common & set(users.tolist())
    order = np.array(sorted(common or []))
    for name, runs in ranks.items():
        seeds = []
        for users, r in runs:
            pos = {int(u): i for i, u in enumerate(users)}
            r = torch.from_numpy(r[[pos[int(u)] for u in order]])
            seeds.append(per_user_metrics(r, (1, 5, 10)))
        avg = {m: torch.stack([s[m] for s in seeds]).mean(0) for m in METRICS}
        per_user[name] = avg
        test = {}
        for m in METRICS:
            low, high = bootstrap_ci(avg[m])
            test[m] = {"mean": float(avg[m].mean()), "ci_low": low, "ci_high": high}
        test["num_users"] = {"mean": float(len(order))}
        variants[name] = {
            "test": test,
            "per_seed": [{m: float(s[m].mean()) for m in METRICS} for s in seeds],
        }
    paired = {}
    for a, b in PAIRS:
        if a in per_user and b in per_user:
            paired[f"{a}-{b}"] = {}
            for m in ("recall@10", "ndcg@10"):
                diff = per_user[a][m] - per_user[b][m]
                low, high = bootstrap_ci(diff)
                paired[f"{a}-{b}"][m] = {
                    "diff": float(diff.mean()), "ci_low": low, "ci_high": high,
                    "excludes_zero": bool(low > 0 or high < 0),
                }  # fmt: skip
    return variants, paired


def main_benchmark(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    variants = args.variants.split(",") if args.variants else DEFAULTS[args.dataset]
    if args.quick and not args.variants:
        variants = ["macrec", "mql4grec", "tiger_text"]
    unknown = [v for v in variants if v not in VARIANTS and v != "mscgrec"]
    if unknown or ("mscgrec" in variants and args.dataset != "scientific"):
        raise SystemExit(f"unknown variants for {args.dataset}: {unknown or ['mscgrec']}")
    start = time.time()
    ranks: dict[str, list] = {v: [] for v in variants}
    walls: dict[str, float] = {}
    for seed in args.seeds:
        run_dir = Path(args.run_root) / f"{args.dataset}{'_quick' if args.quick else ''}-s{seed}"
        stages = "prepare" if args.dataset == "instruments" else "prepare,text_embed,image_embed"
        upstream(args, run_dir, seed, stages)
        for variant in variants:
            t0 = time.time()
            if variant == "mscgrec":
                art = mscgrec(args, run_dir, seed)
            else:
                art = generator(args, run_dir, variant, seed)
            walls[f"{variant}-s{seed}"] = round(time.time() - t0, 1)
            ranks[variant].append(user_ranks(art, run_dir / "prepared"))
            print(f"[macrec_quality] {variant} seed {seed}: {walls[f'{variant}-s{seed}']} s")
    summary, paired = summarize(ranks)
    ordering = {}
    if {"macrec", "mql4grec", "tiger_text"} <= set(summary):
        r = {
            v: summary[v]["test"]["recall@10"]["mean"] for v in ("macrec", "mql4grec", "tiger_text")
        }
        ordering["macrec>mql4grec>tiger_text (recall@10 means)"] = bool(
            r["macrec"] > r["mql4grec"] > r["tiger_text"]
        )
    payload: dict[str, Any] = {
        "dataset": args.dataset,
        "variants": summary,
        "paired": paired,
        "ordering": ordering,
        "settings": {k: v for k, v in vars(args).items() if k not in ("data_root", "run_root")},
        "model_size": SIZES[args.size],
        "wall_seconds": round(time.time() - start, 1),
        "wall_per_run": walls,
    }
    if args.dataset == "instruments":
        payload["published_macrec_table2"] = {
            "note": "MACRec paper Table 2 (Instruments, 5 seeds); not our runs",
            "rows": PUBLISHED,
        }
    name = args.name or f"macrec_{args.dataset}{'_quick' if args.quick else ''}"
    write_result(name, payload)
    head = summary.get("macrec", next(iter(summary.values())))["test"]
    append_row(
        name,
        f"macrec R@10 {head['recall@10']['mean']:.4f} N@10 {head['ndcg@10']['mean']:.4f}",
        payload["wall_seconds"],
    )
    print(json.dumps({v: s["test"]["recall@10"] for v, s in summary.items()}, indent=1))
    return payload


if __name__ == "__main__":
    main_benchmark()
