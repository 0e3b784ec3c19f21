"""Speed and peak memory of the `prepare` stage.

Datasets: ml-100k (from ../shared/data/ml-100k with adapter recbole, else the recbole wheel) and
a synthetic RecBole-format data set of 10M interactions (500K users x 100K items, power-law item
popularity, random timestamps, rows shuffled), generated into a temp dir first. Each prepare
runs in a fresh child process, so its peak RSS (ru_maxrss) is the stage's own, not the
generator's. Target (issue 2, item 8): 10M interactions in < 60 s and < 4 GiB peak RSS.

    python benchmarks/prepare_speed.py            # ml-100k + 10M, writes results/prepare_speed.json
    python benchmarks/prepare_speed.py --quick    # ml-100k + 1M, writes prepare_speed_quick.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TARGET_SECONDS = 60.0
TARGET_RSS_MIB = 4096.0
TARGET_ROWS = 10_000_000


def make_synthetic(folder: Path, n_inter: int, seed: int = 0) -> int:
    """Write `synth.inter` / `synth.item` (RecBole atomic) with about `n_inter` rows."""
    rng = np.random.default_rng(seed)
    n_users = max(n_inter // 20, 10)
    n_items = max(n_inter // 100, 10)
    # Users: 5 + geometric extra interactions (mean 20); items: power-law popularity.
    lengths = 4 + rng.geometric(1 / 16, size=n_users)
    lengths = np.minimum(lengths, 2000)
    scale = n_inter / lengths.sum()
    lengths = np.maximum(5, np.round(lengths * scale)).astype(np.int64)
    n = int(lengths.sum())
    user = np.repeat(np.arange(1, n_users + 1, dtype=np.int64), lengths)
    p = 1.0 / (np.arange(n_items) + 10.0) ** 0.9
    cdf = np.cumsum(p / p.sum())
    item = np.searchsorted(cdf, rng.random(n)).astype(np.int64) + 1
    item = np.minimum(item, n_items)
    ts = rng.integers(1_400_000_000, 1_700_000_000, size=n)
    rating = rng.integers(1, 6, size=n)
    order = rng.permutation(n)
    table = pa.table({"u": user[order], "i": item[order], "r": rating[order], "t": ts[order]})
    folder.mkdir(parents=True, exist_ok=True)
    opts = pcsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    with open(folder / "synth.inter", "wb") as f:
        f.write(b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        pcsv.write_csv(table, f, write_options=opts)
    ids = np.arange(1, n_items + 1)
    items = pa.table(
        {
            "i": ids,
            "title": pa.array([f"Synthetic item {k}" for k in ids]),
            "year": pa.array((1950 + ids % 70).astype(str)),
            "genres": pa.array(np.array(["Drama", "Comedy Drama", "Action"])[ids % 3]),
        }
    )
    with open(folder / "synth.item", "wb") as f:
        f.write(b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n")
        pcsv.write_csv(items, f, write_options=opts)
    return n


def child(args: argparse.Namespace) -> None:
    """Run one prepare in this (fresh) process and print its timing and peak RSS as JSON."""
    sys.path.insert(0, str(REPO))
    from mscg_lightning.data.prepare import prepare
    from mscg_lightning.data.prepare_config import PrepareConfig

    cfg = PrepareConfig(**json.loads(args.child))
    out = Path(tempfile.mkdtemp(prefix="prep_bench_"))
    try:
        t0 = time.perf_counter()
        manifest = prepare(cfg, out, Path(args.data_root), "bench")
        seconds = time.perf_counter() - t0
        stats = json.loads((out / "stats.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mib": rss_mib,
                "rows_read": stats["rows_read"],
                "rows": manifest.rows,
            }
        )
    )


def run_one(name: str, cfg: dict, data_root: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(cfg), "--data-root", str(data_root)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{name}: prepare failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    rows = out["rows_read"]
    result = {
        "dataset": name,
        "config": cfg,
        "rows_read": rows,
        "users": out["rows"]["users"],
        "items": out["rows"]["items"],
        "interactions": out["rows"]["interactions"],
        "seconds": round(out["seconds"], 3),
        "rows_per_s": round(rows / out["seconds"]),
        "peak_rss_mib": round(out["peak_rss_mib"], 1),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1M synthetic rows instead of 10M")
    parser.add_argument("--rows", type=int, default=None, help="synthetic rows (overrides)")
    parser.add_argument("--out", type=Path, default=None, help="result JSON path")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data-root", default=str(DATA), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    n_rows = args.rows or (1_000_000 if args.quick else TARGET_ROWS)
    out_path = args.out or REPO / "benchmarks" / "results" / (
        "prepare_speed_quick.json" if args.quick else "prepare_speed.json"
    )
    results = []
    if (DATA / "ml-100k" / "ml-100k.inter").is_file():
        results.append(run_one("ml-100k", {"adapter": "recbole", "path": "ml-100k"}, DATA))
    else:
        results.append(run_one("ml-100k (wheel)", {"adapter": "ml100k_wheel"}, DATA))
    tmp = Path(tempfile.mkdtemp(prefix="prep_synth_"))
    try:
        t0 = time.perf_counter()
        n = make_synthetic(tmp / "synth", n_rows)
        gen_s = time.perf_counter() - t0
        size_mib = (tmp / "synth" / "synth.inter").stat().st_size / 2**20
        print(f"generated {n} rows ({size_mib:.0f} MiB) in {gen_s:.1f}s", flush=True)
        res = run_one(f"synthetic-{n}", {"adapter": "recbole", "path": "synth"}, tmp)
        res["input_mib"] = round(size_mib, 1)
        # The target is stated for 10M rows; scale the time budget for other sizes.
        budget = TARGET_SECONDS * n / TARGET_ROWS
        res["target"] = {"seconds": budget, "peak_rss_mib": TARGET_RSS_MIB}
        res["target_met"] = res["seconds"] < budget and res["peak_rss_mib"] < TARGET_RSS_MIB
        results.append(res)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    import pyarrow

    report = {
        "benchmark": "prepare_speed",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pyarrow": pyarrow.__version__,
            # The machine may be shared: timings scale with the load at run time.
            "load_average_1m_5m_15m": [round(x, 2) for x in os.getloadavg()],
        },
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": results,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
