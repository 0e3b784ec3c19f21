"""Stage macrec: prepared sequences + text and image codes parts -> a fitted and tested MACRec
generator with genrec's outputs (metrics, predictions, per-user ranks, model)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from jsonargparse import Namespace

from mscg_lightning.artifacts import Manifest, read_manifest, write_codes
from mscg_lightning.cli import main
from mscg_lightning.config import stage_parser
from mscg_lightning.errors import MscgError
from mscg_lightning.pipeline import StageContext
from mscg_lightning.stages.genrec.macrec_stage import run
from mscg_lightning.stages.rq.collisions import append_collision_level

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The tiny fixture's prepare artifact."""
    run_dir = tmp_path_factory.mktemp("macrec") / "run"
    args = ["fit", "--config", str(REPO / "configs" / "tiny.yaml"), "--run_dir", str(run_dir)]
    args += ["--data_root", str(REPO / "tests" / "fixtures"), "--stages", "prepare"]
    assert main(args) == 0
    return run_dir / "prepared"


def _codes_part(directory, modality, item_idx, seed, levels=2, k=4):
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    codes = append_collision_level(rng.integers(0, k, (len(item_idx), levels)), item_idx)
    write_codes(directory, item_idx, codes)
    extra = {"modality": modality, "levels": levels, "codebook_size": k}
    extra["collision_size"] = int(codes[:, -1].max()) + 1
    Manifest(stage=f"rq_xmodal:{modality}", config_hash=str(seed), extra=extra).write(directory)


def _context(tmp_path, prepared, **model_args):
    num_items = int(read_manifest(prepared, stage="prepare").extra["num_items"])
    xmodal = tmp_path / "rq_xmodal"
    _codes_part(xmodal / "text", "text", np.arange(num_items), 0)
    _codes_part(xmodal / "image", "image", np.arange(num_items - 2), 1)  # 2 items lack images
    init_args = dict(
        d_model=16, num_heads=2, d_kv=8, d_ff=32, encoder_layers=1, decoder_layers=1,
        prompt_tokens=2, num_beams=10, top_k=10, warmup_steps=2,
    )  # fmt: skip
    section = stage_parser().parse_object(
        {
            "model": {
                "class_path": "mscg_lightning.stages.genrec.macrec_module.MacrecModule",
                "init_args": {**init_args, **model_args},
            },
            "data": {
                "class_path": "mscg_lightning.data.datamodule.SequenceDataModule",
                "init_args": {"batch_size": 32, "max_history": 20},
            },
            "trainer": {
                "accelerator": "cpu",
                "devices": 1,
                "max_epochs": 2,
                "enable_progress_bar": False,
                "enable_model_summary": False,
                "logger": False,
            },
        }
    )
    out = tmp_path / "out"
    out.mkdir()
    return StageContext(
        name="macrec",
        section=section,
        config=Namespace(),
        run_dir=tmp_path,
        data_root=tmp_path,
        seed=0,
        inputs={"prepare": prepared, "text": xmodal / "text", "image": xmodal / "image"},
        config_hash="h",
        out_dir=out,
    )


def test_stage_fits_tests_and_writes_genrec_outputs(tmp_path, prepared):
    ctx = _context(tmp_path, prepared)
    manifest = run(ctx)
    out = ctx.out_dir
    metrics = json.loads((out / "metrics.json").read_text())
    users = int(metrics["test"]["num_users"]["mean"])
    assert users == manifest.rows["test_users"] > 0
    ranks_table = pq.read_table(out / "test_ranks.parquet")
    assert ranks_table.schema.metadata[b"list_length"] == b"10"
    ranks = ranks_table.to_pydict()
    preds = pq.read_table(out / "predictions.parquet").to_pydict()
    assert len(ranks["user_idx"]) == len(preds["user_idx"]) == users
    rank = np.array(ranks["rank"])
    recall = float(np.mean((rank >= 0) & (rank < 10)))
    assert metrics["test"]["recall@10"]["mean"] == pytest.approx(recall)
    for items, target, r in zip(preds["items"], ranks["target"], ranks["rank"]):
        assert r == (items.index(target) if target in items else -1)
        assert len(set(i for i in items if i >= 0)) == len([i for i in items if i >= 0])
    assert manifest.extra["token_layout"]["modalities"] == ["text", "image"]
    assert (out / "model.ckpt").is_file() and (out / "config.yaml").is_file()


def test_inputs_by_source_spec_and_missing_input(tmp_path, prepared):
    # Source specs name a part of an artifact: rq_xmodal:text; the ablation rows use the same
    # stage with other switches (here: w/o explicit alignment, w/o implicit, mql4grec rule).
    ctx = _context(
        tmp_path,
        prepared,
        tasks=["seqrec", "seqimage"],
        implicit_weight=0.0,
        ensemble_rule="mql4grec",
        val_metric="loss",
    )
    ctx.inputs = {"prepare": prepared, "rq_xmodal": tmp_path / "rq_xmodal"}
    # the stage graph records the slot specs in ctx.sources; a section may name them as well
    ctx.sources = {"text": "rq_xmodal:text"}
    ctx.section.inputs = Namespace(image="rq_xmodal:image")
    manifest = run(ctx)
    assert manifest.extra["inputs"] == {"text": "rq_xmodal:text", "image": "rq_xmodal:image"}
    metrics = json.loads((ctx.out_dir / "metrics.json").read_text())
    assert metrics["tasks"] == ["seqrec", "seqimage"] and metrics["ensemble_rule"] == "mql4grec"
    shutil.rmtree(ctx.out_dir)
    ctx.out_dir.mkdir()
    ctx.sources = {}
    ctx.section.inputs = Namespace(text="rq_xmodal:text")
    with pytest.raises(MscgError, match="no 'image' codes input"):
        run(ctx)
    ctx.section.inputs = Namespace(text="rq_xmodal:text", image="rq_xmodal:nope")
    with pytest.raises(MscgError, match="does not exist"):
        run(ctx)
    assert not any(ctx.out_dir.iterdir())  # refused before anything was written
