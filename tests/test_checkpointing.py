"""BestAndLastCheckpoint: last.ckpt follows every epoch, best.ckpt the best one (Lightning's own
ModelCheckpoint with save_top_k=1 leaves last.ckpt at the best epoch)."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from mscg_lightning.training import BestAndLastCheckpoint


class PeaksFirst(L.LightningModule):
    """Validation metric 1.0 after the first epoch, lower after every later one."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, _):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, _):
        self.log("val/m", 1.0 / (1 + self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)


@pytest.mark.parametrize(
    ("callback", "last_epoch"), [(BestAndLastCheckpoint, 2), (ModelCheckpoint, 0)]
)
def test_last_checkpoint_follows_every_epoch(tmp_path, callback, last_epoch):
    ckpt = callback(dirpath=tmp_path, filename="best", monitor="val/m", mode="max",
                    save_last=True, save_top_k=1)  # fmt: skip
    trainer = L.Trainer(max_epochs=3, callbacks=[ckpt], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(PeaksFirst(), _loader(), _loader())
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["epoch"] == last_epoch
    assert torch.load(tmp_path / "best.ckpt", weights_only=False)["epoch"] == 0
    assert ckpt.best_model_path == str(tmp_path / "best.ckpt")


def _fit(callback: ModelCheckpoint, max_epochs: int, ckpt_path=None) -> None:
    trainer = L.Trainer(max_epochs=max_epochs, callbacks=[callback], logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(PeaksFirst(), _loader(), _loader(), ckpt_path=ckpt_path)


def _args(tmp_path) -> dict:
    return dict(dirpath=tmp_path, filename="best", monitor="val/m", mode="max", save_last=True,
                save_top_k=1)  # fmt: skip


def test_resuming_a_plain_model_checkpoint_keeps_its_files_and_best_score(tmp_path):
    """A run checkpointed by Lightning's ModelCheckpoint (runs from before this class) resumes
    with BestAndLastCheckpoint: the best score is restored (the worse later epochs do not
    replace best.ckpt) and last.ckpt is rewritten in place, not beside it as last-v1.ckpt."""
    _fit(ModelCheckpoint(**_args(tmp_path)), max_epochs=1)
    resumed = BestAndLastCheckpoint(**_args(tmp_path))
    _fit(resumed, max_epochs=3, ckpt_path=tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["epoch"] == 2
    assert torch.load(tmp_path / "best.ckpt", weights_only=False)["epoch"] == 0
    assert resumed.best_model_score == pytest.approx(1.0)


def test_stale_files_without_state_are_overwritten(tmp_path):
    """Files the callback knows nothing of (another run in the same directory) are replaced."""
    _fit(BestAndLastCheckpoint(**_args(tmp_path)), max_epochs=1)
    _fit(BestAndLastCheckpoint(**_args(tmp_path)), max_epochs=2)  # a fresh run, no resume
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["epoch"] == 1
