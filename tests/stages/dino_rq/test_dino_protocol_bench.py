"""benchmarks/dino_rq_semantics.py --protocol finetune --quick (paper Table 3c in miniature) on a
synthetic labelled image folder: the result layout and that the from-scratch rows are kept."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[3]
VARIANTS = ("post_hoc_pretrained", "rq_dino_finetune", "dino_finetune_post_hoc")


def _load(name: str):
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", REPO / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _cifar_like(root: Path, n: int = 160) -> Path:
    """labels.csv + n small JPEGs whose colour depends on the label (2 classes)."""
    rng = np.random.default_rng(0)
    rows = ["file,label,name"]
    for i in range(n):
        label = i % 2
        pixels = rng.integers(0, 128, (32, 32, 3), dtype=np.uint8) + 127 * label
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(root / "img" / f"{i}.jpg")
        rows.append(f"img/{i}.jpg,{label},c{label}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_quick_paper_protocol_writes_variants_and_keeps_the_scratch_rows(tmp_path, monkeypatch):
    bench = _load("dino_rq_semantics")
    data = _cifar_like(tmp_path / "cifar")
    results = tmp_path / "results"
    results.mkdir()
    (results / "dino_rq_semantics_quick.json").write_text(json.dumps({"scores": {"rq_dino": 1}}))
    monkeypatch.setattr(sys, "argv", ["dino_rq_semantics.py"])
    payload = bench.main(
        [
            "--protocol", "finetune", "--quick", "--data", str(data), "--results", str(results),
            "--kmeans_seeds", "2", "--train_seeds", "1",
        ]
    )  # fmt: skip
    saved = json.loads((results / "dino_rq_semantics_quick.json").read_text())
    assert saved["scores"] == {"rq_dino": 1}  # the from-scratch rows are kept
    assert set(saved["variants"]) == set(VARIANTS) == set(payload["variants"])
    for name in VARIANTS:
        test = saved["variants"][name]["test"]
        for metric in ("nmi_l1", "nmi_full", "purity_l1", "purity_full", "knn20_accuracy"):
            cell = test[metric]
            assert 0 <= cell["ci_low"] <= cell["ci_high"] <= 1, (name, metric)
            assert cell["ci_low"] - 0.05 <= cell["mean"] <= cell["ci_high"] + 0.05
    runs = {name: len(saved["variants"][name]["runs"]) for name in VARIANTS}
    assert runs == {"post_hoc_pretrained": 2, "rq_dino_finetune": 1, "dino_finetune_post_hoc": 2}
    assert saved["paper_protocol"]["finetune_hparams"]["layerwise_decay"] is None  # resolved: 0.9
    assert "machine" in saved["paper_protocol"] and "command" in saved["paper_protocol"]


def test_summarise_pools_runs_and_matches_a_direct_score():
    bench = _load("dino_rq_semantics")
    proto = _load("dino_rq_protocol")
    labels = np.array([0, 0, 1, 1] * 10)
    perfect = {"codes": np.stack([labels, labels], 1), "knn_correct": np.ones(40, bool)}
    noise = {"codes": np.zeros((40, 2), int), "knn_correct": np.zeros(40, bool)}
    out = proto.summarise(bench, labels, [perfect])
    assert out["nmi_l1"]["mean"] == pytest.approx(1.0) and out["knn20_accuracy"]["mean"] == 1.0
    both = proto.summarise(bench, labels, [perfect, noise])
    assert both["purity_l1"]["mean"] == pytest.approx(0.75)
    assert both["knn20_accuracy"]["ci_low"] == 0.0 and both["knn20_accuracy"]["ci_high"] == 1.0


def test_summarise_interval_covers_the_estimate_of_a_duplicate_biased_metric():
    # NMI of 200 independent codes over 10 labels is inflated on with-replacement resamples
    # (duplicates look like agreement); the plain percentile interval then lies above the
    # estimate; the bias-shifted interval must not.
    bench = _load("dino_rq_semantics")
    proto = _load("dino_rq_protocol")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 400)
    codes = rng.integers(0, 200, (400, 2))
    run = {"codes": codes, "knn_correct": rng.random(400) < 0.5}
    cell = proto.summarise(bench, labels, [run])["nmi_full"]
    assert cell["ci_low"] <= cell["mean"] <= cell["ci_high"]
    resampled = [
        bench.nmi(labels[idx], bench.prefix_ids(codes[idx], 2))
        for idx in (rng.integers(0, 400, 400) for _ in range(20))
    ]
    assert np.percentile(resampled, 2.5) > cell["mean"]  # the bias the shift removes
