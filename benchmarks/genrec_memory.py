"""Peak memory and time of one GenRec training step, with and without activation checkpointing.

    python benchmarks/genrec_memory.py                 # CPU: peak RSS growth of a fresh process
    python benchmarks/genrec_memory.py --batch 1024    # on a CUDA machine: torch's peak allocation

Paper sizes (d_model 128, 8 heads x 64, MLP 2048, 4+4 layers), 3 modalities x (3 + 1) codes per
item, full 20-item histories (S = 240 tokens: the longest batches of a length-grouped run). Each
setting runs in its own process so that peaks do not mix. Writes
``benchmarks/results/genrec_memory[_gpu].json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import append_row, write_result  # noqa: E402


def one_step(batch: int, checkpointing: bool, device: str) -> dict[str, float]:
    """Build the model, run one forward/backward on random codes; peak memory in MiB, seconds."""
    import torch

    from mscg_lightning.stages.genrec.losses import generative_loss
    from mscg_lightning.stages.genrec.model import GenRecConfig, GenRecT5
    from mscg_lightning.stages.genrec.tokens import HistoryTokenizer, TokenLayout

    torch.manual_seed(0)
    modalities = ["text", "image", "collab"]
    layout = TokenLayout(modalities, [[256, 256, 256, 8]] * 3, "collab")
    items = 5000
    codes = torch.randint(0, 8, (items, 3, 4))
    codes[..., :3] = torch.randint(0, 256, (items, 3, 3))
    tok = HistoryTokenizer(layout, codes, torch.ones(items, 3, dtype=torch.bool))
    cfg = GenRecConfig.from_layout(layout, activation_checkpointing=checkpointing)
    model = GenRecT5(cfg).to(device)
    tok = tok.to(device)
    history = torch.randint(0, items, (batch, 20), device=device)
    targets = tok.target_codes(torch.randint(0, items, (batch,), device=device))
    enc = tok(history)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        loss = generative_loss(model(*enc, targets), targets)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    return {"peak_mib": round(peak, 1), "step_seconds": round(time.perf_counter() - start, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--child", choices=["off", "on"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        print(json.dumps(one_step(args.batch, args.child == "on", device)))
        return
    rows = {}
    for setting in ("off", "on"):
        cmd = [sys.executable, __file__, "--batch", str(args.batch), "--child", setting]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows[f"checkpointing_{setting}"] = json.loads(out.strip().splitlines()[-1])
        print(setting, rows[f"checkpointing_{setting}"], flush=True)
    off, on = rows["checkpointing_off"], rows["checkpointing_on"]
    payload = {
        "config": {
            "batch": args.batch,
            "history_tokens": 240,
            "model": "d_model 128, 8 x 64 heads, MLP 2048, 4+4 layers",
            "device": device,
            "peak": "torch peak allocation" if device == "cuda" else "peak RSS growth over setup",
        },
        "results": rows,
        "memory_ratio": round(on["peak_mib"] / off["peak_mib"], 3),
        "time_ratio": round(on["step_seconds"] / off["step_seconds"], 3),
    }
    name = "genrec_memory_gpu" if device == "cuda" else "genrec_memory"
    path = write_result(name, payload, Path(args.results_dir))
    summary = (
        f"batch {args.batch} x 240 tokens: peak {off['peak_mib']:.0f} -> {on['peak_mib']:.0f} MiB "
        f"with activation checkpointing, step time x{payload['time_ratio']:.2f}"
    )
    append_row(name, summary, on["step_seconds"] + off["step_seconds"])
    print(f"[genrec_memory] {summary}; wrote {path}")


if __name__ == "__main__":
    main()
