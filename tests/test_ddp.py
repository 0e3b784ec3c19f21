"""DDP on the CPU: two gloo processes evaluate exactly like one process; bf16-mixed runs."""

from pathlib import Path

import lightning as L
import pytest
import torch

from mscg_lightning.artifacts import read_manifest
from mscg_lightning.cli import main
from mscg_lightning.data.datamodule import SequenceDataModule
from mscg_lightning.stages.sasrec.module import SASRecModule

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ddp") / "run"
    args = ["prepare", "--config", str(REPO / "configs" / "tiny.yaml"), "--run_dir", str(run)]
    assert main([*args, "--data_root", str(REPO / "tests" / "fixtures")]) == 0
    return run / "prepared"


def _model_and_data(prepared: Path, eval_batch_size: int):
    L.seed_everything(0)
    num_items = int(read_manifest(prepared).extra["num_items"])
    model = SASRecModule(
        num_items=num_items, hidden_size=16, num_layers=1, num_heads=1, inner_size=32
    )
    data = SequenceDataModule(str(prepared), batch_size=16, eval_batch_size=eval_batch_size)
    return model, data


def _trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_two_process_test_metrics_equal_single_process(prepared, tmp_path):
    model, data = _model_and_data(prepared, eval_batch_size=7)  # 60 users: uneven batches
    _trainer(max_epochs=2, devices=1).fit(model, data)
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    single = _trainer(devices=1).test(model, data)[0]

    model2, data2 = _model_and_data(prepared, eval_batch_size=7)
    model2.load_state_dict(torch.load(weights))
    double = _trainer(devices=2, strategy="ddp_spawn").test(model2, data2)[0]
    assert set(single) == set(double) and len(single) == 9
    for name, value in single.items():
        assert double[name] == pytest.approx(value, abs=1e-7), name


def test_bf16_mixed_cpu_smoke(prepared):
    model, data = _model_and_data(prepared, eval_batch_size=64)
    trainer = _trainer(max_epochs=1, devices=1, precision="bf16-mixed", limit_train_batches=3)
    trainer.fit(model, data)
    result = trainer.test(model, data)[0]
    assert all(torch.isfinite(torch.tensor(v)) for v in result.values())
    assert 0.0 <= result["test/recall@10"] <= 1.0
