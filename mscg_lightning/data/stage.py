"""Stage ``prepare``: the pipeline's entry into :func:`mscg_lightning.data.prepare.prepare`."""

from __future__ import annotations

from mscg_lightning.artifacts import Manifest
from mscg_lightning.pipeline import StageContext


def run(ctx: StageContext) -> Manifest | None:
    from mscg_lightning.data import fingerprints, validate
    from mscg_lightning.data.prepare import prepare
    from mscg_lightning.data.prepare_config import PrepareConfig, resolve_folder

    if ctx.out_dir is None:  # only rank 0 prepares
        return None
    cfg = ctx.section_as(PrepareConfig)
    manifest = prepare(cfg, ctx.out_dir, ctx.data_root, ctx.config_hash)
    # raw files read, fingerprinted: a file edited in place makes prepare stale (fingerprints.py)
    folder = resolve_folder(cfg, ctx.data_root)
    extra = validate.extra_files(cfg, folder, str(manifest.extra.get("dataset") or ""))
    return fingerprints.attach(manifest, ctx.out_dir, folder, extra)
