"""DINOv2's fine-tuning settings (issue 18, item 7): layer-wise lr decay, patch-embedding lr
multiplier and student drop-path, on by default only for pretrained backbones."""

from pathlib import Path

import pytest
import torch

from mscg_lightning.stages.dino_rq.model import build_backbone
from mscg_lightning.stages.dino_rq.module import RQDinoModule, apply_schedule

TINY_VIT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "patch_size": 8,
    "image_size": 32,
    "layerscale_value": 1.0,
}
SMALL = dict(n_prototypes=64, head_hidden_dim=64, head_bottleneck_dim=16, rq_codebook_size=4)


def expected_multiplier(part: str, name: str, decay: float, patch: float) -> float:
    """The reference, written out for the 2-block tiny ViT (DINOv2 param_groups.py)."""
    if part != "backbone" or name.startswith("layernorm."):
        return 1.0
    if name.startswith("embeddings.patch_embeddings."):
        return decay**3 * patch
    if name.startswith("embeddings."):
        return decay**3
    block = int(name.split(".")[2])
    return decay ** (2 - block)


def multipliers(module: RQDinoModule) -> dict[int, float]:
    optimizer = module.configure_optimizers()
    return {id(p): g["lr_multiplier"] for g in optimizer.param_groups for p in g["params"]}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("backbone")
    build_backbone(config=TINY_VIT).save_pretrained(folder)
    return folder


def test_pretrained_runs_get_dinov2_multipliers_and_drop_path(pretrained: Path) -> None:
    module = RQDinoModule(backbone=str(pretrained), local_files_only=True, **SMALL)
    assert (module.layerwise_decay, module.patch_embed_lr_mult) == (0.9, 0.2)
    got = multipliers(module)
    seen = 0
    for part, net in module.model.student.items():
        for name, param in net.named_parameters():
            if param.requires_grad:
                want = expected_multiplier(part, name, 0.9, 0.2)
                assert got[id(param)] == pytest.approx(want), (part, name)
                seen += 1
    assert seen == len(got)  # every trainable parameter exactly once
    patch = module.model.student["backbone"].embeddings.patch_embeddings.projection.weight
    assert got[id(patch)] == pytest.approx(0.9**3 * 0.2)
    # The schedule's lr and weight decay are scaled per group, norms never decayed.
    optimizer = module.configure_optimizers()
    apply_schedule(optimizer, 2.0, 0.5)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(2.0 * group["lr_multiplier"])
        assert group["weight_decay"] == pytest.approx(0.5 * group["wd_multiplier"])
    # Student drop-path 0.1 in every block; the teacher copy stays in eval mode (no drop).
    student = module.model.student["backbone"]
    assert student.config.drop_path_rate == 0.1
    drops = [layer.drop_path for layer in student.encoder.layer]
    assert all(getattr(d, "drop_prob", None) == 0.1 for d in drops)
    module.train()
    assert not module.model.teacher.training and student.training


def test_switches_override_and_scratch_runs_keep_plain_groups(pretrained: Path) -> None:
    scratch = RQDinoModule(backbone_config=TINY_VIT, **SMALL)
    assert set(multipliers(scratch).values()) == {1.0}
    assert scratch.model.student["backbone"].config.drop_path_rate == 0.0
    tuned = RQDinoModule(
        backbone=str(pretrained),
        local_files_only=True,
        layerwise_decay=0.5,
        patch_embed_lr_mult=1.0,
        drop_path_rate=0.0,
        **SMALL,
    )
    got = multipliers(tuned)
    backbone = tuned.model.student["backbone"]
    assert got[id(backbone.embeddings.patch_embeddings.projection.weight)] == pytest.approx(0.125)
    assert got[id(backbone.encoder.layer[1].mlp.fc1.weight)] == pytest.approx(0.5)
    assert backbone.config.drop_path_rate == 0.0
    with_drop = RQDinoModule(backbone_config=TINY_VIT, drop_path_rate=0.2, **SMALL)
    assert with_drop.model.student["backbone"].config.drop_path_rate == 0.2
