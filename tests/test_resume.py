"""Resume: `mscg fit` killed (SIGKILL) during genrec training, then rerun, ends like a run that
was never interrupted: genrec resumes from its last checkpoint, no finished stage is redone,
and the training curves and test metrics are identical."""

import json
import os
import subprocess
import sys
from pathlib import Path

from mscg_lightning.report import read_scalars

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 4
UPSTREAM = ("prepared", "sasrec", "text_embed", "image_embed", "rq_text", "rq_image", "rq_collab")


def _fit(run_dir: Path) -> list[str]:
    # val/loss as the checkpoint monitor: the best checkpoint is then a late epoch, so the test
    # metrics depend on the epochs trained after the resume (tiny's val NDCG often peaks first).
    return [
        *(sys.executable, "-m", "mscg_lightning", "fit"),
        *("--config", str(REPO / "configs" / "tiny.yaml")),
        *("--run_dir", str(run_dir), "--data_root", str(REPO / "tests" / "fixtures")),
        *("--genrec.trainer.max_epochs", str(EPOCHS)),
        *("--genrec.model.init_args.val_metric", "loss"),
    ]


def _env() -> dict[str, str]:
    # One intra-op thread: on a busy 2-core machine two threads make tiny ops several times
    # slower. Every run of the test uses the same setting, so the numbers stay comparable.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _start(run_dir: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:  # the child keeps its own copy of the file descriptor
        return subprocess.Popen(
            _fit(run_dir), cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT
        )


def _finish(proc: subprocess.Popen, log: Path) -> str:
    proc.wait(timeout=300)
    out = log.read_text()
    assert proc.returncode == 0, out[-3000:]
    return out


def _stamp(run_dir: Path) -> dict[str, tuple[str, int]]:
    """Each finished artifact's manifest text and modification time (ns)."""
    out = {}
    for name in UPSTREAM:
        manifest = run_dir / name / "manifest.json"
        out[name] = (manifest.read_text(), manifest.stat().st_mtime_ns)
    return out


def test_killed_genrec_resumes_and_ends_like_an_uninterrupted_run(tmp_path, kill_at_checkpoint):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    # The uninterrupted run (same command, another directory) runs beside the one to be killed.
    uninterrupted = _start(straight, tmp_path / "straight.log")
    proc = _start(killed, tmp_path / "killed.log")
    ckpt = kill_at_checkpoint(proc, killed, tmp_path / "killed.log", timeout_s=240)
    assert ckpt["epoch"] < EPOCHS - 1  # epochs were left to train after the kill
    before = _stamp(killed)
    out_straight = _finish(uninterrupted, tmp_path / "straight.log")
    assert "[mscg] genrec: running" in out_straight and "resuming" not in out_straight

    out = _finish(_start(killed, tmp_path / "rerun.log"), tmp_path / "rerun.log")
    # (a) genrec resumed from the checkpoint written before the kill
    last = next((killed / "checkpoints").glob("genrec-*"), None)
    assert last is None  # removed once the stage finished
    assert "[mscg] genrec: resuming from" in out and "last.ckpt" in out, out[-3000:]
    assert "Restored all states from the checkpoint" in out
    # (b) no finished stage redone: 'up to date' lines, manifests untouched
    for stage in (
        "prepare",
        "sasrec",
        "text_embed",
        "image_embed",
        "rq_text",
        "rq_image",
        "rq_collab",
    ):
        assert f"[mscg] {stage}: up to date" in out
        assert f"[mscg] {stage}: running" not in out
    assert _stamp(killed) == before
    # (c) the same training after the resume and the same final metrics
    curves, curves_straight = read_scalars(killed)["genrec"], read_scalars(straight)["genrec"]
    for tag in ("train/loss_epoch", "val/loss"):
        assert len(curves[tag]) == EPOCHS
        assert curves[tag] == curves_straight[tag], tag
    metrics = json.loads((killed / "genrec" / "metrics.json").read_text())
    metrics_straight = json.loads((straight / "genrec" / "metrics.json").read_text())
    assert metrics["epochs"] == EPOCHS
    assert metrics == metrics_straight
