"""Stage rq_xmodal: two embedding artifacts in, two codes parts + pseudo-labels out."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from jsonargparse import Namespace

from mscg_lightning.artifacts import Manifest, read_codes, write_embeddings
from mscg_lightning.config import stage_parser
from mscg_lightning.errors import MscgError
from mscg_lightning.pipeline import StageContext
from mscg_lightning.stages.rq_xmodal.module import CrossModalRQModule
from mscg_lightning.stages.rq_xmodal.stage import run


def _embeddings(directory, item_idx, dim, seed):
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    write_embeddings(directory, item_idx, rng.normal(size=(len(item_idx), dim)).astype(np.float32))
    Manifest(stage="given", config_hash="x").write(directory)
    return directory


def _context(tmp_path, collision="level", clusters=4):
    text = _embeddings(tmp_path / "text_embed", np.arange(40), 12, 0)
    # item 39 has no image: it gets a text code only
    image = _embeddings(tmp_path / "image_embed", np.arange(39), 10, 1)
    section = stage_parser().parse_object(
        {
            "model": {
                "class_path": "mscg_lightning.stages.rq_xmodal.module.CrossModalRQModule",
                "init_args": {
                    "text_dim": 1,  # filled in by the stage
                    "image_dim": 1,
                    "latent_dim": 8,
                    "hidden_dims": [16],
                    "levels": 3,
                    "codebook_size": 4,
                    "pseudo_label_clusters": clusters,
                    "pseudo_label_iters": 3,
                    "kmeans_iters": 2,
                    "collision": collision,
                    "lr": 1e-2,
                },
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
    section.data = Namespace(init_args=Namespace(batch_size=16))
    out = tmp_path / "out"
    out.mkdir()
    return StageContext(
        name="rq_xmodal",
        section=section,
        config=Namespace(),
        run_dir=tmp_path,
        data_root=tmp_path,
        seed=0,
        inputs={"text": text, "image": image},
        config_hash="h",
        out_dir=out,
    )


@pytest.mark.parametrize("collision", ["level", "reassign"])
def test_stage_writes_two_codes_parts(tmp_path, collision):
    ctx = _context(tmp_path, collision)
    manifest = run(ctx)
    out = ctx.out_dir
    text, image = read_codes(out / "text"), read_codes(out / "image")
    assert text.codes.shape == (40, 4) and image.codes.shape == (39, 4)
    assert text.item_idx.tolist() == list(range(40))
    assert manifest.extra["parts"]["text"]["levels"] == 3
    diag = json.loads((out / "diagnostics.json").read_text())
    for m in ("text", "image"):
        d = diag[m]
        assert d["collision"] == collision
        assert 0.0 <= d["collision_rate_after"] <= d["collision_rate_before"] <= 1.0
    labels = pq.read_table(out / "pseudo_labels.parquet").to_pydict()
    assert labels["item_idx"] == list(range(39)) and max(labels["text_label"]) < 4
    model = CrossModalRQModule.load_model(out / "codebooks.safetensors")
    x = np.random.default_rng(1).normal(size=(39, 10)).astype(np.float32)  # _embeddings' image
    raw = model.encode("image", torch.from_numpy(x))
    if collision == "level":  # the saved tokenizer reproduces the exported codes
        assert torch.equal(raw, torch.as_tensor(image.codes[:, :3]))


def test_reassign_lowers_collisions_on_crowded_codes(tmp_path):
    # 40 items on 4^3 = 64 tuples collide; reassignment must not leave more shared tuples.
    ctx = _context(tmp_path, "reassign")
    run(ctx)
    diag = json.loads((ctx.out_dir / "diagnostics.json").read_text())
    assert diag["text"]["collision_rate_before"] > 0
    assert diag["text"]["collision_rate_after"] < diag["text"]["collision_rate_before"]


def test_too_many_clusters_is_a_user_error(tmp_path):
    with pytest.raises(MscgError, match="pseudo_label_clusters"):
        run(_context(tmp_path, clusters=100))


def test_inputs_by_source_spec(tmp_path):
    # The chain of today passes artifacts by name: section.inputs maps the roles to them.
    ctx = _context(tmp_path)
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    Manifest(stage="prepare", config_hash="p", extra={"num_items": 40}).write(prepared)
    ctx.inputs = {
        "prepare": prepared,
        "text_embed": ctx.inputs["text"],
        "image_embed": ctx.inputs["image"],
    }
    ctx.section.inputs = Namespace(text="text_embed", image="image_embed")
    run(ctx)
    assert read_codes(ctx.out_dir / "image").codes.shape == (39, 4)
    ctx.section.inputs = Namespace(text="text_embed")
    with pytest.raises(MscgError, match="no 'image' input"):
        run(ctx)
