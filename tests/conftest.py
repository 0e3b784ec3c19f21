"""Shared test setup: offline hub, a single thread per test process, paths to shared data,
the tiny run directory that genrec tests start from, a tiny bbq tokenizer config, and killing
a run at its first genrec checkpoint (the resume tests)."""

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread per test process: the suite runs on 2 cores and spawns DDP workers.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or skip when this checkout has none beside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


#: Every stage genrec reads, on the tiny fixture.
GENREC_UPSTREAM = "prepare,sasrec,text_embed,image_embed,rq_text,rq_image,rq_collab"


@pytest.fixture(scope="session")
def upstream(tmp_path_factory) -> Path:
    """A run directory holding every artifact genrec reads (tiny fixture, one process).

    Shared by the session: tests read it or copy it, never write into it.
    """
    from mscg_lightning.cli import main

    run = tmp_path_factory.mktemp("genrec_upstream") / "run"
    args = ["fit", "--config", str(REPO / "configs" / "tiny.yaml"), "--run_dir", str(run)]
    args += ["--data_root", str(REPO / "tests" / "fixtures"), "--stages", GENREC_UPSTREAM]
    assert main(args) == 0
    return run


def tiny_bbq_config(**init_args: object) -> dict:
    """Model and data sections of a tiny bbq tokenizer (2 levels of 4 codes) for the tiny fixture;
    ``init_args`` add to or override the model's. A new dict on every call."""
    return {
        "model": {
            "class_path": "mscg_lightning.stages.bbq.module.BBQModule",
            "init_args": {
                "latent_dim": 8,
                "hidden_dims": [16],
                "levels": 2,
                "codebook_size": 4,
                "seq_layers": 1,
                "seq_inner": 16,
                "kmeans_iters": 2,
                "club_hidden": 8,
                **init_args,
            },
        },
        "data": {
            "class_path": "mscg_lightning.data.datamodule.SequenceDataModule",
            "init_args": {"batch_size": 16, "max_history": 20},
        },
    }


@pytest.fixture(scope="session")
def tiny_bbq() -> Callable[..., dict]:
    """``tiny_bbq(**init_args)``: :func:`tiny_bbq_config`, for test modules (importlib mode
    cannot import conftest)."""
    return tiny_bbq_config


def kill_at_first_genrec_checkpoint(
    proc: subprocess.Popen, run_dir: Path, log: Path, timeout_s: float, whole_group: bool = False
) -> dict:
    """SIGKILL ``proc`` (``mscg fit`` on ``run_dir``, writing to ``log``) as soon as genrec has
    written last.ckpt and logged the first epoch; that checkpoint. ``whole_group``: kill the
    process group (all DDP ranks; ``proc`` must lead its own session), not ``proc`` alone.

    Lightning saves an epoch's checkpoint before it logs the epoch's training means, so a kill
    in between loses that epoch's ``train/*_epoch`` points (training itself resumes exactly).
    The first epoch's console line is printed once they are logged: waiting for it keeps the
    test about resuming, not about that window (which a loaded machine widens)."""
    deadline = time.monotonic() + timeout_s
    found: list[Path] = []
    while not found and proc.poll() is None and time.monotonic() < deadline:
        # Lightning writes a checkpoint to a temporary file and moves it into place, so
        # last.ckpt is complete as soon as it exists.
        if "[mscg] genrec epoch 1/" in log.read_text():
            found = list((run_dir / "checkpoints").glob("genrec-*/last.ckpt"))
        time.sleep(0.01)
    if whole_group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert found, f"genrec wrote no checkpoint: {log.read_text()[-3000:]}"
    assert not (run_dir / "genrec").exists(), "the run finished before it could be killed"
    return torch.load(found[0], map_location="cpu", weights_only=False)


@pytest.fixture(scope="session")
def kill_at_checkpoint() -> Callable[..., dict]:
    """:func:`kill_at_first_genrec_checkpoint`, for test modules (importlib mode cannot import
    conftest)."""
    return kill_at_first_genrec_checkpoint
