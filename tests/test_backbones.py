"""timm backbones (backbones.py): `TimmViT` behind the Dinov2Model interface, DINOv2's lr rules on
timm parameter names, the timm image encoder, save/reload, and RQ-DINO training on it.

timm needs torchvision, whose PyPI build does not import beside the CPU torch of this project
(README 'timm backbones'), so these tests run the real code paths against a small stand-in
`timm` module with timm's VisionTransformer attribute layout (patch_embed, cls_token, pos_embed,
_pos_embed, patch_drop, norm_pre, blocks, norm, num_prefix_tokens, pretrained_cfg); the last
test uses real timm when it is installed."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mscg_lightning.backbones import TimmImageEncoder, TimmViT, create_timm, eval_transform
from mscg_lightning.errors import MscgError
from mscg_lightning.stages.dino_rq.backbone import backbone_lr_multiplier, build_backbone


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int, dynamic: bool) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)
        self.patch_size = (patch, patch)
        self.dynamic = dynamic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).permute(0, 2, 3, 1)  # [B, h, w, D]
        return x if self.dynamic else x.flatten(1, 2)


class _Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.ls1 = nn.Module()
        self.ls1.gamma = nn.Parameter(torch.ones(dim))
        self.mlp = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.ls1.gamma * self.attn(h, h, h)[0]
        return x + self.mlp(x)


class FakeViT(nn.Module):
    """timm's VisionTransformer layout in miniature (pos_embed of patches; CLS + registers)."""

    def __init__(self, img_size=32, patch_size=8, embed_dim=32, depth=2, reg_tokens=0,
                 dynamic_img_size=False, drop_path_rate=0.0, num_classes=0) -> None:  # fmt: skip
        super().__init__()
        self.grid = img_size // patch_size
        self.patch_embed = _PatchEmbed(patch_size, embed_dim, dynamic_img_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.reg_token = nn.Parameter(torch.randn(1, reg_tokens, embed_dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid**2, embed_dim) * 0.02)
        self.num_prefix_tokens = 1 + reg_tokens
        self.embed_dim = self.num_features = embed_dim
        self.patch_drop, self.norm_pre = nn.Identity(), nn.Identity()
        self.blocks = nn.Sequential(*[_Block(embed_dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.pretrained_cfg = {"architecture": "fake_vit", "input_size": (3, img_size, img_size),
                               "crop_pct": 1.0, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}  # fmt: skip

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        pos = self.pos_embed
        if x.ndim == 4:  # dynamic image size: interpolate the position grid
            b, h, w, d = x.shape
            grid = pos.reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
            pos = F.interpolate(grid, size=(h, w), mode="bicubic").permute(0, 2, 3, 1)
            pos, x = pos.reshape(1, h * w, d), x.reshape(b, h * w, d)
        x = x + pos
        prefix = [self.cls_token.expand(len(x), -1, -1), self.reg_token.expand(len(x), -1, -1)]
        return torch.cat([*prefix, x], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._pos_embed(self.patch_embed(x))
        return self.norm(self.blocks(self.norm_pre(self.patch_drop(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[:, 0]  # num_classes=0: the pooled (CLS) features


def _create_model(name, pretrained=True, num_classes=None, pretrained_cfg_overlay=None, **kw):
    from safetensors.torch import load_file

    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:") :])
        config = json.loads((folder / "config.json").read_text())
        model = FakeViT(**{**config.get("model_args", {}), **kw})
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        return model
    if name.split(".")[0] != "fake_vit":
        raise RuntimeError(f"Unknown model ({name})")
    model = FakeViT(**kw)
    if pretrained_cfg_overlay:
        model.load_state_dict(load_file(pretrained_cfg_overlay["file"]))
    return model


@pytest.fixture
def fake_timm(monkeypatch):
    module = types.ModuleType("timm")
    module.create_model = _create_model
    monkeypatch.setitem(sys.modules, "timm", module)
    return module


def test_timm_vit_matches_the_timm_forward_and_masks_by_the_mask_token(fake_timm) -> None:
    torch.manual_seed(0)
    vit = FakeViT(reg_tokens=2, dynamic_img_size=True)
    model = TimmViT(vit, "timm:fake_vit").eval()
    x = torch.randn(3, 3, 32, 32)
    out = model(pixel_values=x)
    assert out.last_hidden_state.shape == (3, 1 + 16, 32)  # registers left out
    torch.testing.assert_close(out.pooler_output, vit(x))
    torch.testing.assert_close(out.last_hidden_state[:, 1:], vit.forward_features(x)[:, 3:])
    # reference: the same ViT whose patch tokens were replaced by hand before the positions
    mask = torch.rand(3, 16) < 0.5
    model.embeddings.mask_token.data.normal_()
    patches = vit.patch_embed(x).flatten(1, 2)
    patches[mask] = model.embeddings.mask_token.data[0]
    ref = vit.norm(vit.blocks(vit._pos_embed(patches.reshape(3, 4, 4, 32))))
    got = model(pixel_values=x, bool_masked_pos=mask)
    torch.testing.assert_close(got.pooler_output, ref[:, 0])
    # local crops of another size go through the interpolated position grid
    assert model(pixel_values=torch.randn(2, 3, 16, 16)).last_hidden_state.shape == (2, 5, 32)


def test_dinov2_lr_rules_on_timm_names(fake_timm) -> None:
    backbone = build_backbone("timm:fake_vit", {"depth": 3, "pretrained": False})
    assert isinstance(backbone, TimmViT) and backbone.config.num_hidden_layers == 3
    mults = {n: backbone_lr_multiplier(n, 3, 0.5, 0.2) for n, _ in backbone.named_parameters()}
    assert mults["vit.patch_embed.proj.weight"] == pytest.approx(0.5**4 * 0.2)
    for name in ("vit.cls_token", "vit.pos_embed", "embeddings.mask_token"):
        assert mults[name] == pytest.approx(0.5**4)
    for i in range(3):
        assert mults[f"vit.blocks.{i}.mlp.weight"] == pytest.approx(0.5 ** (3 - i))
    assert mults["vit.norm.weight"] == 1.0


def test_rq_dino_trains_on_a_timm_backbone_and_saves_a_reloadable_one(fake_timm, tmp_path) -> None:
    from mscg_lightning.stages.dino_rq.module import RQDinoModule

    module = RQDinoModule(
        backbone="timm:fake_vit",
        backbone_config={"pretrained": False},
        n_prototypes=32, head_hidden_dim=32, head_bottleneck_dim=16, rq_levels=2,
        rq_codebook_size=4, rq_init_samples=0, freeze_last_layer_epochs=0, warmup_epochs=0,
    )  # fmt: skip
    model = module.model
    groups = model.parameter_groups(layerwise_decay=0.9, patch_embed_lr_mult=0.2)
    by_param = {
        id(p): (g["lr_multiplier"], g["wd_multiplier"]) for g in groups for p in g["params"]
    }
    named = dict(model.student["backbone"].named_parameters())
    assert by_param[id(named["vit.pos_embed"])] == (pytest.approx(0.9**3), 0.0)
    assert by_param[id(named["vit.patch_embed.proj.weight"])] == (pytest.approx(0.9**3 * 0.2), 1.0)
    batch = {
        "global_crops": torch.randn(2, 4, 3, 32, 32),
        "local_crops": torch.randn(2, 4, 3, 16, 16),
    }
    model.train().training_losses(batch, teacher_temp=0.04)["loss"].backward()
    assert named["embeddings.mask_token"].grad is not None  # iBOT masks reach the mask token
    assert named["vit.blocks.0.mlp.weight"].grad.abs().sum() > 0
    backbone = model.student["backbone"]
    backbone.save_pretrained(tmp_path / "saved")
    again = build_backbone(f"timm:local-dir:{tmp_path / 'saved'}")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again.eval()(x).pooler_output, backbone.eval()(x).pooler_output)


def test_timm_image_encoder_and_weights_file(fake_timm, tmp_path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(1)
    reference = FakeViT()
    save_file(dict(reference.state_dict()), str(tmp_path / "w.safetensors"))
    encoder = TimmImageEncoder(f"timm:fake_vit@{tmp_path / 'w.safetensors'}", normalize=True)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]
    emb = encoder.encode(images)
    transform = eval_transform(reference.pretrained_cfg)
    want = F.normalize(reference.eval()(torch.stack([transform(im) for im in images])), dim=-1)
    torch.testing.assert_close(emb, want)
    assert transform(images[0]).shape == (3, 32, 32)


def test_timm_errors_are_one_sentence(fake_timm, tmp_path, monkeypatch) -> None:
    with pytest.raises(MscgError, match="could not build the timm model 'timm:nope'"):
        create_timm("timm:nope")
    with pytest.raises(MscgError, match="timm weights file .* does not exist"):
        create_timm(f"timm:fake_vit@{tmp_path / 'missing.safetensors'}")
    monkeypatch.setitem(sys.modules, "timm", None)  # not installed
    with pytest.raises(MscgError, match=r"need the `timm` package"):
        create_timm("timm:fake_vit")


def test_real_timm_tiny_random_vit_offline() -> None:
    timm = pytest.importorskip("timm")
    vit = create_timm(
        "timm:vit_small_patch14_dinov2",
        {"pretrained": False, "img_size": 28, "depth": 2, "embed_dim": 32, "num_heads": 2,
         "dynamic_img_size": True},
    )  # fmt: skip
    model = TimmViT(vit, "timm:vit_small_patch14_dinov2")
    out = model(pixel_values=torch.randn(2, 3, 28, 28), bool_masked_pos=torch.zeros(2, 4).bool())
    assert out.pooler_output.shape == (2, 32) and timm.__version__
