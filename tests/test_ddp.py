"""DDP on the CPU: two gloo processes evaluate exactly like one process (SASRec, GenRec, and
`mscg fit` with a 2-process genrec stage); bf16-mixed runs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pyarrow.parquet as pq
import pytest
import torch

from mscg_lightning.artifacts import read_manifest
from mscg_lightning.cli import main
from mscg_lightning.data.datamodule import SequenceDataModule
from mscg_lightning.stages.genrec.module import GenRecModule
from mscg_lightning.stages.genrec.stage import _write_predictions, build_catalogue
from mscg_lightning.stages.sasrec.module import SASRecModule

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
FIXTURES = str(REPO / "tests" / "fixtures")
SOURCES = {"text": "rq_text", "image": "rq_image", "collab": "rq_collab"}


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


# ------------------------------------------------------------------------------------ GenRec


class SaveTestOutputs(L.Callback):
    """Rank 0 saves what the genrec stage exports after ``trainer.test``: the metrics with CIs,
    the gathered predictions, and the predictions Parquet (``stage._write_predictions``).

    ``on_test_end`` runs after the module's ``on_test_epoch_end`` has gathered every rank's
    predictions; with ``ddp_spawn`` a file is the only way back to the test process.
    """

    def __init__(self, out: Path, prepared: Path) -> None:
        self.out, self.prepared = out, prepared

    def on_test_end(self, trainer: L.Trainer, pl_module: GenRecModule) -> None:
        if trainer.global_rank == 0:
            predictions = pl_module.predictions
            torch.save({"result": pl_module.test_result, "predictions": predictions}, self.out)
            _write_predictions(self.out.with_suffix(".parquet"), predictions, self.prepared)


def _genrec(run: Path) -> tuple[GenRecModule, SequenceDataModule]:
    prepared = run / "prepared"
    layout, codes, present = build_catalogue(prepared, SOURCES, "collab", run)
    L.seed_everything(0)
    model = GenRecModule(
        token_layout=layout,
        **dict(d_model=16, num_heads=2, d_kv=8, d_ff=32, encoder_layers=1, decoder_layers=1),
        **dict(num_beams=10, top_k=10, warmup_steps=5, mask_prob=0.5),
    )
    model.set_catalogue(codes, present)
    data = SequenceDataModule(str(prepared), batch_size=32, eval_batch_size=7, group_by_length=True)
    # 59 of the 60 test users: 30 + 29 per rank, which a padding sampler would even out by
    # ranking a user twice; eval batches of 7 leave an uneven last batch on each rank. The
    # datasets set up here travel to the spawned ranks with the datamodule (setup() keeps them).
    data.setup("test")
    test = data.datasets["test"]
    test.row, test.end = test.row[:-1], test.end[:-1]
    return model, data


def test_genrec_two_process_test_equals_single_process(upstream, tmp_path):
    """Same trained weights: 2 gloo processes give the single-process metrics (means and CIs)
    and predictions, and every test user is ranked exactly once across the ranks."""
    model, data = _genrec(upstream)
    _trainer(max_epochs=2, devices=1).fit(model, data)
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    prepared = upstream / "prepared"
    _trainer(devices=1, callbacks=[SaveTestOutputs(one, prepared)]).test(model, data)

    model2, data2 = _genrec(upstream)
    model2.load_state_dict(torch.load(weights))
    trainer = _trainer(devices=2, strategy="ddp_spawn", callbacks=[SaveTestOutputs(two, prepared)])
    trainer.test(model2, data2)

    single, double = torch.load(one), torch.load(two)
    assert single["result"]["num_users"]["mean"] == 59
    assert double["result"] == single["result"]  # exact: the same per-user ranks, sorted by user
    test = data.datasets["test"]
    test_users = sorted(int(test.user_idx[r]) for r in test.row)
    users = torch.cat([p[0] for p in double["predictions"]])
    assert sorted(users.tolist()) == test_users  # each user exactly once
    assert len(double["predictions"]) == 10  # 5 batches of <= 7 users on each of the 2 ranks

    def by_user(predictions):
        out = {}
        for user, items, scores in predictions:
            out.update({int(u): (i, s) for u, i, s in zip(user, items, scores)})
        return out

    want, got = by_user(single["predictions"]), by_user(double["predictions"])
    assert want.keys() == got.keys()
    for user, (items, scores) in want.items():
        assert torch.equal(got[user][0], items), user
        torch.testing.assert_close(got[user][1], scores, rtol=0, atol=1e-5)
    # the exported Parquet (what the stage writes from rank 0) holds the same rows
    rows_one = pq.read_table(one.with_suffix(".parquet")).to_pylist()
    rows_two = pq.read_table(two.with_suffix(".parquet")).to_pylist()
    assert [r["user_idx"] for r in rows_two] == test_users
    assert [(r["user_idx"], r["items"]) for r in rows_two] == [
        (r["user_idx"], r["items"]) for r in rows_one
    ]


def _mscg_genrec(run: Path, *extra: str) -> list[str]:
    return [
        *("fit", "--config", TINY, "--run_dir", str(run), "--data_root", FIXTURES),
        *("--stages", "genrec", *extra),
    ]


def test_mscg_fit_genrec_on_two_processes_exports_the_single_process_results(upstream, tmp_path):
    """`mscg fit` with a 2-process genrec stage (strategy ddp, as configs/trainer/gpu-ddp-bf16
    sets it): rank 0 alone writes metrics.json and predictions.parquet, equal to a 1-process run.

    0 epochs: both runs test the same seeded initial weights (training on 2 ranks would see
    other batches than on 1, so trained weights could not be compared).
    """
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(upstream, one)
    shutil.copytree(upstream, two)
    assert main(_mscg_genrec(one, "--genrec.trainer.max_epochs", "0")) == 0
    # strategy ddp re-runs the command for rank 1: a subprocess, not this test process
    cmd = [sys.executable, "-m", "mscg_lightning"]
    cmd += _mscg_genrec(two, "--genrec.trainer.max_epochs", "0")
    cmd += ["--genrec.trainer.devices", "2", "--genrec.trainer.strategy", "ddp"]
    # A ddp_spawn test before this one leaves MASTER_PORT etc. in os.environ: let the run pick
    # its own rendezvous; one intra-op thread per rank (2 ranks on 2 shared cores).
    drop = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in out
    assert proc.stdout.count("[mscg] genrec: done") == 1, out[-3000:]  # rank 0 reports alone

    metrics = json.loads((two / "genrec" / "metrics.json").read_text())
    assert metrics["test"]["num_users"]["mean"] == 60
    assert metrics == json.loads((one / "genrec" / "metrics.json").read_text())
    # the per-user ranks of `mscg test` are gathered from both ranks
    from mscg_lightning.compare import read_test_ranks

    users_two, ranks_two, _ = read_test_ranks(two / "genrec")
    users_one, ranks_one, _ = read_test_ranks(one / "genrec")
    assert users_two.tolist() == list(range(60)) and ranks_two.tolist() == ranks_one.tolist()
    rows_two = pq.read_table(two / "genrec" / "predictions.parquet").to_pylist()
    rows_one = pq.read_table(one / "genrec" / "predictions.parquet").to_pylist()
    assert [r["user_idx"] for r in rows_two] == list(range(60))
    for a, b in zip(rows_two, rows_one):
        assert a["items"] == b["items"], a["user_idx"]
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)
    assert not list((two / "checkpoints").glob("genrec-*"))  # removed once the stage finished


def test_mscg_fit_refuses_a_spawning_ddp_strategy_with_one_sentence(upstream, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(upstream, run)
    extra = ["--genrec.trainer.max_epochs", "0", "--genrec.trainer.devices", "2"]
    code = main(_mscg_genrec(run, *extra, "--genrec.trainer.strategy", "ddp_spawn"))
    err = capsys.readouterr().err
    assert code == 2 and "ddp_spawn" in err and "'ddp'" in err, err[-2000:]
    assert not (run / "genrec").exists()
