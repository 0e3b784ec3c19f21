"""Training speed of the paper-size GenRec on this CPU: today's path vs the fast path (issue 17).

Training targets per second (forward + backward + AdamW step, through ``GenRecModule``'s own
training losses) of the paper-size model (d_model 128, 8 x 64 heads, MLP 2048, 4+4 layers,
dropout 0.1; three modalities of 3 levels x 256 codes + a collision level: 12 tokens per item,
20-item histories = up to 240 encoder tokens) on Instruments' training sequences
(``../shared/data/amazon-instruments``, leave-one-out train split, codes random: speed does not
depend on their values), for:

* ``today``: bidirectional encoder, one sample per (user, target), float32, T5 dropout, glibc's
  default allocator;
* each change alone: ``allocator`` (``mscg_lightning.allocator``), ``fast_dropout``
  (``dropout_mode: fast``), ``bf16`` (bf16 autocast), ``windows`` (``encoder_attention:
  item_causal`` + ``train_mode: windows``: one pass per user window);
* the cumulative chain ``+allocator``, ``+fast_dropout``, ``+bf16``, ``+windows`` (= combined);
* ``hf_t5``: ``transformers.T5ForConditionalGeneration`` of the same size on the same sample
  batches, same precision and dropout rate as our ``+bf16`` row (the peer reference);
  ``hf_t5_ratio`` = our ``+bf16`` step time / HF's step time on the same batches.

Step times are process CPU seconds (one torch thread; equal to wall time on an idle machine,
robust to other processes on a shared one); wall-clock rates are reported beside them.
Batches are length-grouped as ``group_by_length: true`` makes them; K batches per path are
picked at evenly spaced quantiles of the epoch's padded batch lengths, so that K batches
estimate the epoch's time: targets/s = epoch targets / (mean batch time x batches per epoch).
Variants run round-robin, so load changes on a shared machine hit all alike. The fraction of
the machine's matmul peak (float32 and bf16 GEMM, measured in the same run) is reported from the
FLOPs ``torch.utils.flop_counter`` counts in one step (matmuls; attention inside fused kernels is
counted where torch registers a formula for it).

The allocator is switched in-process: on = ``tune_allocator()``; off = glibc's static settings
as a warmed-up default process has them (mmap for blocks >= 32 MiB, the dynamic threshold's
maximum; trim above 128 KiB).

    python benchmarks/train_speed.py --quick   # < 1 min: chain only -> results/train_speed_quick.json
    python benchmarks/train_speed.py           # all rows -> results/train_speed.json
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import append_row, machine_info, write_result  # noqa: E402

from mscg_lightning.allocator import tune_allocator  # noqa: E402
from mscg_lightning.data.datamodule import (  # noqa: E402
    LengthGroupedSampler,
    NextItemDataset,
    WindowDataset,
    collate_next_item,
    collate_windows,
)
from mscg_lightning.stages.genrec.module import GenRecModule  # noqa: E402

DATA_ROOT = REPO.parent / "shared" / "data"
INTER = Path("amazon-instruments") / "Instruments.inter.json"
PAPER = dict(d_model=128, num_heads=8, d_kv=64, d_ff=2048, encoder_layers=4, decoder_layers=4)
MAX_HISTORY, LEVELS, CODEBOOK = 20, 3, 256
CHANGES = {
    "allocator": {"allocator": True},
    "fast_dropout": {"dropout_mode": "fast"},
    "bf16": {"bf16": True},
    "windows": {"windows": True},
}
TODAY = {"allocator": False, "dropout_mode": "t5", "bf16": False, "windows": False}


def sequences(root: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Instruments' train sequences (leave-one-out: all but the last two items) as flat arrays."""
    path = root / INTER
    if not path.is_file():
        raise SystemExit(f"train_speed: {path} not found (give --data_root).")
    raw = json.loads(path.read_text())
    seqs = [np.asarray(v[:-2], np.int64) for v in raw.values()][:limit]
    num_items = 1 + max(max(v) for v in raw.values())
    lengths = np.array([len(s) for s in seqs])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return np.arange(len(seqs)), np.concatenate(seqs), offsets, num_items


def catalogue(num_items: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Random codes of three modalities (3 x 256 + collision level), unique per modality."""
    gen = torch.Generator().manual_seed(0)
    tables, sizes = [], []
    for _ in range(3):
        sem = torch.randint(0, CODEBOOK, (num_items, LEVELS), generator=gen)
        seen: dict[tuple, int] = {}
        coll = []
        for row in map(tuple, sem.tolist()):
            coll.append(seen.get(row, 0))
            seen[row] = coll[-1] + 1
        tables.append(torch.cat([sem, torch.tensor(coll)[:, None]], 1))
        sizes.append([CODEBOOK] * LEVELS + [max(coll) + 1])
    layout = {"modalities": ["text", "image", "collab"], "vocab_sizes": sizes, "target": "collab"}
    return torch.stack(tables, 1), torch.ones(num_items, 3, dtype=torch.bool), layout


def quantile_batches(dataset, collate, batch_size: int, k: int) -> tuple[list[dict], int, int]:
    """K length-grouped batches at evenly spaced quantiles of the epoch's padded lengths.

    Returns (batches, batches per epoch, targets per epoch)."""
    lengths = dataset.sample_lengths()
    order = np.fromiter(iter(LengthGroupedSampler(lengths, batch_size, seed=0)), np.int64)
    groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    groups = [g for g in groups if len(g) == batch_size] or groups
    cost = np.array([lengths[g].max() for g in groups])
    picks = np.argsort(cost, kind="stable")[((np.arange(k) + 0.5) / k * len(groups)).astype(int)]
    batches = [collate([dataset[int(i)] for i in groups[j]]) for j in picks]
    return (
        batches,
        -(-len(order) // batch_size),
        int(lengths.sum() if _is_windows(dataset) else len(order)),
    )


def _is_windows(dataset) -> bool:
    return isinstance(dataset, WindowDataset)


def set_allocator(on: bool) -> None:
    """In-process switch: tuned (see ``mscg_lightning.allocator``) or glibc's warmed-up default."""
    if on:
        tune_allocator.__globals__["_state"].clear()
        tune_allocator()
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
    if hasattr(libc, "mallopt"):
        libc.mallopt(-4, 65536)  # M_MMAP_MAX
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD: the dynamic maximum
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
        libc.malloc_trim(0)


class Ours:
    """One training path of GenRecModule: model, AdamW, and the loss its batches take."""

    def __init__(self, settings: dict, codes, present, layout) -> None:
        torch.manual_seed(0)
        self.settings = settings
        causal = settings["windows"]
        self.module = GenRecModule(
            token_layout=layout,
            **PAPER,
            dropout=0.1,
            dropout_mode=settings["dropout_mode"],
            encoder_attention="item_causal" if causal else "bidirectional",
        ).train()
        self.module.set_catalogue(codes, present)
        self.opt = torch.optim.AdamW(self.module.parameters(), lr=1e-4)

    def step(self, batch: dict) -> int:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.settings["bf16"]):
            if "targets" in batch:
                loss, n = self.module._window_loss(batch, 0.0)
            else:
                loss, n = self.module._loss(batch, 0.0)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return n


class HFT5:
    """``T5ForConditionalGeneration`` of the same size on the same (tokenized) sample batches."""

    def __init__(self, reference: Ours, bf16: bool) -> None:
        from transformers import T5Config, T5ForConditionalGeneration

        cfg = reference.module.model.cfg
        torch.manual_seed(0)
        self.model = T5ForConditionalGeneration(
            T5Config(
                vocab_size=cfg.vocab_size,
                d_model=cfg.d_model,
                d_kv=cfg.d_kv,
                d_ff=cfg.d_ff,
                num_layers=cfg.encoder_layers,
                num_decoder_layers=cfg.decoder_layers,
                num_heads=cfg.num_heads,
                dropout_rate=cfg.dropout,
                feed_forward_proj="relu",
                decoder_start_token_id=0,
                pad_token_id=0,
            )
        ).train()
        self.tokenizer = reference.module.tokenizer
        self.offsets = reference.module.model.target_offsets
        self.bf16 = bf16
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)

    def step(self, batch: dict) -> int:
        inputs = self.tokenizer(batch["history"])
        labels = self.tokenizer.target_codes(batch["target"]) + self.offsets
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(
                input_ids=inputs.input_ids,
                attention_mask=inputs.attention_mask.long(),
                labels=labels,
            )
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.opt.step()
        return int(labels.shape[0])


def matmul_peak(dtype: torch.dtype, seconds: float) -> float:
    """GEMM GFLOP/s per CPU second (best of repeated 1024^3 products)."""
    a = torch.randn(1024, 1024, dtype=dtype)
    b = torch.randn(1024, 1024, dtype=dtype)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.process_time()
        a @ b
        best = max(best, 2 * 1024**3 / max(time.process_time() - t0, 1e-6) / 1e9)
    return best


def count_flops(runner, batch: dict) -> float:
    """FLOPs of one training step (``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        runner.step(batch)
    return float(counter.get_total_flops())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="chain + HF only, few batches (< 1 min)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=None, help="samples per batch [quick 16, full 64]")
    p.add_argument("--window-batch", type=int, default=None, help="[quick 8, full 32]")
    p.add_argument("--batches", type=int, default=None, help="quantile batches [quick 2, full 6]")
    p.add_argument("--rounds", type=int, default=None, help="round-robin repeats [quick 1, full 2]")
    p.add_argument("--users", type=int, default=None, help="use the first N users [all]")
    p.add_argument("--data_root", type=Path, default=DATA_ROOT, help="[../shared/data]")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    quick = args.quick
    batch = args.batch or (16 if quick else 64)
    window_batch = args.window_batch or (8 if quick else 32)
    k = args.batches or (2 if quick else 6)
    rounds = args.rounds or (1 if quick else 2)
    start = time.time()

    users, values, offsets, num_items = sequences(args.data_root, args.users)
    codes, present, layout = catalogue(num_items)
    samples = NextItemDataset(users, values, offsets, None, "per_item", MAX_HISTORY)
    windows = WindowDataset(users, values, offsets, MAX_HISTORY)
    norm = float(window_batch * windows.sample_lengths().mean())
    sample_batches, sample_steps, sample_targets = quantile_batches(
        samples, lambda b: collate_next_item(b, MAX_HISTORY), batch, k
    )
    window_batches, window_steps, window_targets = quantile_batches(
        windows, lambda b: collate_windows(b, MAX_HISTORY, norm), window_batch, k
    )

    chain, settings = {}, dict(TODAY)
    chain["today"] = dict(settings)
    for name, change in CHANGES.items():
        settings.update(change)
        chain[f"+{name}"] = dict(settings)
    variants = dict(chain)
    if not quick:
        for name, change in CHANGES.items():
            variants[name] = {**TODAY, **change}

    peaks = {
        "float32": matmul_peak(torch.float32, 1.0),
        "bfloat16": matmul_peak(torch.bfloat16, 1.0),
    }
    runners: dict[str, object] = {n: Ours(s, codes, present, layout) for n, s in variants.items()}
    runners["hf_t5"] = HFT5(runners["+bf16"], bf16=True)  # type: ignore[arg-type]
    variants["hf_t5"] = {**chain["+bf16"], "hf": True}
    times = {n: [] for n in runners}  # process CPU seconds per step
    walls = {n: [] for n in runners}
    flops = {}
    for name, runner in runners.items():  # warm-up step, FLOPs counted
        set_allocator(variants[name]["allocator"])
        data = window_batches if variants[name]["windows"] else sample_batches
        flops[name] = count_flops(runner, data[0])
    for _ in range(rounds):
        for i in range(k):
            for name, runner in runners.items():
                set_allocator(variants[name]["allocator"])
                data = window_batches if variants[name]["windows"] else sample_batches
                t0, c0 = time.perf_counter(), time.process_time()
                runner.step(data[i])  # type: ignore[attr-defined]
                times[name].append(time.process_time() - c0)
                walls[name].append(time.perf_counter() - t0)

    rows = {}
    for name, settings in variants.items():
        win = settings["windows"]
        steps, targets = (window_steps, window_targets) if win else (sample_steps, sample_targets)
        step_s = float(np.mean(times[name]))
        wall_s = float(np.mean(walls[name]))
        peak = peaks["bfloat16" if settings["bf16"] else "float32"]
        rows[name] = {
            "settings": settings,
            "targets_per_s": targets / (step_s * steps),
            "mean_step_cpu_s": step_s,
            "mean_step_wall_s": wall_s,
            "targets_per_wall_s": targets / (wall_s * steps),
            "epoch_estimate_min": step_s * steps / 60,
            "batch": window_batch if win else batch,
            "gflop_per_step_first_batch": flops[name] / 1e9,
            "fraction_of_matmul_peak": flops[name] / np.mean(times[name][::k]) / 1e9 / peak,
        }
    today = rows["today"]["targets_per_s"]
    for row in rows.values():
        row["speedup"] = row["targets_per_s"] / today
    ratio = rows["+bf16"]["mean_step_cpu_s"] / rows["hf_t5"]["mean_step_cpu_s"]
    result = {
        "speedup": rows["+windows"]["targets_per_s"] / today,
        "hf_t5_ratio": ratio,
        "speedup_wall": rows["+windows"]["targets_per_wall_s"]
        / rows["today"]["targets_per_wall_s"],
        "timing": "targets_per_s and the ratios use process CPU seconds per step (one torch "
        "thread: equal to wall time on an idle machine, far less sensitive to other processes "
        "on a shared one); *_wall_* are wall-clock",
        "rows": rows,
        "matmul_peak_gflops": peaks,
        "threads": args.threads,
        "batch_samples": batch,
        "batch_windows": window_batch,
        "quantile_batches": k,
        "rounds": rounds,
        "epoch": {
            "users": len(users),
            "targets": sample_targets,
            "sample_batches": sample_steps,
            "window_batches": window_steps,
            "window_targets": window_targets,
        },
        "tokens": {"per_item": 12, "max_history": MAX_HISTORY, "max_encoder_tokens": 240},
        "load_average": list(os.getloadavg()),
        "wall_s": time.time() - start,
        "machine": machine_info(),
    }
    name = "train_speed_quick" if quick else "train_speed"
    write_result(name, result)
    summary = f"speedup {result['speedup']:.1f}x, hf_t5_ratio {ratio:.2f}"
    append_row(name, summary, result["wall_s"])
    keys = ("speedup", "hf_t5_ratio", "speedup_wall", "wall_s", "load_average")
    print(json.dumps({k: result[k] for k in keys}))
    for n, row in rows.items():
        print(f"  {n:14s} {row['targets_per_s']:8.1f} targets/s  x{row['speedup']:.2f}")


if __name__ == "__main__":
    main()
