"""Prefix index at catalogue scale: build time, memory and one beam-search step's mask query.

Synthetic catalogues of 10K, 100K, 400K (PixelRec size) and 1M items with 3 levels x 256 codes
plus a collision level. Levels 0 and 1 are Zipf-skewed and level 2 mildly so (as RQ codes
are), so prefixes are shared and collisions grow with the catalogue. For each size:

* ``build_s``: building ``PrefixIndex`` from the [N, 4] code table (best of 2);
* ``bytes``: bytes of the index tensors (dense tables + CSR arrays + sorted keys and item ids);
* ``allowed_ms``: one ``allowed`` call per level for 256 users x 20 beams = 5120 prefixes taken
  from the catalogue (median of 20), i.e. one beam-search step's mask; ``lookup_ms`` maps 5120
  complete tuples to item ids.

    python benchmarks/prefix_index_scale.py           # all sizes -> results/prefix_index_scale.json
    python benchmarks/prefix_index_scale.py --quick   # 10K and 100K -> prefix_index_scale_quick.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import skewed_codes, timing_machine_info, with_collision_level  # noqa: E402

from mscg_lightning.stages.genrec.prefix_index import PrefixIndex  # noqa: E402

SIZES = [10_000, 100_000, 400_000, 1_000_000]
QUICK_SIZES = [10_000, 100_000]
CODEBOOK, LEVELS, QUERIES = 256, 3, 256 * 20


def catalogue(n: int, seed: int = 0) -> torch.Tensor:
    """[n, 4] unique code tuples: 3 skewed semantic levels + collision level (rank in prefix)."""
    gen = torch.Generator().manual_seed(seed)
    sem = torch.stack([skewed_codes(gen, n, skew, CODEBOOK) for skew in (1.0, 1.0, 0.5)], 1)
    return with_collision_level(sem, CODEBOOK)


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median wall seconds of fn() over repeats (synchronising on GPUs)."""
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out.append(time.perf_counter() - start)
    return statistics.median(out)


def measure(n: int, device: torch.device) -> dict:
    tuples = catalogue(n).to(device)
    sizes = [CODEBOOK] * LEVELS + [int(tuples[:, -1].max()) + 1]
    build = min(timed(lambda: PrefixIndex(tuples, sizes), 1, device) for _ in range(2))
    index = PrefixIndex(tuples, sizes)
    gen = torch.Generator().manual_seed(1)
    rows = tuples[torch.randint(0, n, (QUERIES,), generator=gen).to(device)]
    allowed_ms = [
        1e3 * timed(lambda lvl=level: index.allowed(rows[:, :lvl]), 20, device)
        for level in range(LEVELS + 1)
    ]
    assert (index.lookup(rows) >= 0).all()
    lookup_ms = 1e3 * timed(lambda: index.lookup(rows), 20, device)
    return {
        "items": n,
        "level_sizes": sizes,
        "collision_rate": round(float((tuples[:, -1] > 0).float().mean()), 4),
        "distinct_prefixes": [
            int(torch.unique(tuples[:, : level + 1], dim=0).shape[0]) for level in range(LEVELS)
        ],
        "kinds": index.kinds,
        "build_s": round(build, 4),
        "bytes": index.nbytes(),
        "allowed_ms": [round(t, 3) for t in allowed_ms],
        "step_ms_max": round(max(allowed_ms), 3),
        "lookup_ms": round(lookup_ms, 3),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10K and 100K items only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0 = default)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = args.out or REPO / "benchmarks" / "results" / (
        "prefix_index_scale_quick.json" if args.quick else "prefix_index_scale.json"
    )
    rows = [measure(n, device) for n in (QUICK_SIZES if args.quick else SIZES)]
    result = {
        "benchmark": "prefix_index_scale",
        "queries_per_step": QUERIES,
        "rows": rows,
        "machine": timing_machine_info(device),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("| items | collisions | build s | MiB | allowed ms per level (5120 beams) | lookup ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        per_level = " / ".join(f"{t:.2f}" for t in r["allowed_ms"])
        print(
            f"| {r['items']:,} | {r['collision_rate']:.1%} | {r['build_s']:.3f} | "
            f"{r['bytes'] / 2**20:.1f} | {per_level} | {r['lookup_ms']:.2f} |"
        )
    return result


if __name__ == "__main__":
    main()
