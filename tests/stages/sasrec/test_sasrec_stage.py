"""The sasrec stage end to end on a tiny prepared/ directory: fit, test, export, resume."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from jsonargparse import Namespace

from mscg_lightning.artifacts import Manifest, read_embeddings, read_manifest, write_shards
from mscg_lightning.config import stage_parser
from mscg_lightning.data.datamodule import SequenceDataModule
from mscg_lightning.errors import MscgError
from mscg_lightning.pipeline import StageContext, run_stage
from mscg_lightning.stages.sasrec.module import SASRecModule
from mscg_lightning.stages.sasrec.stage import run, train_target_mode


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_prepared(
    root: Path,
    sequences: list[list[int]],
    num_items: int,
    max_history: int = 20,
    target_mode: str = "per_item",
):
    """A prepared/ artifact (ARCHITECTURE.md) with leave-one-out splits of ``sequences``."""
    lists = pa.list_(pa.int32())
    users = pa.array(range(len(sequences)), pa.int32())
    write_shards(
        pa.table(
            {
                "item_idx": pa.array(range(num_items), pa.int32()),
                "item_id": [f"i{i}" for i in range(num_items)],
            }
        ),
        root / "items",
    )
    write_shards(pa.table({"user_idx": users, "user_id": [f"u{u}" for u in users]}), root / "users")
    write_shards(
        pa.table({"user_idx": users, "items": pa.array([s[:-2] for s in sequences], lists)}),
        root / "train",
    )
    for split, cut in (("valid", -2), ("test", -1)):
        write_shards(
            pa.table(
                {
                    "user_idx": users,
                    "history": pa.array([s[:cut][-max_history:] for s in sequences], lists),
                    "target": pa.array([s[cut] for s in sequences], pa.int32()),
                }
            ),
            root / split,
        )
    Manifest(
        stage="prepare",
        config_hash="test",
        rows={"users": len(sequences), "items": num_items},
        extra={
            "num_items": num_items,
            "num_users": len(sequences),
            "max_history": max_history,
            "target_mode": target_mode,
        },
    ).write(root)


def successor_sequences(num_users: int, num_items: int, seed: int = 0) -> list[list[int]]:
    """Item i is always followed by item i+1 (mod num_items); random starts and lengths."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, num_items, num_users)
    lengths = rng.integers(5, 30, num_users)  # some longer than the window: several chunks
    return [[int((s + t) % num_items) for t in range(n)] for s, n in zip(starts, lengths)]


def section(**trainer) -> Namespace:
    return stage_parser().parse_object(
        {
            "model": {
                "class_path": "mscg_lightning.stages.sasrec.module.SASRecModule",
                "init_args": {
                    "hidden_size": 32,
                    "num_layers": 1,
                    "num_heads": 1,
                    "inner_size": 64,
                    "dropout": 0.1,
                    "max_len": 10,
                    "lr": 5e-3,
                },
            },
            "data": {
                "class_path": "mscg_lightning.data.datamodule.SequenceDataModule",
                "init_args": {
                    "batch_size": 32,
                    "eval_batch_size": 64,
                    "max_history": 10,
                    "train_mode": "windows",
                    "group_by_length": True,
                },
            },
            "trainer": {
                "accelerator": "cpu",
                "devices": 1,
                "enable_progress_bar": False,
                "enable_model_summary": False,
                "num_sanity_val_steps": 0,
                **trainer,
            },
        }
    )


def context(run_dir: Path, sec: Namespace) -> StageContext:
    prepared = run_dir / "prepare"
    return StageContext(
        name="sasrec",
        section=sec,
        config=Namespace(),
        run_dir=run_dir,
        data_root=run_dir,
        seed=0,
        inputs={"prepare": prepared},
        config_hash="h1",
        input_hashes={"prepare": Manifest.read(prepared).content_hash},
    )


def test_stage_learns_exports_and_resumes(tmp_path):
    num_items = 24
    write_prepared(tmp_path / "prepare", successor_sequences(96, num_items), num_items, 10)
    # run() directly (not run_stage, which clears the checkpoints of a finished stage).
    ctx = context(tmp_path, section(max_epochs=5))
    ctx.out_dir = tmp_path / "out"
    ctx.out_dir.mkdir()
    manifest = run(ctx)

    out = ctx.out_dir
    assert read_manifest(out, stage="sasrec").content_hash == manifest.content_hash
    assert manifest.rows == {"items": num_items}
    assert manifest.extra == {"dim": 32, "modality": "collab", "missing": 0}
    table = read_embeddings(out, num_items=num_items)
    assert table.item_idx.tolist() == list(range(num_items))
    assert table.embeddings.shape == (num_items, 32)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "SASRec" and metrics["epochs"] == 5
    assert metrics["test"]["num_users"]["mean"] == 96
    r10 = metrics["test"]["recall@10"]
    assert r10["ci_low"] <= r10["mean"] <= r10["ci_high"]
    # The pattern is deterministic: the best checkpoint must have learnt it.
    assert metrics["test"]["recall@1"]["mean"] >= 0.9
    assert metrics["valid"]["ndcg@10"]["mean"] == pytest.approx(metrics["best_val_ndcg@10"])
    # Targets never repeat a history item here: masking history can only move them up.
    masked = metrics["test_history_masked"]
    assert masked["mrr@10"]["mean"] >= metrics["test"]["mrr@10"]["mean"]
    assert masked["num_users"] == metrics["test"]["num_users"]

    # The exported table is the one of the best checkpoint's weights.
    best = torch.load(metrics["best_checkpoint"], weights_only=False)["state_dict"]
    assert torch.allclose(best["model.item_emb.weight"][1:], table.embeddings)

    # A rerun resumes from last.ckpt, which has finished: no new epoch, same results.
    ctx = context(tmp_path, section(max_epochs=5))
    ctx.out_dir = tmp_path / "again"
    ctx.out_dir.mkdir()
    run(ctx)
    rerun = json.loads((ctx.out_dir / "metrics.json").read_text())
    assert rerun["epochs"] == 5
    assert rerun["test"]["recall@10"] == metrics["test"]["recall@10"]
    assert torch.equal(read_embeddings(ctx.out_dir).embeddings, table.embeddings)


def test_run_stage_writes_the_artifact_in_place(tmp_path):
    write_prepared(tmp_path / "prepare", successor_sequences(16, 12), 12, 10)
    manifest = run_stage(context(tmp_path, section(max_epochs=1)))
    assert read_manifest(tmp_path / "sasrec", stage="sasrec").content_hash == manifest.content_hash
    assert read_embeddings(tmp_path / "sasrec", num_items=12).embeddings.shape == (12, 32)
    assert json.loads((tmp_path / "sasrec" / "metrics.json").read_text())["epochs"] == 1


def test_stage_refuses_history_longer_than_model(tmp_path):
    write_prepared(tmp_path / "prepare", successor_sequences(8, 12), 12, 10)
    sec = section(max_epochs=1)
    sec["model.init_args.max_len"] = 5
    with pytest.raises(MscgError, match="exceeds sasrec.model.init_args.max_len"):
        run_stage(context(tmp_path, sec))
    assert not (tmp_path / "sasrec").exists()


def test_mask_history_removes_history_items_from_ranking():
    module = SASRecModule(
        num_items=15, hidden_size=8, num_heads=1, inner_size=16, max_len=6, mask_history=True
    ).eval()
    history = torch.tensor([[-1, 0, 1, 2, 3, 4], [-1, -1, -1, -1, 7, 8]])
    ranked = module.rank(history, 10)
    assert ranked.shape == (2, 10)
    assert not set(ranked[0].tolist()) & {0, 1, 2, 3, 4}
    assert not set(ranked[1].tolist()) & {7, 8}


def test_window_loss_weighs_every_target_equally():
    torch.manual_seed(0)
    module = SASRecModule(num_items=20, hidden_size=8, num_heads=1, inner_size=16, max_len=4)
    module.log = lambda *args, **kwargs: None  # no trainer attached
    module.eval()  # no dropout: the three losses below see the same outputs
    history = torch.tensor([[-1, -1, 3, 4], [1, 2, 3, 4]])
    targets = torch.tensor([[-1, -1, 4, 5], [2, 3, 4, 6]])
    batch = {"history": history, "targets": targets}
    mean = module.training_step(batch, 0)  # plain mean over the 6 targets
    summed = module.training_step({**batch, "loss_norm": torch.tensor(12.0)}, 0)
    assert summed.item() == pytest.approx(mean.item() * 6 / 12, rel=1e-5)
    # A batch's loss is the sum of its rows' losses: a short window is not up-weighted.
    short = module.training_step(
        {"history": history[:1], "targets": targets[:1], "loss_norm": torch.tensor(12.0)}, 0
    )
    long = module.training_step(
        {"history": history[1:], "targets": targets[1:], "loss_norm": torch.tensor(12.0)}, 0
    )
    assert (short + long).item() == pytest.approx(summed.item(), rel=1e-5)


def test_sasrec_trains_on_every_prefix_of_last_item_data(tmp_path):
    """PixelRec-style prepared data (last_item targets): SASRec still trains on every prefix."""
    sequences = successor_sequences(16, 12)
    write_prepared(tmp_path / "prepare", sequences, 12, 10, target_mode="last_item")
    data = SequenceDataModule(prepared_dir=str(tmp_path / "prepare"), max_history=10)
    assert train_target_mode(data) == "per_item"
    data.setup()
    assert len(data.datasets["train"]) == sum(len(s) - 3 for s in sequences)  # every prefix
    explicit = SequenceDataModule(prepared_dir=str(tmp_path / "prepare"), target_mode="last_item")
    assert train_target_mode(explicit) == "last_item"
    explicit.setup()
    assert len(explicit.datasets["train"]) == len(sequences)
    # The stage itself: windows need per_item targets, which it now defaults to.
    manifest = run_stage(context(tmp_path, section(max_epochs=1)))
    assert manifest.rows == {"items": 12}
