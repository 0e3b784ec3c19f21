"""Does RQ-DINO learn semantic codes? CIFAR-10 codes vs class labels, against post-hoc RQ.

On the real labelled images of ``../shared/data/cifar10-test`` (10,000 32x32 JPEGs), split with
a seeded permutation into 8,000 training and 2,000 evaluation images, a small ViT is trained
from scratch with RQ-DINO (``RQDinoModule`` + ``ImageDataModule``, Lightning, CPU) for a bounded
time; the schedules span the number of steps that fit in ``--minutes`` (measured on a few
calibration steps). Then, on the evaluation images (eval transform, student CLS):

* ``rq_dino``: the codes of the quantizer trained inside RQ-DINO;
* ``post_hoc_untrained``: the same ViT architecture at its random initialisation, frozen, CLS
  -> residual k-means (``ResidualQuantizer.init_codebooks``, fitted on the training split);
* ``post_hoc_trained``: the RQ-DINO-trained backbone, frozen, CLS -> residual k-means.

Reported per method: NMI (arithmetic normalisation, as scikit-learn's default) and purity
between the labels and the level-1 codes, the level-1..2 prefix and the full L-code prefix
(with L x K = 3 x 16 most full prefixes are near-unique on 2,000 images, which inflates both
scores: the level-1 figures are the comparison that matters), plus the code usage and
perplexity of level 1 and a 20-NN cosine classifier accuracy of the two backbones' CLS
embeddings (train -> eval) as a check that the representation itself learned.

Default model: ViT hidden 96, 4 layers, 3 heads, patch 8 (32-px global crops = 4 x 4 patches,
16-px local crops = 2 x 2), 1,024 prototypes, head 512/256, RQ 3 x 16, batch 64; DINOv2 loss
weights and schedules (lr warm-up 10% of the run, prototypes frozen for the first 3%), with two
changes for a run of a few thousand steps from scratch:

* teacher temperature 0.02 throughout (DINOv2: 0.04 -> 0.07). At initialisation the centred
  teacher logits (cosines with 1,024 random prototypes) spread by about 0.045, so at 0.04-0.07
  the teacher targets are almost uniform (entropy 6.3-6.7 of ln 1024 = 6.93 at step 0, 6.9
  after a few hundred steps): the student learns to output flat distributions, the EMA teacher
  follows, and the DINO loss stays at ln 1024 for the whole budget;
* the codebooks are refitted by residual k-means on the last 4,096 student CLS embeddings at 10%
  and 25% of the run (``rq_refit_epochs``). The single k-means init on the first batch of an
  untrained ViT leaves the level-1 codes crowded where the embeddings were at step 0; as the
  embeddings move, a few codes take every image (level-1 perplexity 3-5 of 16 on the eval
  images) and the EMA count of an abandoned code needs hundreds of steps to fall below the
  dead-code threshold.

The Gaussian blur's sigma scales with the crop size (DINOv2's 0.1-2 px are for 224-px crops).
One torch thread: on a CPU shared with other jobs, two threads were about 10x slower per step
than one (OpenMP threads wait on each other when descheduled).

The post-hoc baselines are fitted with ``--kmeans_seeds`` k-means seeds (spread reported), and
the level-1 NMI differences get a 95% bootstrap interval over the evaluation images.

    python benchmarks/dino_rq_semantics.py            # ~25 min -> results/dino_rq_semantics.json
    python benchmarks/dino_rq_semantics.py --quick    # ~2 min -> results/dino_rq_semantics_quick.json

``--protocol finetune`` runs the paper's own protocol instead (DINO pretraining, then post-hoc RQ
vs RQ-DINO fine-tuning vs DINO fine-tuning + post-hoc RQ; ``dino_rq_protocol.py``) and adds its
``paper_protocol`` and ``variants`` to the same JSON, keeping the from-scratch rows.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from _common import RESULTS, append_row, machine_info, write_result  # noqa: E402

if TYPE_CHECKING:
    from mscg_lightning.stages.dino_rq.data import ImageDataModule

DATA = REPO.parent / "shared" / "data" / "cifar10-test"


# -- clustering scores (numpy, small enough to check by hand) ----------------------------------
def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def contingency(labels: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Counts ``[n_clusters, n_labels]`` of (cluster, label) pairs; ids relabelled densely."""
    _, y = np.unique(labels, return_inverse=True)
    _, c = np.unique(clusters, return_inverse=True)
    table = np.zeros((c.max() + 1, y.max() + 1), dtype=np.int64)
    np.add.at(table, (c, y), 1)
    return table


def nmi(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Normalised mutual information ``I(Y; C) / ((H(Y) + H(C)) / 2)``, in [0, 1]."""
    table = contingency(labels, clusters).astype(np.float64)
    n = table.sum()
    h_y, h_c = _entropy(table.sum(0)), _entropy(table.sum(1))
    joint = table[table > 0] / n
    outer = (table.sum(1, keepdims=True) @ table.sum(0, keepdims=True))[table > 0] / n**2
    mutual = float((joint * np.log(joint / outer)).sum())
    denom = (h_y + h_c) / 2
    return mutual / denom if denom > 0 else 1.0


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Share of items whose label is the majority label of their cluster."""
    table = contingency(labels, clusters)
    return float(table.max(1).sum() / table.sum())


def prefix_ids(codes: np.ndarray, levels: int) -> np.ndarray:
    """One cluster id per row for the first ``levels`` codes of ``codes`` [N, L]."""
    _, ids = np.unique(codes[:, :levels], axis=0, return_inverse=True)
    return ids.reshape(-1)


def knn_accuracy(
    train: torch.Tensor, train_y: np.ndarray, test: torch.Tensor, test_y: np.ndarray, k: int = 20
) -> float:
    """Majority vote of the ``k`` nearest training rows (cosine) for each test row."""
    a = torch.nn.functional.normalize(train.float(), dim=1)
    b = torch.nn.functional.normalize(test.float(), dim=1)
    neighbours = (b @ a.T).topk(k, dim=1).indices.numpy()
    votes = train_y[neighbours]
    pred = np.array([np.bincount(v, minlength=train_y.max() + 1).argmax() for v in votes])
    return float((pred == test_y).mean())


def code_scores(labels: np.ndarray, codes: np.ndarray, codebook_size: int) -> dict[str, float]:
    """NMI / purity at level 1, levels 1-2 and all levels, and level-1 usage / perplexity."""
    out: dict[str, float] = {}
    levels = codes.shape[1]
    for name, depth in (("l1", 1), ("l12", min(2, levels)), ("full", levels)):
        ids = prefix_ids(codes, depth)
        out[f"nmi_{name}"] = round(nmi(labels, ids), 4)
        out[f"purity_{name}"] = round(purity(labels, ids), 4)
        out[f"distinct_{name}"] = int(ids.max() + 1)
    counts = np.bincount(codes[:, 0], minlength=codebook_size)
    out["usage_l1"] = int((counts > 0).sum())
    out["perplexity_l1"] = round(math.exp(_entropy(counts)), 2)
    return out


# -- the run ---------------------------------------------------------------------------------
def load_split(data: Path, n_train: int, n_eval: int, seed: int):
    """(train files, train labels, eval files, eval labels) from a seeded permutation."""
    with open(data / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    order = np.random.default_rng(seed).permutation(len(rows))
    files = np.array([str(data / r["file"]) for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    tr, ev = order[:n_train], order[n_train : n_train + n_eval]
    return files[tr].tolist(), labels[tr], files[ev].tolist(), labels[ev]


def vit_config(hidden: int, layers: int, heads: int, patch: int, layerscale: float) -> dict:
    """The small ViT of both protocols (this one and ``dino_rq_protocol.py``) on 32 x 32 images."""
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "patch_size": patch,
        "image_size": 32,
        "mlp_ratio": 4,
        "layerscale_value": layerscale,
    }


def training_images(files: list[str], batch_size: int, workers: int) -> ImageDataModule:
    """The DINO training crops of both protocols, set up: 32 px global, 4 local of 16 px."""
    from mscg_lightning.stages.dino_rq.data import ImageDataModule

    data = ImageDataModule(
        image_paths=files,
        batch_size=batch_size,
        num_workers=workers,
        global_size=32,
        local_size=16,
        n_local=4,
    )
    data.setup()
    return data


def embed(
    backbone: torch.nn.Module, files: list[str], size: int, device: torch.device
) -> torch.Tensor:
    """CLS embeddings [N, D] of image files with the eval transform (as the stage exports)."""
    from mscg_lightning.stages.dino_rq.data import ImageDataModule, embed_images

    data = ImageDataModule(image_paths=files, batch_size=256, global_size=size)
    data.setup()
    item_idx, emb, failed = embed_images(backbone, data, device)
    if failed or len(item_idx) != len(files):
        raise RuntimeError(f"{len(files) - len(item_idx)} images could not be read")
    return emb


def post_hoc_codes(
    train_emb: torch.Tensor, eval_emb: torch.Tensor, levels: int, k: int, seed: int
) -> np.ndarray:
    """Residual k-means fitted on the training embeddings; codes [N_eval, L] of the eval ones."""
    from mscg_lightning.stages.rq.quantizer import ResidualQuantizer

    torch.manual_seed(seed)
    rq = ResidualQuantizer(train_emb.shape[1], levels=levels, codebook_size=k, kmeans_iters=25)
    rq.init_codebooks(train_emb)
    return rq.encode(eval_emb).numpy()


def bootstrap_nmi_difference(
    labels: np.ndarray, a: np.ndarray, b: np.ndarray, n: int = 200, seed: int = 0
) -> tuple[float, float]:
    """95% interval of ``nmi(labels, a) - nmi(labels, b)`` over bootstrap resamples of the rows.

    Both code columns are scored on the same resampled rows, so the interval reflects how much
    the difference depends on which evaluation images were drawn.
    """
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        idx = rng.integers(0, len(labels), len(labels))
        diffs.append(nmi(labels[idx], a[idx]) - nmi(labels[idx], b[idx]))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return round(float(low), 4), round(float(high), 4)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="training time budget")
    parser.add_argument(
        "--steps", type=int, default=None, help="fixed optimiser steps (default: fit --minutes)"
    )
    parser.add_argument("--quick", action="store_true", help="1-2 min smoke run")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", type=str, default=None, help="result file name (no .json)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the result files")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)"
    )
    parser.add_argument("--accelerator", default="cpu", help="cpu, or gpu (one CUDA device)")
    parser.add_argument("--workers", type=int, default=1, help="augmentation worker processes")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--codebook", type=int, default=16)
    parser.add_argument("--vit", type=str, default="96,4,3,8", help="hidden,layers,heads,patch")
    parser.add_argument("--layerscale", type=float, default=1.0, help="ViT LayerScale init")
    parser.add_argument("--prototypes", type=int, default=1024)
    parser.add_argument("--head_hidden", type=int, default=512, help="DINO/iBOT head MLP width")
    parser.add_argument("--rq_decay", type=float, default=0.99)
    parser.add_argument("--base_lr", type=float, default=0.004, help="lr for a batch of 1024")
    parser.add_argument("--momentum", type=float, default=0.992, help="teacher EMA momentum")
    parser.add_argument(
        "--teacher_temp", type=float, default=0.02, help="teacher temperature (after warm-up)"
    )
    parser.add_argument("--warmup_teacher_temp", type=float, default=0.02)
    parser.add_argument(
        "--refit",
        type=str,
        default="0.1,0.25",
        help="fractions of the run at which the codebooks are refitted by k-means ('' = never)",
    )
    parser.add_argument(
        "--kmeans_seeds", type=int, default=5, help="k-means seeds of the post-hoc baselines"
    )
    parser.add_argument(
        "--global_codes_only", action="store_true", help="quantize the global crops only"
    )
    parser.add_argument("--rq_dead", type=float, default=1.0, help="dead-code EMA count")
    parser.add_argument(
        "--protocol",
        choices=("scratch", "finetune"),
        default="scratch",
        help="scratch: RQ-DINO from scratch; finetune: paper Table 3c (dino_rq_protocol.py)",
    )
    parser.add_argument("--pretrain_steps", type=int, default=800, help="finetune: DINO steps")
    parser.add_argument("--finetune_steps", type=int, default=200, help="finetune: (b), (c)")
    parser.add_argument("--train_seeds", type=int, default=2, help="finetune: seeds of (b), (c)")
    args = parser.parse_args(argv)
    if not (args.data / "labels.csv").is_file():
        raise SystemExit(f"{args.data}/labels.csv not found: pass --data")
    if args.protocol == "finetune":
        import dino_rq_protocol

        return dino_rq_protocol.run(sys.modules[__name__], args)

    import lightning as L

    from mscg_lightning.stages.dino_rq.module import RQDinoModule

    torch.set_num_threads(args.threads)
    L.seed_everything(args.seed, workers=True)
    start_all = time.perf_counter()
    hidden, layers, heads, patch = (int(x) for x in args.vit.split(","))
    n_train, n_eval, minutes = 8000, 2000, args.minutes
    n_prototypes, head_hidden = args.prototypes, args.head_hidden
    if args.quick:
        n_train, n_eval, minutes = 1000, 500, min(args.minutes, 0.75)
        hidden, layers, heads, n_prototypes, head_hidden = 64, 2, 2, 256, 256
    vit = vit_config(hidden, layers, heads, patch, args.layerscale)
    train_files, train_y, eval_files, eval_y = load_split(args.data, n_train, n_eval, args.seed)

    model_kwargs = dict(
        backbone_config=vit,
        n_prototypes=n_prototypes,
        head_hidden_dim=head_hidden,
        head_bottleneck_dim=256,
        rq_levels=args.levels,
        rq_codebook_size=args.codebook,
        rq_decay=args.rq_decay,
        rq_dead_code_threshold=args.rq_dead,
        momentum_teacher=args.momentum,
        teacher_temp=args.teacher_temp,
        warmup_teacher_temp=args.warmup_teacher_temp,
        base_lr=args.base_lr,
        quantize_local_crops=not args.global_codes_only,
    )
    data = training_images(train_files, args.batch, args.workers)
    steps_per_epoch = len(train_files) // args.batch

    # Calibrate: seconds per step of the full model on real batches (augmentation included).
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    probe = RQDinoModule(**model_kwargs)
    untrained = copy.deepcopy(probe.model.student["backbone"])  # post-hoc baseline (a)
    s_per_step = float("nan")
    if args.steps is None:
        probe.to(device)
        opt = torch.optim.AdamW(probe.parameters(), lr=1e-4)
        loader = iter(data.train_dataloader())
        timings = []
        for _ in range(6):
            t0 = time.perf_counter()  # waiting for the augmentation worker counts too
            batch = {k: v.to(device) for k, v in next(loader).items()}
            probe.model.training_losses(batch, 0.04)["loss"].backward()
            opt.step()
            opt.zero_grad()
            float(next(probe.parameters()).sum())  # waits for the device
            timings.append(time.perf_counter() - t0)
        s_per_step = float(np.median(timings[1:]))
        del loader, opt
    del probe
    if args.steps is not None:
        total_steps = args.steps
    else:  # ~10% for augmentation etc.
        total_steps = max(10, int(minutes * 60 / (s_per_step * 1.1)))
    epochs = total_steps / steps_per_epoch
    print(f"{s_per_step:.2f} s/step -> {total_steps} steps ({epochs:.2f} epochs)", flush=True)

    # Schedules over the run: lr warm-up 10%, teacher temperature warm-up 30%, prototypes
    # frozen for the first 3% (DINOv2: 10 / 30 / 1 epochs of 100); codebooks refitted by
    # k-means at the --refit fractions of the run.
    refit = [float(f) * epochs for f in args.refit.split(",") if f.strip()]
    L.seed_everything(args.seed, workers=True)
    module = RQDinoModule(
        **model_kwargs,
        warmup_epochs=0.1 * epochs,
        warmup_teacher_temp_epochs=0.3 * epochs,
        freeze_last_layer_epochs=0.03 * epochs,
        rq_refit_epochs=refit or None,
    )
    # Same initial weights as the untrained baseline (same seed, same construction order).
    same_init = all(
        torch.equal(a, b)
        for a, b in zip(
            untrained.state_dict().values(),
            module.model.student["backbone"].state_dict().values(),
        )
    )
    losses: list[tuple[int, float]] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            step = trainer.global_step
            if step % 10 == 0 or step == total_steps:
                losses.append((step, round(float(outputs["loss"]), 4)))
                print(f"step {step}: loss {losses[-1][1]}", flush=True)

    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        max_steps=total_steps,
        max_epochs=-1,
        max_time={"minutes": minutes * 1.25},
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record()],
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=data)
    train_wall = time.perf_counter() - t0
    steps_done = int(trainer.global_step)

    # Evaluation on the held-out split.
    trained = module.model.student["backbone"]
    emb = {
        name: (embed(net, train_files, 32, device), embed(net, eval_files, 32, device))
        for name, net in (("untrained", untrained), ("trained", trained))
    }
    # Post-hoc baselines with several k-means seeds: seed 0 is scored in full, the others give
    # the spread of level-1 NMI that k-means initialisation alone causes.
    seeds = range(max(1, args.kmeans_seeds))
    post_hoc = {
        f"post_hoc_{name}": [
            post_hoc_codes(*emb[name], args.levels, args.codebook, s) for s in seeds
        ]
        for name in ("untrained", "trained")
    }
    codes = {
        "rq_dino": module.model.quantizer.cpu().encode(emb["trained"][1]).numpy(),
        **{name: runs[0] for name, runs in post_hoc.items()},
    }
    scores = {name: code_scores(eval_y, c, args.codebook) for name, c in codes.items()}
    seed_nmi = {
        name: [round(nmi(eval_y, c[:, 0]), 4) for c in runs] for name, runs in post_hoc.items()
    }
    knn = {name: round(knn_accuracy(tr, train_y, ev, eval_y), 4) for name, (tr, ev) in emb.items()}
    rq, ph_u, ph_t = (scores[k]["nmi_l1"] for k in codes)
    level1 = {name: c[:, 0] for name, c in codes.items()}
    payload = {
        "benchmark": "dino_rq_semantics",
        "quick": args.quick,
        "scores": scores,
        "knn20_accuracy": knn,
        "level1_nmi_margin_vs_post_hoc_untrained": round(rq - ph_u, 4),
        "level1_nmi_margin_vs_post_hoc_trained": round(rq - ph_t, 4),
        # 95% bootstrap intervals (eval images resampled) of the level-1 NMI differences
        "level1_nmi_margin_ci95": {
            name: bootstrap_nmi_difference(eval_y, level1["rq_dino"], level1[name])
            for name in ("post_hoc_untrained", "post_hoc_trained")
        },
        "post_hoc_level1_nmi_over_kmeans_seeds": {
            name: {
                "values": v,
                "mean": round(float(np.mean(v)), 4),
                "std": round(float(np.std(v)), 4),
            }
            for name, v in seed_nmi.items()
        },
        "training": {
            "steps_planned": total_steps,
            "steps_done": steps_done,
            "epochs": round(steps_done / steps_per_epoch, 2),
            "seconds": round(train_wall, 1),
            "calibrated_s_per_step": round(s_per_step, 3) if math.isfinite(s_per_step) else None,
            "refit_epochs": [round(e, 3) for e in refit],
            "loss_curve": losses,
        },
        "config": {
            "train_images": len(train_files),
            "eval_images": len(eval_files),
            "split_seed": args.seed,
            "vit": vit,
            "n_prototypes": n_prototypes,
            "head_hidden_dim": head_hidden,
            "rq": f"{args.levels} x {args.codebook}",
            "batch": args.batch,
            "crops": "2 x 32 px global + 4 x 16 px local",
            "hparams": {k: v for k, v in dict(module.hparams).items() if k != "backbone_config"},
            "untrained_baseline_same_init": same_init,
        },
        "wall_seconds": round(time.perf_counter() - start_all, 1),
        "machine": machine_info(),
    }
    name = args.name or ("dino_rq_semantics_quick" if args.quick else "dino_rq_semantics")
    path = write_result(name, payload, args.results)
    summary = (
        f"level-1 NMI: RQ-DINO {rq:.3f}, post-hoc untrained {ph_u:.3f}, post-hoc trained "
        f"{ph_t:.3f} ({steps_done} steps)"
    )
    append_row(
        name, summary, payload["wall_seconds"], payload["machine"], table=args.results / "README.md"
    )
    print(summary)
    print(f"-> {path}")
    return payload


if __name__ == "__main__":
    main()
