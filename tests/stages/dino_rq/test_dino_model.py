"""RQ-DINO meta-architecture on a tiny ViT: losses, gradients through the quantizer, EMA teacher."""

import copy

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.dino_rq.crops import (
    EvalTransform,
    MultiCropAugmentation,
    collate_multicrop,
)
from mscg_lightning.stages.dino_rq.masking import IBOTMaskSampler
from mscg_lightning.stages.dino_rq.model import (
    RQDino,
    RQDinoConfig,
    build_backbone,
    post_hoc_embeddings,
)

TINY_VIT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "patch_size": 8,
    "image_size": 32,
    "layerscale_value": 1.0,
}
B = 4


def _config(**overrides) -> RQDinoConfig:
    base = dict(
        backbone_config=TINY_VIT,
        n_prototypes=64,
        head_hidden_dim=64,
        head_bottleneck_dim=16,
        rq_codebook_size=4,  # 3 x 4 codes cannot reproduce 16 CLS vectors exactly
        rq_dead_code_threshold=0.0,
        rq_init_samples=0,  # k-means init on the first batch (test_dino_codebook_fit.py: later)
    )
    return RQDinoConfig(**{**base, **overrides})


def _images(n: int = B) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


def _batch(seed: int = 0, n_local: int = 2) -> dict[str, torch.Tensor]:
    aug = MultiCropAugmentation(global_size=32, local_size=16, n_local=n_local)
    gen = torch.Generator().manual_seed(seed)
    samples = [aug(im, gen) for im in _images()]
    return collate_multicrop(samples, lambda n: IBOTMaskSampler(4)(n, gen))


@pytest.fixture
def model() -> RQDino:
    torch.manual_seed(0)
    return RQDino(_config()).train()


def test_losses_are_finite_and_codes_have_three_levels(model):
    assert not dist.is_initialized()  # single process, no process group
    out = model.training_losses(_batch(), teacher_temp=0.04)
    for key in ("loss", "dino_loss", "ibot_loss", "koleo_loss", "commit_loss"):
        assert out[key].ndim == 0 and torch.isfinite(out[key]), key
    assert out["ibot_loss"] > 0 and out["koleo_loss"] != 0 and out["commit_loss"] > 0
    cfg = model.config
    expected = (
        out["dino_loss"]
        + cfg.ibot_weight * out["ibot_loss"]
        + cfg.koleo_weight * out["koleo_loss"]
        + cfg.commit_weight * out["commit_loss"]
    )
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["codes"].shape == (2 * B, 3) and out["codes"].dtype == torch.int64
    model.eval()
    codes = model.encode(_batch()["global_crops"][0])
    assert codes.shape == (B, 3)
    assert int(codes.max()) < cfg.rq_codebook_size


def test_dino_gradient_reaches_the_backbone_only_through_the_quantizer(model):
    model.config.ibot_weight = model.config.koleo_weight = model.config.commit_weight = 0.0
    seen = {}
    model.quantizer.register_forward_hook(
        lambda m, i, o: seen.update(q_in=i[0], q_out=o.quantized, codes=o.codes)
    )
    model.student["dino_head"].register_forward_pre_hook(lambda m, i: seen.update(head_in=i[0]))
    out = model.training_losses(_batch())
    # the student head sees the quantized embeddings of all 2 + 2 views, not the raw CLS tokens
    assert seen["q_in"].shape == (4 * B, 32)
    assert torch.equal(seen["head_in"], seen["q_out"])
    assert (seen["q_out"] - seen["q_in"]).abs().max() > 1e-3
    # the quantized vectors are a function of the codes: equal codes, (nearly) equal vectors
    same_code = (seen["codes"][:, None] == seen["codes"][None]).all(-1)
    close = torch.cdist(seen["q_out"].detach(), seen["q_out"].detach()) < 1e-5
    assert torch.equal(same_code, close)
    assert not bool(same_code.all())
    out["loss"].backward()
    backbone = model.student["backbone"]
    grad = backbone.embeddings.patch_embeddings.projection.weight.grad  # the first layer
    assert grad is not None and grad.abs().sum() > 0
    for name, param in backbone.named_parameters():
        if name != "embeddings.mask_token":  # iBOT is off: no masked patch this step
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.teacher.parameters())


def test_straight_through_gradient_equals_the_gradient_at_the_quantized_point(model):
    # d loss / d CLS must be the head's gradient at the quantized input (identity Jacobian)
    model.config.ibot_weight = model.config.koleo_weight = model.config.commit_weight = 0.0
    seen = {}

    def keep_grad(module, inputs, output):
        if not inputs[0].requires_grad:  # the no-grad statistics pass (clean global crops)
            return
        inputs[0].retain_grad()
        output.quantized.retain_grad()
        seen.update(q_in=inputs[0], q_out=output.quantized)

    model.quantizer.register_forward_hook(keep_grad)
    model.training_losses(_batch())["loss"].backward()
    assert torch.allclose(seen["q_in"].grad, seen["q_out"].grad)
    assert seen["q_in"].grad.abs().sum() > 0


def test_teacher_changes_only_by_ema(model):
    teacher_before = copy.deepcopy(model.teacher.state_dict())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model.training_losses(_batch())
    out["loss"].backward()
    optimizer.step()
    # backward + optimiser step leave the teacher untouched
    for name, value in model.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[name]), name
    assert all(not p.requires_grad for p in model.teacher.parameters())
    student = {n: p.detach().clone() for n, p in model.student.named_parameters()}
    assert any(not torch.equal(student[n], teacher_before[n]) for n in student)
    m = 0.9
    model.update_teacher(m)
    for name, value in model.teacher.named_parameters():
        expected = m * teacher_before[name] + (1 - m) * student[name]
        assert torch.allclose(value, expected, atol=1e-6), name
    # the student itself is not modified by the EMA
    for name, value in model.student.named_parameters():
        assert torch.equal(value, student[name])


def test_teacher_stays_in_eval_mode(model):
    model.train()
    assert model.student.training and not model.teacher.training
    assert not any(m.training for m in model.teacher.modules())


def test_a_few_steps_with_sinkhorn_shared_head_and_unquantized_locals():
    torch.manual_seed(1)
    model = RQDino(
        _config(centering="sinkhorn_knopp", ibot_separate_head=False, quantize_local_crops=False)
    ).train()
    assert "ibot_head" not in model.student
    optimizer = torch.optim.AdamW(model.parameter_groups(), lr=1e-3, weight_decay=0.04)
    for step in range(3):
        out = model.training_losses(_batch(seed=step), teacher_temp=0.04 + 0.01 * step)
        assert torch.isfinite(out["loss"])
        optimizer.zero_grad()
        out["loss"].backward()
        model.cancel_last_layer_gradients()
        assert model.student["dino_head"].weight_v.grad is None
        optimizer.step()
        model.update_teacher(0.99)
    assert int(model.quantizer.ema_steps) == 3


def test_masks_are_drawn_when_the_batch_has_none_and_ibot_can_be_off(model):
    batch = _batch()
    del batch["masks"]
    assert model.training_losses(batch)["ibot_loss"] > 0
    model.config.ibot_weight = 0.0
    assert model.training_losses(batch)["ibot_loss"] == 0
    no_local = {"global_crops": batch["global_crops"]}
    assert torch.isfinite(model.training_losses(no_local)["loss"])


def test_centre_is_not_updated_outside_training(model):
    model.training_losses(_batch())  # initialises the quantizer
    model.eval()
    center = model.dino_loss.center.clone()
    codebooks = model.quantizer.codebooks.clone()
    model.training_losses(_batch(seed=5))
    assert torch.equal(model.dino_loss.center, center)
    assert torch.equal(model.quantizer.codebooks, codebooks)


def test_parameter_groups_cover_the_student_once(model):
    groups = model.parameter_groups()
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.student.parameters()))
    assert [(g["lr_multiplier"], g["wd_multiplier"]) for g in groups] == [(1.0, 1.0), (1.0, 0.0)]
    assert groups[1]["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in groups[0]["params"])


def test_post_hoc_embeddings_match_the_backbone_on_eval_crops():
    torch.manual_seed(2)
    backbone = build_backbone(config=TINY_VIT)
    backbone.train()
    images = _images(5)
    emb = post_hoc_embeddings(backbone, images, image_size=32, batch_size=2)
    assert emb.shape == (5, 32) and emb.dtype == torch.float32
    assert backbone.training  # mode restored
    backbone.eval()
    with torch.no_grad():
        pixels = torch.stack([EvalTransform(32)(im) for im in images])
        ref = backbone(pixel_values=pixels).pooler_output
    assert torch.allclose(emb, ref, atol=1e-5)
    assert torch.allclose(post_hoc_embeddings(backbone, pixels), ref, atol=1e-5)


def test_backbone_loads_from_a_local_directory_and_reports_a_missing_one(tmp_path):
    torch.manual_seed(3)
    backbone = build_backbone(config=TINY_VIT)
    backbone.save_pretrained(tmp_path / "vit")
    loaded = build_backbone(str(tmp_path / "vit"), local_files_only=True)
    for (name, a), (_, b) in zip(
        backbone.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    with pytest.raises(MscgError, match="missing"):
        build_backbone(str(tmp_path / "missing"), local_files_only=True)


def test_default_backbone_is_vit_s14():
    config = RQDinoConfig()
    assert config.n_prototypes == 65536 and config.rq_levels == 3 and config.rq_codebook_size == 256
    assert (config.koleo_weight, config.commit_weight, config.ibot_weight) == (0.1, 0.01, 1.0)
    from mscg_lightning.stages.dino_rq.model import VITS14_CONFIG

    assert (VITS14_CONFIG["hidden_size"], VITS14_CONFIG["patch_size"]) == (384, 14)
    assert (VITS14_CONFIG["num_hidden_layers"], VITS14_CONFIG["num_attention_heads"]) == (12, 6)


def test_refit_runs_residual_kmeans_on_the_recent_global_crop_embeddings():
    torch.manual_seed(4)
    # all_views: every global crop, masked or not (clean_global: test_dino_codebook_fit.py)
    model = RQDino(_config(rq_refit_samples=6, rq_statistics="all_views")).train()
    assert not model.refit_codebooks()  # nothing remembered yet
    outputs = []
    model.student["backbone"].register_forward_hook(lambda m, i, o: outputs.append(o))
    model.training_losses(_batch(seed=0))
    model.training_losses(_batch(seed=1))
    # the first student pass of a step is the (masked) global crops: 2 x B = 8 rows per step
    global_cls = outputs[2].pooler_output.detach()  # the second step's global crops
    assert torch.equal(model._recent_cls, global_cls[-6:])
    assert int(model.quantizer.ema_steps) == 2

    torch.manual_seed(5)
    assert model.refit_codebooks()
    reference = type(model.quantizer)(32, levels=3, codebook_size=4)
    torch.manual_seed(5)
    reference.init_codebooks(global_cls[-6:])
    assert torch.allclose(model.quantizer.codebooks, reference.codebooks)
    assert int(model.quantizer.ema_steps) == 0  # the EMA restarts from the refitted codebooks
    # every level-1 code of the refit is used by the embeddings it was fitted on
    codes = model.quantizer.encode(global_cls[-6:])
    assert len(set(codes[:, 0].tolist())) == 4


def test_nothing_is_remembered_outside_training_or_when_refits_are_off():
    model = RQDino(_config(rq_refit_samples=0)).train()
    model.training_losses(_batch())
    assert model._recent_cls is None
    model = RQDino(_config(rq_refit_samples=16)).train()
    model.training_losses(_batch())
    kept = model._recent_cls.clone()
    model.eval()
    model.training_losses(_batch(seed=3))  # an eval-mode call (e.g. validation) keeps nothing
    assert torch.equal(model._recent_cls, kept)
