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
