"""BBQRec's tokenizer stage (``bbq``) and its Table 4 ablations on a prepared run directory.

    python benchmarks/bbq_tokenizer.py --run_dir RUN [--epochs 20] [--seeds 0 1]
        [--modalities text image] [--name scientific] [--accelerator cpu]

``RUN`` must hold ``prepared/`` and the ``text_embed`` / ``image_embed`` artifacts named by
``--modalities`` (e.g. ``mscg fit --config configs/scientific.yaml --stages
prepare,text_embed,image_embed``). Per variant and seed the stage trains the tokenizer at the
paper's sizes (3 levels x 256, D 128, alpha 0.25, tau 0.1, beta = gamma = 1, batch 256) and
reports, from its diagnostics: collision rates of the triples and of each signal alone, the
internal SASRec encoder's validation R@10 / NDCG@10 (the exported, best-R@10 weights), the CLUB
estimate of the last epoch, and the wall time. Variants: ``bbq`` (full), ``no_mim`` (gamma 0),
``no_rec`` (beta 0), ``no_shared`` (one codebook per signal).

About 4 min per variant and seed at 6 epochs on Scientific on a loaded 2-core CPU: run the
full grid on a GPU (``--accelerator gpu``) or one variant / seed at a time.

Writes ``benchmarks/results/bbq_tokenizer_<name>.json`` (``variants.<name>.test.<metric>``
with mean and a t-interval over seeds). Not the generator comparison of the BBQRec issue: that
needs the genrec hooks (triple embedding, similarity attention).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import yaml  # noqa: E402
from _common import write_result  # noqa: E402
from jsonargparse import Namespace  # noqa: E402

from mscg_lightning.config import stage_parser  # noqa: E402
from mscg_lightning.pipeline import StageContext  # noqa: E402
from mscg_lightning.stages.bbq.stage import run  # noqa: E402

VARIANTS = {
    "bbq": {},
    "no_mim": {"gamma": 0.0},
    "no_rec": {"beta": 0.0},
    "no_shared": {"shared_codebook": False},
}
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}


def run_one(args, variant: dict, seed: int, out: Path) -> dict[str, float]:
    section = stage_parser().parse_object(
        {
            "model": {
                "class_path": "mscg_lightning.stages.bbq.module.BBQModule",
                "init_args": {"max_len": 20, **args.overrides, **variant},
            },
            "data": {
                "class_path": "mscg_lightning.data.datamodule.SequenceDataModule",
                "init_args": {"batch_size": 256, "eval_batch_size": 1024, "max_history": 20},
            },
            "trainer": {
                "accelerator": args.accelerator,
                "devices": 1,
                "max_epochs": args.epochs,
                "enable_progress_bar": False,
                "enable_model_summary": False,
                "logger": False,
            },
        }
    )
    run_dir = Path(args.run_dir)
    out.mkdir(parents=True)
    inputs = {"prepare": run_dir / "prepared"}
    inputs.update({m: run_dir / f"{m}_embed" for m in args.modalities})
    ctx = StageContext(
        name="bbq",
        section=section,
        config=Namespace(),
        run_dir=out.parent,
        data_root=run_dir,
        seed=seed,
        inputs=inputs,
        config_hash=f"{out.name}",
        out_dir=out,
    )
    start = time.perf_counter()
    run(ctx)
    wall = time.perf_counter() - start
    diag = json.loads((out / "diagnostics.json").read_text())
    row = {f"collision_{k}": v for k, v in diag["collision_rates"].items()}
    row.update({f"val_{k}": v for k, v in diag["val_exported"].items()})
    row["mim_last_epoch"] = diag["mim_per_epoch"][-1] if diag["mim_per_epoch"] else float("nan")
    row["wall_seconds"] = wall
    return row


def summarise(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        mean = statistics.fmean(values)
        half = float("nan")
        if len(values) > 1:
            half = T95.get(len(values) - 1, 2.0) * statistics.stdev(values) / len(values) ** 0.5
        out[key] = {"mean": mean, "ci_low": mean - half, "ci_high": mean + half}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", required=True)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--modalities", nargs="+", default=["text", "image"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--name", default="scientific")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--work", default="/tmp/bbq_tokenizer_bench")
    parser.add_argument(
        "--set", nargs="*", default=[], help="model.init_args overrides, KEY=VALUE (YAML values)"
    )
    args = parser.parse_args()
    args.overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    work = Path(args.work) / str(time.time_ns())
    variants, start = {}, time.perf_counter()
    for name in args.variants:
        rows = [run_one(args, VARIANTS[name], s, work / f"{name}-{s}") for s in args.seeds]
        variants[name] = {"test": summarise(rows), "per_seed": rows}
        print(name, {k: round(v["mean"], 4) for k, v in variants[name]["test"].items()}, flush=True)
    payload = {
        "description": "BBQRec tokenizer (bbq stage) and its Table 4 tokenizer ablations: "
        "collision rates of triples vs per-signal codes, internal SASRec validation metrics.",
        "settings": {
            "epochs": args.epochs,
            "seeds": args.seeds,
            "modalities": args.modalities,
            "levels": 3,
            "codebook_size": 256,
            "latent_dim": 128,
            "batch_size": 256,
            "overrides": args.overrides,
        },
        "variants": variants,
        "total_wall_seconds": time.perf_counter() - start,
    }
    print(write_result(f"bbq_tokenizer_{args.name}", payload))


if __name__ == "__main__":
    main()
