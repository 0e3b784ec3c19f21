"""Resume under DDP: a 2-process (gloo, ``strategy=ddp``) genrec fit, SIGKILLed as soon as it
has written ``last.ckpt`` and rerun, ends like an uninterrupted 2-process run: the same
per-epoch curves and the same test metrics and predictions.

Both ranks are killed at once (the whole process group, as a node failure or ``scancel`` does).
tiny's genrec trains with dropout and modality masking (``mask_prob`` 0.5), so every rank's
random stream matters: rank 1 draws its own masks for its own (differently long) batches, and
its stream after the resume must be the one it had at the checkpoint, not rank 0's.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from mscg_lightning.report import read_scalars

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
FIXTURES = str(REPO / "tests" / "fixtures")
EPOCHS = 4


def _env() -> dict[str, str]:
    """One intra-op thread per rank (2 ranks on a shared 2-core machine), and no rendezvous
    variables: a ddp_spawn test earlier in this pytest process leaves MASTER_PORT in
    os.environ, and two runs started side by side would then meet on the same port."""
    drop = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _start(run_dir: Path, log: Path) -> subprocess.Popen:
    """``mscg fit --stages genrec`` on 2 gloo processes, in its own process group."""
    cmd = [
        *(sys.executable, "-m", "mscg_lightning", "fit", "--config", TINY),
        *("--run_dir", str(run_dir), "--data_root", FIXTURES, "--stages", "genrec"),
        *("--genrec.trainer.max_epochs", str(EPOCHS)),
        *("--genrec.trainer.devices", "2", "--genrec.trainer.strategy", "ddp"),
        # val/loss as the monitor: the best checkpoint is then a late epoch, so the test metrics
        # depend on the epochs trained after the resume (as in test_resume.py).
        *("--genrec.model.init_args.val_metric", "loss"),
    ]
    env = _env()
    with open(log, "w") as out:
        # Lightning starts rank 1 as a child of rank 0: a new session puts both in one group
        # that the test can kill at once.
        return subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _finish(proc: subprocess.Popen, log: Path) -> str:
    try:
        proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = log.read_text()
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.mark.slow
def test_killed_ddp_genrec_resumes_and_ends_like_an_uninterrupted_ddp_run(
    upstream, tmp_path, kill_at_checkpoint
):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    shutil.copytree(upstream, killed)
    shutil.copytree(upstream, straight)
    uninterrupted = _start(straight, tmp_path / "straight.log")
    # both ranks at once: rank 0 and its child rank 1 share the process group
    proc = _start(killed, tmp_path / "killed.log")
    ckpt = kill_at_checkpoint(
        proc, killed, tmp_path / "killed.log", timeout_s=300, whole_group=True
    )
    assert ckpt["epoch"] < EPOCHS - 1  # epochs were left to train after the kill
    out_straight = _finish(uninterrupted, tmp_path / "straight.log")
    assert "resuming" not in out_straight

    out = _finish(_start(killed, tmp_path / "rerun.log"), tmp_path / "rerun.log")
    assert "[mscg] genrec: resuming from" in out and "Restored all states" in out, out[-3000:]
    # rank 1 ran too and took part in every collective (else the run would have hung)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in out

    curves, curves_straight = read_scalars(killed)["genrec"], read_scalars(straight)["genrec"]
    for tag in ("train/loss_epoch", "val/loss"):
        assert len(curves[tag]) == EPOCHS
        assert curves[tag] == curves_straight[tag], tag
    metrics = json.loads((killed / "genrec" / "metrics.json").read_text())
    metrics_straight = json.loads((straight / "genrec" / "metrics.json").read_text())
    assert metrics["epochs"] == EPOCHS and metrics["test"]["num_users"]["mean"] == 60
    assert metrics == metrics_straight
    predictions = pq.read_table(killed / "genrec" / "predictions.parquet").to_pylist()
    assert predictions == pq.read_table(straight / "genrec" / "predictions.parquet").to_pylist()
    # the checkpoint kept every rank's RNG state, and they differ: restoring rank 0's state on
    # every rank would replay other masks and dropout on rank 1
    states = ckpt["callbacks"]["RngState"]["ranks"]
    assert len(states) == 2 and not torch.equal(states[0]["torch"], states[1]["torch"])
