"""benchmarks/macrec_quality.py's aggregation: means over seeds, user-bootstrap CIs, paired
differences over the same users, checked against plain numpy."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]


def _bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(
        "bench_macrec_quality", REPO / "benchmarks" / "macrec_quality.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_summary_and_paired_differences_match_numpy():
    bench = _bench()
    rng = np.random.default_rng(0)
    users = np.arange(50)
    runs = {
        v: [(rng.permutation(users), rng.integers(-1, 10, 50)) for _ in range(2)]
        for v in ("macrec", "mql4grec")
    }
    runs["mql4grec"][1] = (users[:-1], runs["mql4grec"][1][1][:-1])  # a user missing in a run
    variants, paired = bench.summarize(runs)
    common = users[:-1]

    def recall10(name):  # per user, averaged over the seeds, on the common users
        out = []
        for u, r in runs[name]:
            by_user = dict(zip(u.tolist(), r.tolist()))
            out.append([0 <= by_user[int(x)] < 10 for x in common])
        return np.mean(out, axis=0)

    a, b = recall10("macrec"), recall10("mql4grec")
    test = variants["macrec"]["test"]["recall@10"]
    assert test["mean"] == pytest.approx(a.mean())
    assert test["ci_low"] <= test["mean"] <= test["ci_high"]
    assert variants["macrec"]["test"]["num_users"]["mean"] == len(common)
    diff = paired["macrec-mql4grec"]["recall@10"]
    assert diff["diff"] == pytest.approx((a - b).mean())
    assert diff["excludes_zero"] == (diff["ci_low"] > 0 or diff["ci_high"] < 0)
