"""RQ-DINO training-step speed and peak memory on one CUDA GPU (ViT-S/14, 224 px, bf16-mixed).

One step = teacher forward on the 2 global crops, student forward on 2 global (iBOT-masked) + 4
local crops, residual quantization of the student CLS (3 x 256), DINO + iBOT + KoLeo + commitment
losses, backward, per-part gradient clipping, AdamW step and the teacher EMA update: what
``RQDinoModule`` does per batch. Inputs are random tensors (the image pipeline is not timed);
the model is the paper's: ViT-S/14 (random init), 65,536 prototypes, heads 2048/256.

Needs only torch, transformers and this package (no jsonargparse, no Lightning), so it runs on
the lent GPU machine from a checkout:

    python benchmarks/dino_rq_gpu.py                       # -> $OUT/dino_rq_gpu.json
    python benchmarks/dino_rq_gpu.py --device cpu --batch 2 --steps 1 --tiny --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mscg_lightning.stages.dino_rq.model import RQDino  # noqa: E402
from mscg_lightning.stages.dino_rq.model_config import RQDinoConfig  # noqa: E402

TINY_VIT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "patch_size": 8,
    "image_size": 32,
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=64, help="images per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--n_local", type=int, default=4)
    parser.add_argument("--tiny", action="store_true", help="tiny ViT and 32/16-px crops")
    parser.add_argument("--no_bf16", action="store_true", help="float32 instead of bf16 autocast")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.tiny:
        config = RQDinoConfig(
            backbone_config=TINY_VIT,
            n_prototypes=64,
            head_hidden_dim=64,
            head_bottleneck_dim=16,
            rq_codebook_size=4,
        )
        global_size, local_size = 32, 16
    else:
        config = RQDinoConfig()  # ViT-S/14, 65,536 prototypes, RQ 3 x 256 (paper defaults)
        global_size, local_size = 224, 98
    model = RQDino(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameter_groups(), lr=1e-4, weight_decay=0.04)
    b = args.batch
    batch = {
        "global_crops": torch.randn(2, b, 3, global_size, global_size, device=device),
        "local_crops": torch.randn(args.n_local, b, 3, local_size, local_size, device=device),
    }
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=not args.no_bf16)

    def step() -> float:
        with autocast:
            out = model.training_losses(batch, teacher_temp=0.04)
        out["loss"].backward()
        for part in model.student.values():
            torch.nn.utils.clip_grad_norm_(part.parameters(), 3.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_teacher(0.992)
        return float(out["loss"].detach())

    for _ in range(args.warmup):  # the first step also runs the quantizer's k-means init
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, loss = [], float("nan")
    for _ in range(args.steps):
        _sync(device)
        start = time.perf_counter()
        loss = step()  # float() synchronises too
        _sync(device)
        times.append(time.perf_counter() - start)

    cuda = device.type == "cuda"
    total = sum(times)
    result = {
        "benchmark": "dino_rq_gpu",
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "model": "tiny ViT" if args.tiny else "ViT-S/14 (random init)",
        "precision": "float32" if args.no_bf16 else "bf16-mixed (torch.autocast)",
        "batch": b,
        "crops": f"2 x {global_size} px global + {args.n_local} x {local_size} px local",
        "n_prototypes": config.n_prototypes,
        "rq": f"{config.rq_levels} x {config.rq_codebook_size}",
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "step_seconds": [round(t, 4) for t in times],
        "images_per_s": round(b * len(times) / total, 2) if total > 0 else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        if cuda
        else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 3)
        if cuda
        else None,
        "final_loss": loss,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": " ".join(["python", "benchmarks/dino_rq_gpu.py", *(argv or sys.argv[1:])]),
    }
    out = args.out or Path(os.environ.get("OUT") or REPO / "benchmarks" / "results") / (
        "dino_rq_gpu.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "step_seconds"}))
    print(f"-> {out}")
    return result


if __name__ == "__main__":
    main()
