"""The dino_rq stage end to end (CLI, tiny ViT, fixture images), its Lightning glue and data.

Also: the NMI / purity functions of benchmarks/dino_rq_semantics.py against hand-computed values,
and the GPU speed script run on the CPU in its tiny configuration.
"""

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import Dinov2Model

from mscg_lightning.artifacts import read_codes, read_manifest
from mscg_lightning.cli import main
from mscg_lightning.stages.dino_rq.crops import EvalTransform
from mscg_lightning.stages.dino_rq.data import ImageDataModule
from mscg_lightning.stages.dino_rq.module import RQDinoModule, usage_and_perplexity
from mscg_lightning.stages.rq.module import RQModule

REPO = Path(__file__).resolve().parents[3]
CONFIG = str(REPO / "configs" / "tiny-images.yaml")
FIXTURES = REPO / "tests" / "fixtures"
TINY_VIT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "patch_size": 8,
    "image_size": 32,
    "layerscale_value": 1.0,
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load_script(name: str):
    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _image_files(root: Path, n: int = 12) -> list[str]:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _tiny_module(**overrides) -> RQDinoModule:
    args = dict(
        backbone_config=TINY_VIT,
        n_prototypes=64,
        head_hidden_dim=64,
        head_bottleneck_dim=16,
        rq_levels=3,
        rq_codebook_size=4,
        rq_dead_code_threshold=0.0,
        rq_init_samples=0,  # k-means init on the first batch (test_dino_codebook_fit.py: later)
        freeze_last_layer_epochs=0,
        warmup_epochs=0,
    )
    return RQDinoModule(**{**args, **overrides})


def _trainer(steps: int, callbacks=()) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )


def _data(paths: list[str], batch_size: int = 4) -> ImageDataModule:
    return ImageDataModule(
        image_paths=paths, batch_size=batch_size, global_size=32, local_size=16, n_local=2
    )


# -- the stage through the CLI ---------------------------------------------------------------
def test_fit_rq_dino_with_a_corrupt_image(tmp_path):
    """Trains a few steps, lists a corrupt image as missing, exports codes that validate."""
    data_root = tmp_path / "data"
    shutil.copytree(FIXTURES / "tiny-amazon2023", data_root / "tiny-amazon2023")
    corrupt = data_root / "tiny-amazon2023" / "images" / "B000000010.jpg"
    corrupt.write_bytes(b"this is not a JPEG file at all")
    run_dir = tmp_path / "run"
    args = ["fit", "--config", CONFIG, "--run_dir", str(run_dir), "--data_root", str(data_root)]
    assert main(args) == 0

    num_items = int(read_manifest(run_dir / "prepared").extra["num_items"])
    out = run_dir / "dino_rq"
    codes = read_codes(out, num_items=num_items)  # ids in range, codes in range, rows unique
    manifest = read_manifest(out, stage="dino_rq")
    assert manifest.extra["modality"] == "image"
    assert (manifest.extra["levels"], manifest.extra["codebook_size"]) == (3, 4)
    assert codes.codes.shape[1] == 4  # L + collision level

    items = pq.read_table(run_dir / "prepared" / "items").to_pydict()
    corrupt_idx = items["item_idx"][items["item_id"].index("B000000010")]
    missing = pq.read_table(out / "missing.parquet").to_pydict()
    reasons = dict(zip(missing["item_idx"], missing["reason"]))
    assert reasons[corrupt_idx].startswith("unreadable image")
    assert "no image" in reasons.values()  # the fixture's item with an empty image file
    # Every catalogue item is either coded or listed missing, never both.
    coded = set(codes.item_idx.tolist())
    assert coded.isdisjoint(reasons) and len(coded) + len(reasons) == num_items
    diagnostics = json.loads((out / "diagnostics.json").read_text())
    assert diagnostics["missing"] == len(reasons) and diagnostics["mode"] == "rq_dino"

    # The epoch ran its 3 steps despite the corrupt file, each with a finite loss.
    events = EventAccumulator(str(run_dir / "tensorboard" / "dino_rq"))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss_step")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert len(events.Scalars("codes/usage_level1")) == 1

    # The exported codes are the saved backbone + codebooks applied to the images.
    backbone = Dinov2Model.from_pretrained(out / "backbone").eval()
    quantizer = RQModule.from_codebooks(out / "codebooks.safetensors")
    rows = [items["item_idx"].index(i) for i in codes.item_idx.tolist()]
    pixels = torch.stack([EvalTransform(32)(Image.open(items["image_path"][r])) for r in rows])
    with torch.no_grad():
        again = quantizer.encode(backbone(pixel_values=pixels).pooler_output)
    assert torch.equal(again, codes.codes[:, :3])


def test_post_hoc_mode_writes_a_valid_artifact(tmp_path):
    run_dir = tmp_path / "run"
    args = ["fit", "--config", CONFIG, "--run_dir", str(run_dir), "--data_root", str(FIXTURES)]
    assert main([*args, "--dino_rq.mode", "post_hoc"]) == 0
    num_items = int(read_manifest(run_dir / "prepared").extra["num_items"])
    codes = read_codes(run_dir / "dino_rq", num_items=num_items)
    manifest = read_manifest(run_dir / "dino_rq")
    assert manifest.extra["mode"] == "post_hoc" and manifest.extra["modality"] == "image"
    assert len(codes.item_idx) == num_items - 1  # one fixture item has an empty image file
    assert not (run_dir / "dino_rq" / "backbone").exists()  # the backbone was not trained


def test_bad_mode_is_a_config_error(tmp_path, capsys):
    args = ["fit", "--config", CONFIG, "--run_dir", str(tmp_path), "--dino_rq.mode", "other"]
    assert main(args) == 2


# -- Lightning glue ---------------------------------------------------------------------------
class _Probe(L.Callback):
    """Checks, around every optimiser step, what the glue promises."""

    def __init__(self) -> None:
        self.backbone_grad_norms: list[float] = []
        self.teacher_ok: list[bool] = []
        self.prototype_grads: list[bool] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.teacher_before = [p.detach().clone() for p in module.model.teacher.parameters()]
        self.momentum = module.schedule(trainer.global_step)["teacher_momentum"]

    def on_before_optimizer_step(self, trainer, module, optimizer):
        grads = [p.grad for p in module.model.student["backbone"].parameters()]
        self.backbone_grad_norms.append(float(sum(g.norm() for g in grads if g is not None)))
        self.prototype_grads.append(module.model.student["dino_head"].weight_v.grad is not None)
        assert all(p.grad is None for p in module.model.teacher.parameters())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        m = self.momentum
        expected = [
            m * t + (1 - m) * s
            for t, s in zip(self.teacher_before, module.model.student.parameters())
        ]
        after = list(module.model.teacher.parameters())
        self.teacher_ok.append(
            all(torch.allclose(a, e, atol=1e-6) for a, e in zip(after, expected))
        )


def test_training_steps_update_student_by_gradient_and_teacher_by_ema(tmp_path):
    paths = _image_files(tmp_path / "img")
    module, probe = _tiny_module(), _Probe()
    trainer = _trainer(3, [probe])
    trainer.fit(module, datamodule=_data(paths))
    assert trainer.global_step == 3
    assert all(n > 0 and math.isfinite(n) for n in probe.backbone_grad_norms)
    assert probe.teacher_ok == [True, True, True]
    assert all(probe.prototype_grads)  # freeze_last_layer_epochs = 0
    logged = trainer.callback_metrics
    for name in ("loss", "dino_loss", "ibot_loss", "koleo_loss", "commit_loss"):
        assert math.isfinite(float(logged[f"train/{name}_epoch"]))
    assert 0 < float(logged["codes/usage_level1"]) <= 100
    assert 1 <= float(logged["codes/perplexity_level1"]) <= 4


def test_prototypes_frozen_and_lr_schedule(tmp_path):
    paths = _image_files(tmp_path / "img")
    module, probe = _tiny_module(freeze_last_layer_epochs=10, warmup_epochs=2), _Probe()
    before = module.model.student["dino_head"].weight_v.detach().clone()
    trainer = _trainer(2, [probe])
    trainer.fit(module, datamodule=_data(paths))
    assert probe.prototype_grads == [False, False]
    assert torch.equal(module.model.student["dino_head"].weight_v, before)
    # 12 images / batch 4 = 3 steps per epoch, warm-up 6 steps towards base_lr*sqrt(4/1024).
    peak = 0.004 * math.sqrt(4 / 1024)
    assert module.schedule(0)["lr"] == 0.0
    assert module.schedule(3)["lr"] == pytest.approx(peak * 3 / 6)
    assert module.schedule(0)["teacher_momentum"] == pytest.approx(0.992)


def test_without_ibot_every_trainable_parameter_gets_a_gradient(tmp_path):
    """What DDP with find_unused_parameters=False needs."""
    unused: list[list[str]] = []

    class Check(L.Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            params = module.model.student.named_parameters()
            unused.append([n for n, p in params if p.requires_grad and p.grad is None])

    module = _tiny_module(ibot_weight=0.0)
    assert "ibot_head" not in module.model.student
    _trainer(1, [Check()]).fit(module, datamodule=_data(_image_files(tmp_path / "img")))
    assert unused == [[]]


def test_codebooks_are_refitted_once_at_the_configured_steps(tmp_path, monkeypatch):
    # 12 images / batch 4 = 3 steps per epoch: epochs 1.0 and 1.34 are steps 3 and 4
    module = _tiny_module(
        rq_refit_epochs=[1.0, 1.34, 0.0], rq_refit_samples=32, rq_statistics="all_views"
    )
    calls: list[tuple[int, int]] = []
    refit = module.model.refit_codebooks

    def counting_refit() -> bool:
        calls.append((module.trainer.global_step, module.model._recent_cls.shape[0]))
        return refit()

    monkeypatch.setattr(module.model, "refit_codebooks", counting_refit)
    _trainer(6).fit(module, datamodule=_data(_image_files(tmp_path / "img")))
    # step 0 is left out (the first batch already initialises by k-means); before step 3 the
    # model has kept 3 steps x 2 global crops x 4 images
    assert calls == [(3, 24), (4, 32)]
    assert module.model.config.rq_refit_samples == 32
    assert _tiny_module().model.config.rq_refit_samples == 0  # no refits: nothing is kept


def test_usage_and_perplexity():
    stats = usage_and_perplexity(torch.tensor([2.0, 2.0, 0.0, 0.0]))
    assert stats == {"usage": 50.0, "perplexity": pytest.approx(2.0)}


# -- data ---------------------------------------------------------------------------------------
def test_image_that_breaks_after_setup_is_dropped_from_its_batch(tmp_path):
    paths = _image_files(tmp_path / "img", n=4)
    data = _data(paths, batch_size=4)
    data.setup()
    Path(paths[1]).write_bytes(b"garbage")  # readable at setup, broken now
    batch = next(iter(data.train_dataloader()))
    assert batch["global_crops"].shape[:3] == (2, 3, 3)  # [G, B - 1, 3]
    assert batch["local_crops"].shape[:2] == (2, 3)
    export = list(data.export_dataloader())[0]
    assert export["positions"].tolist() == [0, 2, 3]
    assert export["failed"][0][0] == 1 and export["failed"][0][1].startswith("unreadable")


def test_image_data_module_needs_one_source(tmp_path):
    from mscg_lightning.errors import MscgError

    with pytest.raises(MscgError, match="exactly one"):
        ImageDataModule()


# -- benchmark helpers ------------------------------------------------------------------------
def test_nmi_and_purity_against_a_hand_example():
    bench = _load_script("dino_rq_semantics")
    labels = np.array([0, 0, 0, 1, 1, 1])
    clusters = np.array([5, 5, 7, 7, 9, 9])
    # Clusters {0,0}, {0,1}, {1,1}: I(Y;C) = ln 2 - (1/3) ln 2, H(Y) = ln 2, H(C) = ln 3.
    expected = (2 / 3) * math.log(2) / ((math.log(2) + math.log(3)) / 2)
    assert bench.nmi(labels, clusters) == pytest.approx(expected)
    assert bench.purity(labels, clusters) == pytest.approx(5 / 6)
    assert bench.nmi(labels, labels + 3) == pytest.approx(1.0)
    independent = bench.nmi(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]))
    assert independent == pytest.approx(0.0, abs=1e-12)
    codes = np.array([[1, 2], [1, 3], [1, 2], [0, 0]])
    assert bench.prefix_ids(codes, 1).tolist() == [1, 1, 1, 0]
    assert len(set(bench.prefix_ids(codes, 2).tolist())) == 3


def test_bootstrap_interval_of_an_nmi_difference():
    bench = _load_script("dino_rq_semantics")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    noise = rng.integers(0, 4, 400)
    assert bench.bootstrap_nmi_difference(labels, noise, noise, n=20) == (0.0, 0.0)
    # the labels themselves against random codes: NMI 1 vs about 0, on every resample
    low, high = bench.bootstrap_nmi_difference(labels, labels, noise, n=50)
    assert 0.9 < low <= high <= 1.0
    # half the rows copy the label: the difference to noise is clearly positive but below 1
    half = np.where(np.arange(400) % 2 == 0, labels, noise)
    low, high = bench.bootstrap_nmi_difference(labels, half, noise, n=50)
    assert 0.05 < low < high < 0.9


def test_gpu_speed_script_runs_tiny_on_cpu(tmp_path):
    bench = _load_script("dino_rq_gpu")
    out = tmp_path / "gpu.json"
    bench.main(["--device", "cpu", "--batch", "2", "--steps", "1", "--tiny", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["images_per_s"] > 0 and result["device"] == "cpu"
    assert math.isfinite(result["final_loss"])
