"""What RQ-DINO's codebooks are fitted on (issue 18, item 8): clean global crops, and a k-means
init on at least 10 x the codebook size embeddings gathered over batches."""

import lightning as L
import numpy as np
import torch
from PIL import Image

from mscg_lightning.stages.dino_rq.crops import MultiCropAugmentation, collate_multicrop
from mscg_lightning.stages.dino_rq.data import ImageDataModule
from mscg_lightning.stages.dino_rq.model import RQDino
from mscg_lightning.stages.dino_rq.model_config import RQDinoConfig
from mscg_lightning.stages.dino_rq.module import RQDinoModule

TINY_VIT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "patch_size": 8,
    "image_size": 32,
    "layerscale_value": 1.0,
}
SMALL = dict(
    n_prototypes=64,
    head_hidden_dim=64,
    head_bottleneck_dim=16,
    rq_codebook_size=4,
    rq_dead_code_threshold=0.0,
)
B, N_LOCAL, G = 4, 2, 2


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """B images, 2 global crops of 32 px (4 x 4 patches), N_LOCAL local crops; crop 0 of the
    first two images is iBOT-masked, every other global crop is clean."""
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(B)]
    aug = MultiCropAugmentation(global_size=32, local_size=16, n_local=N_LOCAL)
    gen = torch.Generator().manual_seed(seed)
    out = collate_multicrop([aug(im, gen) for im in images])
    masks = torch.zeros(G, B, 16, dtype=torch.bool)
    masks[0, :2, :5] = True
    out["masks"] = masks
    return out


class Spy:
    """Records every quantizer call: (quantizer in training mode, grad enabled, rows)."""

    def __init__(self, model: RQDino) -> None:
        self.calls: list[tuple[bool, bool, int]] = []
        self.inputs: list[torch.Tensor] = []
        model.quantizer.register_forward_hook(self.hook)

    def hook(self, module, inputs, output) -> None:
        self.calls.append((module.training, torch.is_grad_enabled(), inputs[0].shape[0]))
        self.inputs.append(inputs[0].detach().clone())


def test_codebook_statistics_come_from_the_clean_global_crops_only() -> None:
    torch.manual_seed(0)
    model = RQDino(
        RQDinoConfig(backbone_config=TINY_VIT, rq_init_samples=0, rq_refit_samples=64, **SMALL)
    ).train()
    spy = Spy(model)
    cls_out = []
    model.student["backbone"].register_forward_hook(lambda m, i, o: cls_out.append(o))
    model.training_losses(batch())
    clean = ~batch()["masks"].flatten(0, 1).any(1)  # [G*B]: 6 of 8 global crops
    global_cls = cls_out[0].pooler_output.detach()
    # 1) the EMA step (with the first-batch k-means init) sees the clean global crops only;
    # 2) every view is quantized with the updated codebooks, without a second update.
    assert spy.calls == [(True, False, int(clean.sum())), (False, True, (G + N_LOCAL) * B)]
    assert torch.equal(spy.inputs[0], global_cls[clean])
    assert torch.equal(model._recent_cls, global_cls[clean])
    assert int(model.quantizer.ema_steps) == 1


def test_all_views_switch_keeps_the_previous_statistics() -> None:
    torch.manual_seed(0)
    model = RQDino(
        RQDinoConfig(
            backbone_config=TINY_VIT, rq_init_samples=0, rq_statistics="all_views", **SMALL
        )
    ).train()
    spy = Spy(model)
    model.training_losses(batch())
    assert spy.calls == [(True, True, (G + N_LOCAL) * B)]  # one call: update on every view


def test_kmeans_init_waits_for_ten_times_the_codebook_size() -> None:
    torch.manual_seed(0)
    model = RQDino(RQDinoConfig(backbone_config=TINY_VIT, **SMALL)).train()
    assert model.init_samples == 40  # 10 x K
    inits: list[int] = []
    original = model.quantizer.init_codebooks

    def counting_init(x: torch.Tensor) -> None:
        inits.append(x.shape[0])
        original(x)

    model.quantizer.init_codebooks = counting_init
    gathered = 0
    for step in range(8):
        out = model.training_losses(batch(seed=step))
        gathered += 6  # clean global crops per step
        if gathered < 40:
            assert not bool(model.quantizer.initialized), step
            assert out["codes"] is None and float(out["commit_loss"]) == 0.0
        else:
            assert out["codes"].shape == (G * B, 3)
    assert inits == [42]  # once, at the 7th step, on every clean crop gathered so far
    assert int(model.quantizer.ema_steps) == 2  # EMA from the init step on


def test_a_run_shorter_than_the_init_still_gets_codebooks(tmp_path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(8):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(paths[-1])
    data = ImageDataModule(
        image_paths=paths, batch_size=4, global_size=32, local_size=16, n_local=2
    )
    module = RQDinoModule(backbone_config=TINY_VIT, rq_init_samples=1000, warmup_epochs=0, **SMALL)
    L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(module, datamodule=data)
    assert bool(module.model.quantizer.initialized)  # from the rows gathered in 2 steps
    assert not RQDino(RQDinoConfig(backbone_config=TINY_VIT, **SMALL)).finish_codebooks()


def test_plain_dino_never_touches_the_quantizer() -> None:
    torch.manual_seed(0)
    model = RQDino(RQDinoConfig(backbone_config=TINY_VIT, quantize=False, **SMALL)).train()
    spy = Spy(model)
    for step in range(2):
        out = model.training_losses(batch(seed=step))
        assert out["codes"] is None and float(out["commit_loss"]) == 0.0
    assert spy.calls == [] and not bool(model.quantizer.initialized)
    assert model._recent_cls is None and model.finish_codebooks()
