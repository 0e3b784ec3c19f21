"""Stage ``prepare``: the pipeline's entry into :func:`mscg_lightning.data.prepare.prepare`."""

from __future__ import annotations

from mscg_lightning.artifacts import Manifest
from mscg_lightning.pipeline import StageContext


def run(ctx: StageContext) -> Manifest | None:
    from mscg_lightning.data.prepare import PrepareConfig, prepare

    if ctx.out_dir is None:  # only rank 0 prepares
        return None
    return prepare(ctx.section_as(PrepareConfig), ctx.out_dir, ctx.data_root, ctx.config_hash)
