"""Tokenizer ablations of MACRec's Table 3 as switches: w/o L_con, w/o L_align, and both off
(independent RQ-VAEs per modality: the MQL4GRec-style tokenizer)."""

import pytest
import torch

from mscg_lightning.stages.rq_xmodal.model import CrossModalRQVAE

OFF_CON = {"con_weights": [0.0] * 3}
OFF_ALIGN = {"align_weight": 0.0}


def _run(image_seed: int, **kw):
    torch.manual_seed(0)
    model = CrossModalRQVAE(
        {"text": 12, "image": 10}, latent_dim=8, hidden_dims=[16], levels=3, codebook_size=4, **kw
    )
    g = torch.Generator().manual_seed(0)
    x = {"text": torch.randn(32, 12, generator=g)}
    x["image"] = torch.randn(32, 10, generator=torch.Generator().manual_seed(image_seed))
    labels = {"text": torch.arange(32) % 4, "image": torch.arange(32) % 5}
    model.init_codebooks({"text": x["text"], "image": torch.randn(32, 10, generator=g)})
    out = model(x, labels, generator=torch.Generator().manual_seed(1))
    model.zero_grad()
    out.loss.backward()
    grad = torch.cat([p.grad.flatten() for p in model.encoders["text"].parameters()])
    return out, grad


@pytest.mark.parametrize(
    "switches,present",
    [
        ({}, {"con_level2", "align"}),
        (OFF_CON, {"align"}),
        (OFF_ALIGN, {"con_level2"}),
        ({**OFF_CON, **OFF_ALIGN}, set()),
    ],
)
def test_each_switch_removes_its_loss(switches, present):
    out, _ = _run(0, **{"con_weights": [0.0, 0.0, 0.1], **switches})
    cross = {k for k in out.losses if k.startswith("con_") or k == "align"}
    assert cross == present


def test_both_off_makes_the_text_tower_independent_of_the_images():
    # Without L_con and L_align the text encoder's gradient cannot depend on the image inputs.
    _, a = _run(1, **OFF_CON, **OFF_ALIGN)
    _, b = _run(2, **OFF_CON, **OFF_ALIGN)
    assert torch.allclose(a, b)
    # L_align on (on the encoders, the official variant; the paper's trains the codebooks):
    # the images matter, so the check can tell
    _, c = _run(1, con_weights=[0.0, 0.0, 0.0], align_grad="encoder")
    _, d = _run(2, con_weights=[0.0, 0.0, 0.0], align_grad="encoder")
    assert not torch.allclose(c, d)
