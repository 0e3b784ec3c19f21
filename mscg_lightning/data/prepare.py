"""The `prepare` stage: raw data -> the `prepared/` artifact (see ARCHITECTURE.md).

Steps, the same for every layout (adapters only read; see adapters/):
1. read the raw layout into `RawData` (ids mapped to catalogue rows, bad rows counted);
2. optional filters: `min_rating`; placeholder images (`placeholder_images`, see
   placeholders.py) are dropped or marked missing; `drop_items_without_image`;
3. dedup of items whose image files are byte-identical: every such item maps to the smallest
   catalogue row of its group (`dedup_images`; placeholders were removed first);
4. iterative k-core: users and items with fewer than `k_core` interactions are removed, repeated
   until nothing changes. Users also need 3 interactions (train / valid / test), so the user
   threshold is ``max(k_core, 3)``;
5. dense ids: `item_idx` follows the catalogue order (the layout's own item numbering where it
   has one, else raw ids in natural order), `user_idx` the natural order of raw user ids;
6. chronological order per user: by timestamp, ties and layouts without timestamps keep the file
   order. Repeated interactions with the same item are kept (re-purchases, re-watches are real);
7. leave-one-out: train = all but the last two items, valid target = second to last, test target
   = last; histories are the last `max_history` items before the target.

Everything is vectorised numpy/pyarrow: no Python loop per interaction.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mscg_lightning.artifacts import Manifest, write_json, write_shards
from mscg_lightning.data import given_embeddings, placeholders, validate
from mscg_lightning.data.adapters import ADAPTERS, RawData
from mscg_lightning.data.prepare_config import PrepareConfig, resolve_folder
from mscg_lightning.data.split import chronological_order, dense_ids, kcore_mask, leave_one_out
from mscg_lightning.errors import MscgError

# ----------------------------------------------------------------------------------------------
# Dedup (the array steps are in split.py)


def image_representatives(image_paths: pa.Array) -> np.ndarray:
    """rep [n_items] int64: for items whose image files are byte-identical, the smallest row.

    Items without an image (null path) map to themselves.
    """
    return placeholders.representatives(placeholders.image_digests(image_paths.to_pylist()))


def _count(dropped: dict[str, int], reason: str, n: int) -> None:
    if n:
        dropped[reason] = dropped.get(reason, 0) + int(n)


def _has_value(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.is_valid(column).to_numpy(zero_copy_only=False)


# ----------------------------------------------------------------------------------------------
# The stage


def prepare(cfg: PrepareConfig, out_dir: Path, data_root: Path, config_hash: str) -> Manifest:
    """Read raw data, write the prepared/ tables + stats.json + manifest.json into `out_dir`.

    `out_dir` is an empty temporary directory made by the caller (``atomic_artifact``), which
    renames it into place on success and deletes it on error. Returns the written manifest.
    """
    cfg.validate()
    out_dir = Path(out_dir)
    folder = resolve_folder(cfg, Path(data_root))
    if cfg.adapter != "ml100k_wheel" and not folder.is_dir():
        raise MscgError(f"the dataset folder {folder} does not exist (prepare.path).")
    # --- given embedding files keyed by raw item id (given_embeddings.py) ---
    adapter_files, id_files = given_embeddings.split_files(cfg.adapter, cfg.given_embeddings)
    raw: RawData = ADAPTERS[cfg.adapter](replace(cfg, given_embeddings=adapter_files), folder)
    validate.check_raw(cfg, raw, folder)  # codes in range, finite features, split files agree
    raw.items, given_files = given_embeddings.add_given_embeddings(raw.items, id_files, folder)
    raw.source_files += [
        p for e in given_files.values() for p in given_embeddings.files_of(Path(e["path"]))
    ]
    # --- end given embedding files ---
    dropped = dict(raw.rows_dropped)
    n_raw_users = int(np.count_nonzero(np.bincount(raw.user))) if len(raw.user) else 0
    user, item, time = raw.user, raw.item, raw.time
    items = raw.items
    n_catalogue = items.num_rows
    if len(user) == 0:
        raise MscgError(f"{raw.source_files[0]} yields no usable interactions.")

    def keep_rows(mask: np.ndarray, reason: str) -> None:
        nonlocal user, item, time
        _count(dropped, reason, (~mask).sum())
        user, item = user[mask], item[mask]
        time = time[mask] if time is not None else None

    if cfg.min_rating is not None:
        if raw.rating is None:
            raise MscgError(
                f"prepare.min_rating is set but {raw.source_files[0]} has no rating column."
            )
        keep_rows(raw.rating >= cfg.min_rating, "rating_below_min_rating")
    has_images = "image_path" in items.column_names
    dedup, placeholder_mode = cfg.image_protocol()
    digests: list[str | None] = []
    placeholder_info: dict[str, object] = {"mode": placeholder_mode, "items": 0, "images": []}
    if has_images and (dedup or placeholder_mode != "keep"):
        digests = placeholders.image_digests(items.column("image_path").to_pylist())
    if has_images and placeholder_mode != "keep":  # before the dedup (placeholders.py)
        items, digests, is_placeholder, details = placeholders.mark_placeholders(
            items, digests, raw.text_columns, cfg.placeholder_max_titles, cfg.placeholder_hashes
        )
        placeholder_info.update(items=int(is_placeholder.sum()), images=details)
        if placeholder_mode == "drop":
            keep_rows(~is_placeholder[item], "item_with_placeholder_image")
    if cfg.drop_items_without_image:
        if not has_images:
            raise MscgError(
                f"prepare.drop_items_without_image: layout '{cfg.adapter}' has no images."
            )
        keep_rows(_has_value(items.column("image_path"))[item], "item_without_image")
    merged = 0
    if dedup and has_images:
        rep = placeholders.representatives(digests)
        merged = int((rep != np.arange(n_catalogue)).sum())
        item = rep[item]

    # Users need >= 3 interactions whatever k_core is: one each for train, valid and test.
    keep, passes = kcore_mask(user, item, max(cfg.k_core, 3), max(cfg.k_core, 1))
    keep_rows(keep, "k_core")
    if len(user) == 0:
        raise MscgError(
            f"no user keeps {max(cfg.k_core, 3)} interactions after the {cfg.k_core}-core of "
            f"{raw.source_files[0]}; lower prepare.k_core."
        )
    kept_items, item_map = dense_ids(item, n_catalogue)
    kept_users, user_map = dense_ids(user, len(raw.user_ids))
    item = item_map[item]
    user = user_map[user]
    items = items.take(pa.array(kept_items))
    for line in given_embeddings.count_missing(items, given_files):  # given_embeddings.py
        print(line)
    _check_content(items, raw, cfg)

    order = chronological_order(user, time)
    user, item = user[order], item[order]
    splits = leave_one_out(user, item, len(kept_users), cfg.max_history)

    items_table = pa.table(
        {
            "item_idx": pa.array(np.arange(len(kept_items), dtype=np.int32)),
            **{name: items.column(name) for name in items.column_names},
        }
    )
    users_table = pa.table(
        {
            "user_idx": pa.array(np.arange(len(kept_users), dtype=np.int32)),
            "user_id": raw.user_ids.take(pa.array(kept_users)),
        }
    )
    for name, table in (("items", items_table), ("users", users_table), *splits.items()):
        write_shards(table, out_dir / name, cfg.rows_per_shard)

    n_users, n_items, n_inter = len(kept_users), len(kept_items), len(user)
    given_emb = {
        c[4:]: items.schema.field(c).type.list_size
        for c in items.column_names
        if c.startswith("emb_")
    }
    given_codes = {}
    for c in items.column_names:
        if c.startswith("codes_"):
            lengths = pc.list_value_length(items.column(c)).drop_null()
            given_codes[c[6:]] = int(pc.max(lengths).as_py() or 0)
    lengths = np.bincount(user, minlength=n_users)
    stats = {
        "adapter": cfg.adapter,
        "dataset": raw.dataset,
        "source_files": [str(p) for p in raw.source_files],
        "users": n_users,
        "items": n_items,
        "interactions": n_inter,
        "sparsity": 1.0 - n_inter / (n_users * n_items),
        "rows_read": raw.rows_read,
        "rows_dropped": dict(sorted(dropped.items())),
        "item_rows_dropped": dict(sorted(raw.item_rows_dropped.items())),
        "catalogue_items": n_catalogue,
        "items_merged_identical_image": merged,
        "dedup_images": bool(dedup and has_images),
        # catalogue items whose image is a placeholder, what was done, the hashes (placeholders.py)
        "placeholder_images": placeholder_info,
        "users_dropped": n_raw_users - n_users,
        "k_core": cfg.k_core,
        "k_core_passes": passes,
        "min_user_interactions": max(cfg.k_core, 3),
        "coverage": _coverage(items, raw.text_columns),
        "given_embedding_files": given_files,
        "sequence_length": {
            "min": int(lengths.min()),
            "median": float(np.median(lengths)),
            "mean": float(lengths.mean()),
            "max": int(lengths.max()),
        },
        "max_history": cfg.max_history,
        "target_mode": cfg.target_mode,
        "config": asdict(cfg),
    }
    write_json(out_dir / "stats.json", stats)
    manifest = Manifest(
        stage="prepare",
        config_hash=config_hash,
        rows={
            "users": n_users,
            "items": n_items,
            "interactions": n_inter,
            **{name: t.num_rows for name, t in splits.items()},
        },
        extra={
            "num_items": n_items,
            "num_users": n_users,
            "max_history": cfg.max_history,
            "target_mode": cfg.target_mode,
            "text_columns": list(raw.text_columns),
            "given_embeddings": given_emb,
            # file hashes: a changed file changes this artifact's content hash (given_embeddings.py)
            "given_embedding_files": given_embeddings.manifest_entries(given_files),
            "given_codes": given_codes,
            "image_column": "image_path" if has_images else None,
            "dataset": raw.dataset,
            "adapter": cfg.adapter,
        },
    )
    manifest.write(out_dir)
    return manifest


def _content_mask(items: pa.Table, text_columns: list[str]) -> dict[str, np.ndarray]:
    """Per-modality "has it" masks [n_items] over the item table."""
    n = items.num_rows
    masks: dict[str, np.ndarray] = {}
    text = np.zeros(n, dtype=bool)
    for name in text_columns:
        masks[f"text_{name}"] = _has_value(items.column(name))
        text |= masks[f"text_{name}"]
    masks["text"] = text
    masks["image"] = (
        _has_value(items.column("image_path"))
        if "image_path" in items.column_names
        else np.zeros(n, dtype=bool)
    )
    for name in items.column_names:
        if name.startswith(("emb_", "codes_")):
            masks[name] = _has_value(items.column(name))
    return masks


def _coverage(items: pa.Table, text_columns: list[str]) -> dict[str, float]:
    n = max(items.num_rows, 1)
    return {k: float(v.sum()) / n for k, v in _content_mask(items, text_columns).items()}


def _check_content(items: pa.Table, raw: RawData, cfg: PrepareConfig) -> None:
    """Items with no text, no image, no given embedding and no given codes are an error."""
    if cfg.allow_items_without_content or not raw.content_required:
        return
    masks = _content_mask(items, raw.text_columns)
    has = np.zeros(items.num_rows, dtype=bool)
    for name in ("text", "image"):
        has |= masks[name]
    for name, mask in masks.items():
        if name.startswith(("emb_", "codes_")):
            has |= mask
    if not has.all():
        bad = np.flatnonzero(~has)
        first = items.column("item_id")[int(bad[0])].as_py()
        files = ", ".join(str(p) for p in raw.source_files[1:]) or str(raw.source_files[0])
        raise MscgError(
            f"item '{first}' has no text and no image in {files} ({len(bad)} items in all); "
            "set prepare.allow_items_without_content: true to keep such items."
        )
