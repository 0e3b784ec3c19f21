"""benchmarks/gpu_suite.sh --dry-run: the GPU suite's path at toy size on the CPU (cannot rot)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu_suite.sh"


def test_dry_run_trains_both_variants_decodes_and_writes_the_jsons(tmp_path) -> None:
    env = {
        **os.environ,
        "PY": sys.executable,
        "RUNS": str(tmp_path / "runs"),
        "OUT": str(tmp_path / "results"),
        "OMP_NUM_THREADS": "1",
    }
    out = subprocess.run(
        ["bash", str(SUITE), "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "results" / "genrec_tiny_gpu.json").read_text())
    assert result["dry_run"] is True
    assert set(result["variants"]) == {"mscgrec", "tiger"}
    for variant in result["variants"].values():
        ndcg = variant["test"]["ndcg@10"]
        assert 0.0 <= ndcg["ci_low"] <= ndcg["mean"] <= ndcg["ci_high"] <= 1.0
    assert "-> text" in result["variants"]["tiger"]["model"]
    decode = json.loads((tmp_path / "results" / "decode_speed_gpu.json").read_text())
    assert decode["all_items_in_catalogue"] is True


def test_bad_option_and_missing_preparation_are_exit_2(tmp_path) -> None:
    env = {**os.environ, "PY": sys.executable, "RUNS": str(tmp_path / "none")}
    bad = subprocess.run(["bash", str(SUITE), "--fast"], cwd=REPO, env=env, capture_output=True)
    assert bad.returncode == 2 and b"unknown option" in bad.stderr
    missing = subprocess.run(["bash", str(SUITE)], cwd=REPO, env=env, capture_output=True)
    assert missing.returncode == 2 and b"--prepare first" in missing.stderr
