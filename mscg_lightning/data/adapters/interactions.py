"""Your own data: one interactions table (+ optional items table); read by data/interactions.py."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mscg_lightning.data.adapters.common import RawData

if TYPE_CHECKING:
    from mscg_lightning.data.prepare_config import PrepareConfig


def read_interactions(cfg: PrepareConfig, folder: Path) -> RawData:
    """Your own data: one interactions table (+ optional items table); see interactions.py."""
    from mscg_lightning.data.interactions import read_interactions as read

    return read(cfg, folder)
