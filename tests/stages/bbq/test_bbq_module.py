"""BBQModule: CLUB's q_θ moves only in its own step, the tokenizer in the main step."""

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from mscg_lightning.data.datamodule import collate_windows
from mscg_lightning.errors import MscgError
from mscg_lightning.stages.bbq.module import BBQModule


def _windows(n: int = 24):
    g = torch.Generator().manual_seed(0)
    rows = []
    for u in range(n):
        seq = torch.randint(0, 20, (6,), generator=g).numpy()
        rows.append({"user_idx": u, "history": seq[:-1], "targets": seq[1:]})
    return DataLoader(rows, batch_size=8, collate_fn=lambda b: collate_windows(b, 5))


def _fit(club_steps: int) -> tuple[BBQModule, BBQModule]:
    torch.manual_seed(0)
    module = BBQModule(
        num_items=20,
        content_dims={"text": 6},
        latent_dim=4,
        hidden_dims=[8],
        levels=2,
        codebook_size=3,
        seq_inner=8,
        club_steps=club_steps,
    )
    module.model.set_features("text", torch.arange(20), torch.randn(20, 6))
    before = copy.deepcopy(module)
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=_windows())
    return before, module


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_q_theta_is_not_moved_by_the_tokenizer_loss():
    before, after = _fit(club_steps=0)
    assert _same(before.model.club, after.model.club)
    assert not _same(before.model.behaviour, after.model.behaviour)
    assert len(after.mim_history) == 1


def test_q_theta_is_fitted_in_its_own_step():
    before, after = _fit(club_steps=2)
    assert not _same(before.model.club, after.model.club)


def test_missing_wiring_is_a_user_error():
    with pytest.raises(MscgError, match="num_items"):
        BBQModule(content_dims={"text": 3})
