"""bbq -> genrec end to end on the tiny fixture (BBQRec): triple codes source, similarity
attention over the bbq item vectors, inherited code embeddings, predictions."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from jsonargparse import Namespace

from mscg_lightning.artifacts import read_manifest
from mscg_lightning.config import stage_parser
from mscg_lightning.errors import MscgError
from mscg_lightning.pipeline import StageContext
from mscg_lightning.stages.bbq.stage import run as run_bbq
from mscg_lightning.stages.genrec.stage import load_trained, read_catalogue
from mscg_lightning.stages.genrec.stage import run as run_genrec

REPO = Path(__file__).resolve().parents[3]
TRAINER = {
    "accelerator": "cpu",
    "devices": 1,
    "max_epochs": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "logger": False,
}


@pytest.fixture(scope="module")
def bbq_run(tmp_path_factory, tiny_bbq) -> Path:
    """prepare + text/image embeddings of the fixture, then a tiny bbq tokenizer at <run>/bbq."""
    from mscg_lightning.cli import main

    run_dir = tmp_path_factory.mktemp("bbqgen") / "run"
    args = ["fit", "--config", str(REPO / "configs" / "tiny.yaml"), "--run_dir", str(run_dir)]
    args += ["--data_root", str(REPO / "tests" / "fixtures")]
    assert main([*args, "--stages", "prepare,text_embed,image_embed"]) == 0
    bbq = {**tiny_bbq(), "trainer": TRAINER}
    inputs = {"text": run_dir / "text_embed", "image": run_dir / "image_embed"}
    (run_dir / "bbq").mkdir()
    assert run_bbq(_context(run_dir, "bbq", stage_parser().parse_object(bbq), inputs))
    return run_dir


def _context(run_dir: Path, name: str, section, inputs: dict | None = None) -> StageContext:
    return StageContext(
        name=name,
        section=section,
        config=Namespace(),
        run_dir=run_dir,
        data_root=run_dir,
        seed=0,
        inputs={"prepare": run_dir / "prepared", **(inputs or {})},
        config_hash=name,
        out_dir=run_dir / name,
    )


def genrec_section(**model_args):
    section = stage_parser().parse_object(
        {
            "model": {
                "class_path": "mscg_lightning.stages.genrec.module.GenRecModule",
                "init_args": {
                    "d_model": 8,
                    "num_heads": 2,
                    "d_kv": 4,
                    "d_ff": 16,
                    "encoder_layers": 1,
                    "decoder_layers": 1,
                    "num_beams": 10,
                    "warmup_steps": 2,
                    **model_args,
                },
            },
            "data": {
                "class_path": "mscg_lightning.data.datamodule.SequenceDataModule",
                "init_args": {"batch_size": 32, "max_history": 20},
            },
            "trainer": TRAINER,
        }
    )
    section.modalities = {"bbq": "bbq"}
    section.target = "bbq"
    return section


def test_bbq_codes_train_and_test_genrec_with_similarity_attention(bbq_run: Path) -> None:
    name = "genrec"
    (bbq_run / name).mkdir()
    section = genrec_section(sim_attention=True, sim_buckets=10, inherit_code_embeddings=True)
    manifest = run_genrec(_context(bbq_run, name, section))
    metrics = json.loads((bbq_run / name / "metrics.json").read_text())
    assert metrics["model"].startswith("GenRec (BBQRec")
    assert 0.0 <= metrics["test"]["recall@10"]["mean"] <= 1.0
    layout = manifest.extra["token_layout"]
    bbq = read_manifest(bbq_run / "bbq").extra
    assert layout["triple"] == {"modality": "bbq", "signals": 3, "codebook_size": 4}
    # compacted: no more rows per level than items (and than K^S)
    items = manifest.rows["items"]
    assert all(v <= min(items, bbq["codebook_size"]) for v in layout["vocab_sizes"][0][:-1])
    assert pq.read_table(bbq_run / name / "predictions.parquet").num_rows > 0
    catalogue = read_catalogue(bbq_run / "prepared", {"bbq": "bbq"}, "bbq", bbq_run)
    assert catalogue.bbq is not None and catalogue.bbq.item_vectors(items).shape[1] == bbq["dim"]
    # the trained model reloads with its triples and item vectors (mscg predict's path)
    model, _ = load_trained(bbq_run, None)
    ranked, _ = model.rank(torch.tensor([[-1, 0, 1], [2, 3, 4]]))
    assert ranked.shape == (2, 10) and (ranked[:, 0] >= 0).all()


def test_inherit_needs_d_model_equal_to_the_latent_dim(bbq_run: Path) -> None:
    name = "genrec_bad"
    (bbq_run / name).mkdir()
    section = genrec_section(d_model=16, inherit_code_embeddings=True)
    with pytest.raises(MscgError, match="latent_dim"):
        run_genrec(_context(bbq_run, name, section))
