"""GenRec quality on Amazon Instruments / Beauty: MSCGRec, TIGER and the Table 3a ablations.

    python benchmarks/genrec_quality.py --dataset instruments
    python benchmarks/genrec_quality.py --dataset beauty --variants mscgrec,tiger_text
    python benchmarks/genrec_quality.py --dataset instruments --overlay configs/trainer/gpu-ddp-bf16.yaml

Runs the real chain (``mscg fit`` on ``configs/<dataset>.yaml``): prepare, SASRec, the rq
tokenizers, then one genrec stage per variant (the upstream stages are shared and skipped when up
to date). Full-ranking test Recall(=HR)/NDCG/MRR@1,5,10 with bootstrap 95% CIs, next to the
published rows of DESIGN.md section 6. Writes ``benchmarks/results/genrec_<dataset>.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import append_row, write_result  # noqa: E402

from mscg_lightning.cli import main  # noqa: E402

#: Scientific's three modalities: the given text and image features quantized by rq, and SASRec.
_SCI = {"text": "rq_text", "image": "rq_image", "collab": "rq_collab"}

#: The TIGER preset (T5 bias, full-vocabulary loss, masked-softmax decoding). ``tiger_text`` is
#: MSCGRec's model on the text codes alone (dual bias, constrained training), not TIGER.
_TIGER = ["--config", str(REPO / "configs" / "model" / "tiger.yaml")]
#: "w/o Const. Train." is the paper's unconstrained model: one softmax over the whole output
#: vocabulary (decoded with beam_scoring auto = masked_softmax).
_NO_CONST = ["--genrec.model.init_args.constrained_training", "full_vocab"]

#: Codes sources of each variant's modalities (-> target), and extra model overrides.
VARIANTS = {
    "instruments": {
        # MQL4GRec's given text (LLaMA) + image (ViT-L/14) codes, our SASRec collaborative codes
        "mscgrec": (
            {"text": "prepare:codes_lemb", "image": "prepare:codes_vitemb", "collab": "rq_collab"},
            "collab",
            [],
        ),
        # our own MiniLM text codes in place of the given text codes
        "mscgrec_minilm": (
            {"text": "rq_text", "image": "prepare:codes_vitemb", "collab": "rq_collab"},
            "collab",
            [],
        ),
        "tiger_text": ({"text": "prepare:codes_lemb"}, "text", []),
        "tiger": ({"text": "prepare:codes_lemb"}, "text", _TIGER),
        "no_pos_emb": (
            {"text": "prepare:codes_lemb", "image": "prepare:codes_vitemb", "collab": "rq_collab"},
            "collab",
            ["--genrec.model.init_args.position_bias", "t5"],
        ),
        "no_const_train": (
            {"text": "prepare:codes_lemb", "image": "prepare:codes_vitemb", "collab": "rq_collab"},
            "collab",
            _NO_CONST,
        ),
        "masking": (
            {"text": "prepare:codes_lemb", "image": "prepare:codes_vitemb", "collab": "rq_collab"},
            "collab",
            ["--genrec.model.init_args.mask_prob", "0.75"],
        ),
    },
    # Small (2,928 users): Table 3a at reduced scale on a CPU. Given 512-d text/image features.
    "scientific": {
        "mscgrec": (_SCI, "collab", []),
        "tiger_text": ({"text": "rq_text"}, "text", []),
        "tiger": ({"text": "rq_text"}, "text", _TIGER),
        "no_pos_emb": (_SCI, "collab", ["--genrec.model.init_args.position_bias", "t5"]),
        "no_const_train": (_SCI, "collab", _NO_CONST),
        "masking": (_SCI, "collab", ["--genrec.model.init_args.mask_prob", "0.75"]),
    },
    "beauty": {
        "mscgrec": ({"text": "rq_text", "collab": "rq_collab"}, "collab", []),
        "tiger_text": ({"text": "rq_text"}, "text", []),
        "tiger": ({"text": "rq_text"}, "text", _TIGER),
    },
}
PUBLISHED = {
    "instruments": {
        "SASRec (MACRec paper)": {"recall@10": 0.1233, "ndcg@10": 0.0746},
        "TIGER (MACRec paper)": {"recall@10": 0.1221, "ndcg@10": 0.0950},
        "MQL4GRec (bar)": {"recall@10": 0.1291, "ndcg@10": 0.0997},
        "MACRec (moonshot)": {"recall@10": 0.1363, "ndcg@10": 0.1046},
    },
    "scientific": {},
    "beauty": {
        "TIGER": {"recall@10": 0.0648, "ndcg@10": 0.0384},
        "LETTER": {"recall@10": 0.0672, "ndcg@10": 0.0364},
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", choices=sorted(VARIANTS), required=True)
    p.add_argument("--variants", default=None, help="comma-separated (default: all of the dataset)")
    p.add_argument("--run_dir", default=None, help="default: runs/benchmarks/genrec_<dataset>")
    p.add_argument("--data_root", default=str(REPO.parent / "shared" / "data"))
    p.add_argument(
        "--overlay", action="append", default=[], help="extra --config files (trainer overlays)"
    )
    p.add_argument(
        "--max_time", default=None, help="genrec trainer.max_time per variant, DD:HH:MM:SS"
    )
    p.add_argument("--max_epochs", type=int, default=None)
    p.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--name", default=None, help="result file name (default genrec_<dataset>)")
    p.add_argument(
        "--jobs", type=int, default=1, help="variants trained at once (separate processes)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="with --jobs > 1: keep existing variant run dirs, so an interrupted variant resumes "
        "from its last checkpoint instead of starting anew",
    )
    p.add_argument("extra", nargs="*", help="more `mscg fit` overrides, after --")
    return p.parse_args(argv)


def upstream_stages(sources: dict[str, str]) -> list[str]:
    """The stages a variant's genrec needs, in no particular order (the chain orders them)."""
    stages = {"prepare", "sasrec", "rq_collab"}
    stages |= {s.split(":")[0] for s in sources.values() if not s.startswith("prepare")}
    if "rq_text" in stages:
        stages.add("text_embed")
    if "rq_image" in stages:
        stages.add("image_embed")
    return sorted(stages)


def variant_command(base: list[str], variant: str, dataset: str, run_dir: Path, stages: list[str]):
    """The `mscg fit` arguments of one variant."""
    sources, target, overrides = VARIANTS[dataset][variant]
    return [
        "fit",
        *base,
        "--run_dir",
        str(run_dir),
        "--genrec.modalities",
        json.dumps(sources),
        "--genrec.target",
        target,
        *overrides,
        "--stages",
        ",".join(stages),
    ]


def run_parallel(
    base: list[str],
    dataset: str,
    variants: list[str],
    run_dir: Path,
    jobs: int,
    resume: bool = False,
) -> dict[str, tuple[Path, float]]:
    """Upstream stages once in ``run_dir``, then each variant's genrec in its own copy of it.

    Up to ``jobs`` variants train at once as separate processes (a small T5 leaves most of a
    large GPU idle); returns each variant's run directory and wall seconds. With ``resume`` an
    existing copy is kept, so ``mscg fit`` continues its genrec from the last checkpoint.
    """
    upstream = sorted({s for v in variants for s in upstream_stages(VARIANTS[dataset][v][0])})
    first = variants[0]
    if main(variant_command(base, first, dataset, run_dir, upstream)) != 0:
        raise SystemExit("upstream stages failed")
    skip = shutil.ignore_patterns("checkpoints", "tensorboard", "variants", "genrec*")
    pending, running, done = list(variants), {}, {}
    while pending or running:
        while pending and len(running) < jobs:
            variant = pending.pop(0)
            vdir = run_dir / "variants" / variant
            if vdir.exists() and not resume:
                shutil.rmtree(vdir)
            if not vdir.exists():
                shutil.copytree(run_dir, vdir, ignore=skip)
            cmd = variant_command(base, variant, dataset, vdir, [*upstream, "genrec"])
            log = (run_dir / "variants" / f"{variant}.log").open("w")
            proc = subprocess.Popen(
                [sys.executable, "-m", "mscg_lightning", *cmd], stdout=log, stderr=log
            )
            running[variant] = (proc, time.perf_counter(), vdir)
            print(f"[genrec_quality] {variant}: started (log {log.name})", flush=True)
        time.sleep(5)
        for variant, (proc, start, vdir) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[variant]
            if proc.returncode != 0:
                print(f"[genrec_quality] {variant}: mscg fit exited {proc.returncode}", flush=True)
                continue
            done[variant] = (vdir, time.perf_counter() - start)
    return done


def main_benchmark(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    run_dir = Path(args.run_dir or REPO / "runs" / "benchmarks" / f"genrec_{args.dataset}")
    variants = args.variants.split(",") if args.variants else list(VARIANTS[args.dataset])
    base = ["--config", str(REPO / "configs" / f"{args.dataset}.yaml")]
    for overlay in args.overlay:
        base += ["--config", overlay]
    base += ["--data_root", args.data_root, *args.extra]
    if args.max_time:
        base += ["--genrec.trainer.max_time", args.max_time]
    if args.max_epochs:
        base += ["--genrec.trainer.max_epochs", str(args.max_epochs)]
    start_all = time.perf_counter()
    if args.jobs > 1:
        finished = run_parallel(base, args.dataset, variants, run_dir, args.jobs, args.resume)
    else:
        finished = {}
        for variant in variants:
            stages = [*upstream_stages(VARIANTS[args.dataset][variant][0]), "genrec"]
            start = time.perf_counter()
            code = main(variant_command(base, variant, args.dataset, run_dir, stages))
            if code != 0:
                raise SystemExit(f"variant {variant}: mscg fit exited {code}")
            # the next variant overwrites run_dir/genrec: keep this one's metrics now
            kept = run_dir / f"genrec_metrics_{variant}.json"
            shutil.copy(run_dir / "genrec" / "metrics.json", kept)
            finished[variant] = (kept, time.perf_counter() - start)
    rows = {}
    for variant, (where, seconds) in finished.items():
        path = where if where.suffix == ".json" else where / "genrec" / "metrics.json"
        metrics = json.loads(path.read_text())
        rows[variant] = {**metrics, "wall_seconds": seconds}
        print(
            f"[genrec_quality] {variant}: R@10 {metrics['test']['recall@10']['mean']:.4f} "
            f"N@10 {metrics['test']['ndcg@10']['mean']:.4f}"
        )
    sasrec = json.loads((run_dir / "sasrec" / "metrics.json").read_text())
    payload = {
        "dataset": args.dataset,
        "variants": rows,
        "sasrec_same_split": sasrec.get("test"),
        "published": PUBLISHED[args.dataset],
        "wall_seconds": time.perf_counter() - start_all,
        "protocol": "full ranking over the catalogue, leave-one-out, one hit per user, history items not masked",
    }
    name = args.name or f"genrec_{args.dataset}"
    path = write_result(name, payload, Path(args.results_dir))
    summary = ", ".join(
        f"{v} R@10 {r['test']['recall@10']['mean']:.4f} N@10 {r['test']['ndcg@10']['mean']:.4f}"
        for v, r in rows.items()
    )
    append_row(name, summary, payload["wall_seconds"], table=Path(args.results_dir) / "README.md")
    print(f"[genrec_quality] wrote {path}")
    return payload


if __name__ == "__main__":
    main_benchmark()
