"""Stage bbq end to end on the tiny fixture: triple codes, vectors, parts, diagnostics."""

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from jsonargparse import Namespace

from mscg_lightning.artifacts import read_codes, read_embeddings, read_manifest
from mscg_lightning.config import stage_parser
from mscg_lightning.errors import MscgError
from mscg_lightning.pipeline import StageContext
from mscg_lightning.stages.bbq.stage import load_model, run
from mscg_lightning.stages.bbq.triples import split_triples

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from mscg_lightning.cli import main

    run_dir = tmp_path_factory.mktemp("bbq") / "run"
    args = ["fit", "--config", str(REPO / "configs" / "tiny.yaml"), "--run_dir", str(run_dir)]
    args += ["--data_root", str(REPO / "tests" / "fixtures")]
    assert main([*args, "--stages", "prepare,text_embed,image_embed"]) == 0
    return run_dir


@pytest.fixture
def bbq_context(tiny_bbq) -> Callable[..., StageContext]:
    """``bbq_context(run_dir, out, inputs, **model_args)``: a context of stage bbq on ``run_dir``'s
    prepared data that writes into ``out`` (the tiny bbq config, lr 1e-2, 2 CPU epochs)."""

    def make(run_dir: Path, out: Path, inputs: dict, **model_args) -> StageContext:
        trainer = {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 2,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": False,
        }
        bbq = tiny_bbq(lr=1e-2, **model_args)
        section = stage_parser().parse_object({**bbq, "trainer": trainer})
        out.mkdir(parents=True)
        return StageContext(
            name="bbq",
            section=section,
            config=Namespace(),
            run_dir=out.parent,
            data_root=run_dir,
            seed=0,
            inputs={"prepare": run_dir / "prepared", **inputs},
            config_hash="h",
            out_dir=out,
        )

    return make


def test_stage_writes_triples_vectors_and_parts(tiny_run, tmp_path, bbq_context):
    inputs = {"text": tiny_run / "text_embed", "image": tiny_run / "image_embed"}
    ctx = bbq_context(tiny_run, tmp_path / "bbq", inputs)
    manifest = run(ctx)
    num_items = int(read_manifest(tiny_run / "prepared").extra["num_items"])
    codes = read_codes(ctx.out_dir, num_items=num_items)
    assert codes.codes.shape == (num_items, 3) and manifest.extra["signals"] == [
        "id",
        "text",
        "image",
    ]
    assert codes.codebook_size == 4**3
    parts = {s: read_codes(ctx.out_dir / s).codes for s in ("id", "text", "image")}
    factors = split_triples(codes.codes[:, :2], 4, 3)  # [N, S, L]
    for s, name in enumerate(("id", "text", "image")):
        assert torch.equal(factors[:, s], parts[name][:, :2])
    vectors = read_embeddings(ctx.out_dir)
    assert vectors.embeddings.shape == (num_items, 3 * 8)
    diag = json.loads((ctx.out_dir / "diagnostics.json").read_text())
    assert len(diag["mim_per_epoch"]) == 2 and len(diag["val_per_epoch"]) == 2
    assert 0.0 <= diag["val_exported"]["recall@10"] <= 1.0
    rates = diag["collision_rates"]
    assert rates["triple"] <= min(rates["id"], rates["text"], rates["image"])
    # the saved tokenizer reproduces the exported per-signal codes
    module = load_model(ctx.out_dir / "codebooks.safetensors")
    for m in ("text", "image"):
        t = read_embeddings(inputs[m])
        module.model.set_features(m, t.item_idx, t.embeddings)
    again, _ = module.model.encode_catalogue()
    assert torch.equal(again, factors)


def test_text_only_and_source_specs(tiny_run, tmp_path, bbq_context):
    ctx = bbq_context(tiny_run, tmp_path / "bbq", {"text_embed": tiny_run / "text_embed"})
    ctx.section.inputs = Namespace(text="text_embed")
    ctx.run_dir = tiny_run  # a spec resolves against the run's artifacts (graph: resolve_source)
    manifest = run(ctx)
    assert manifest.extra["signals"] == ["id", "text"]
    assert manifest.extra["codebook_size"] == 16
    assert (ctx.out_dir / "text").is_dir() and not (ctx.out_dir / "image").exists()


def test_ablation_switches_run(tiny_run, tmp_path, bbq_context):
    inputs = {"text": tiny_run / "text_embed"}
    ctx = bbq_context(
        tiny_run, tmp_path / "bbq", inputs, shared_codebook=False, beta=0.0, gamma=0.0
    )
    manifest = run(ctx)
    assert manifest.extra["levels"] == 2
    diag = json.loads((ctx.out_dir / "diagnostics.json").read_text())
    assert diag["shared_codebook"] is False


def test_no_content_input_is_a_user_error(tiny_run, tmp_path, bbq_context):
    ctx = bbq_context(tiny_run, tmp_path / "bbq", {})
    with pytest.raises(MscgError, match="no content input"):
        run(ctx)
    assert not any((tmp_path / "bbq").iterdir())


def test_too_large_triple_vocabulary_is_a_user_error(tiny_run, tmp_path, bbq_context):
    inputs = {"text": tiny_run / "text_embed", "image": tiny_run / "image_embed"}
    ctx = bbq_context(tiny_run, tmp_path / "bbq", inputs, codebook_size=2048)
    with pytest.raises(MscgError, match="int32"):
        run(ctx)
    assert not any((tmp_path / "bbq").iterdir())


def test_given_embeddings_column_by_graph_spec(tiny_run, tmp_path, bbq_context):
    ctx = bbq_context(tiny_run, tmp_path / "bbq", {})
    ctx.sources = {"text": "prepare:emb_text"}  # the stage graph's slot spec of a given column
    ctx.run_dir = tiny_run  # specs resolve against the run's artifacts (graph: resolve_source)
    manifest = run(ctx)
    assert manifest.extra["signals"] == ["id", "text"]
