"""`PrepareConfig`: the options of the `prepare` stage, their checks and the layouts' image protocol.

Kept apart from prepare.py (the stage's steps) so that adapters, validation and the pipeline can
import the options without the stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mscg_lightning.data import placeholders, validate
from mscg_lightning.data.adapters import ADAPTERS
from mscg_lightning.data.interactions import InteractionColumns
from mscg_lightning.errors import MscgError

AdapterName = Literal[
    "interactions",
    "recbole",
    "amazon2014",
    "amazon2018",
    "unisrec",
    "amazon2023",
    "pixelrec",
    "ml100k_wheel",
]


@dataclass
class PrepareConfig:
    """How to turn one raw data set into the `prepared/` artifact.

    Args:
        adapter: Raw layout: interactions (your own data: one interactions table + optional
            items table, see interactions.py and README "Your own data"), recbole (atomic files), amazon2014 (P5/S3Rec), amazon2018
            (MQL4GRec), unisrec, amazon2023 (reviews/meta JSONL + images), pixelrec (CSV +
            covers), ml100k_wheel (ml-100k from the recbole PyPI wheel, the embedded default).
        path: Dataset folder, relative to data_root unless absolute. For ml100k_wheel: the
            cache folder (null: $MSCG_CACHE or ~/.cache/mscg_lightning).
        dataset: File stem where the layout needs one (Beauty, Instruments, Scientific,
            ml-100k); null guesses it from the single matching file in the folder.
        k_core: Iterative k-core threshold for users and items (0 or 1 disables it; users
            always need 3 interactions for leave-one-out).
        max_history: Items kept in valid/test histories (the last ones before the target).
        target_mode: per_item (every train position is a target, Amazon protocol) or last_item
            (only a sequence's last item, PixelRec protocol); recorded for the DataModules.
        rows_per_shard: Rows per Parquet shard of every output table.
        dedup_images: Map items whose image files are byte-identical to one item (the smallest
            catalogue row); only for layouts with images. null: the layout's protocol
            (`IMAGE_PROTOCOL`: pixelrec false, as the paper dedups only the Amazon sets;
            otherwise true).
        placeholder_images: What to do with items whose image is a placeholder ("no image
            available" pictures, see placeholders.py), before dedup: drop (drop their
            interactions: the paper's Amazon protocol, "removes samples with empty or placeholder
            images"), missing (keep the items without an image), keep (treat the picture as a
            real image: it is then merged by dedup). null: the layout's protocol (pixelrec keep,
            otherwise drop).
        placeholder_max_titles: An image shared by items with more distinct titles than this
            is a placeholder; null disables this rule (only placeholder_hashes then count).
        placeholder_hashes: SHA-256 hex digests (as sha256sum prints them) of known placeholder
            pictures, placeholders whatever items share them.
        drop_items_without_image: Drop interactions with items that have no (non-empty) image
            file, the paper's Amazon protocol.
        min_rating: Keep only interactions rated at least this (layouts with ratings); null
            keeps all.
        on_unknown_items: error (default) or drop (counted in stats.json) for interactions
            whose item is not in the layout's item table.
        allow_items_without_content: Keep items that have no text, no image and no given
            embedding or codes instead of failing.
        given_codes: {name: file} code files (JSON {item: ["<a_1>", ...]}) stored as
            codes_<name>; null: the layout's default (amazon2018: <dataset>.index_*.json).
            Only the amazon2014 and amazon2018 layouts read code files; others refuse it.
        given_codebook_size: Size of the codebooks of the given codes: every code must lie in
            0..size-1 (checked by prepare, naming file, item and level); null checks only
            that codes are not negative.
        given_embeddings: {name: file} item embeddings stored as emb_<name> (pass them on with
            text_embed.given / image_embed.given: <name>); files relative to the dataset folder.
            Any layout: a .parquet (columns item_id, embedding: list of floats) or a .npy
            matrix with <stem>.ids.txt (line i = raw item id of row i), joined by raw item id
            (catalogue items the file lacks get none, extra ids are counted and ignored; see
            given_embeddings.py). unisrec also reads raw float32 files (row i = index i). null:
            the layout's default (unisrec: text=<dataset>.feat1CLS, image=<dataset>.feat3CLS).
        interactions_file: Override of the interactions file name (relative to path).
        items_file: Override of the item table file name (relative to path).
        image_dir: Override of the image folder (relative to path; amazon2023: images,
            pixelrec: cover; interactions: none unless set).
        hub: amazon2023 only: read reviews and metadata through Hugging Face `datasets` from
            a hub dataset id (McAuley-Lab/Amazon-Reviews-2023) or a local folder (a mirror of
            its files, or datasets saved with save_to_disk); see hub.py. `path` still holds the
            image folder.
        hub_streaming: Read the hub files batch by batch, keeping only the columns used.
        columns: Column names of the interactions adapter's tables (user, item, timestamp,
            rating, item_id, text, image; see interactions.InteractionColumns).
    """

    adapter: AdapterName
    path: str | None = None
    dataset: str | None = None
    k_core: int = 5
    max_history: int = 20
    target_mode: Literal["per_item", "last_item"] = "per_item"
    rows_per_shard: int = 1_000_000
    dedup_images: bool | None = None
    placeholder_images: Literal["drop", "missing", "keep"] | None = None
    placeholder_max_titles: int | None = 10
    placeholder_hashes: list[str] | None = None
    drop_items_without_image: bool = False
    min_rating: float | None = None
    on_unknown_items: Literal["error", "drop"] = "error"
    allow_items_without_content: bool = False
    given_codes: dict[str, str] | None = None
    given_codebook_size: int | None = None
    given_embeddings: dict[str, str] | None = None
    interactions_file: str | None = None
    items_file: str | None = None
    image_dir: str | None = None
    columns: InteractionColumns | None = None
    hub: str | None = None
    hub_streaming: bool = True

    def validate(self) -> None:
        """Raise MscgError for values no layout can use."""
        if self.adapter not in ADAPTERS:
            raise MscgError(f"prepare.adapter '{self.adapter}' is not one of {sorted(ADAPTERS)}.")
        if self.k_core < 0:
            raise MscgError(f"prepare.k_core must be >= 0, got {self.k_core}.")
        if self.max_history < 1:
            raise MscgError(f"prepare.max_history must be >= 1, got {self.max_history}.")
        if self.rows_per_shard < 1:
            raise MscgError(f"prepare.rows_per_shard must be >= 1, got {self.rows_per_shard}.")
        if self.target_mode not in ("per_item", "last_item"):
            raise MscgError(f"prepare.target_mode '{self.target_mode}' is not per_item/last_item.")
        if self.on_unknown_items not in ("error", "drop"):
            raise MscgError(
                f"prepare.on_unknown_items '{self.on_unknown_items}' is not error/drop."
            )
        if self.path is None and self.adapter != "ml100k_wheel":
            raise MscgError(f"prepare.path is required for adapter '{self.adapter}'.")
        if self.placeholder_images not in (None, "drop", "missing", "keep"):
            raise MscgError(
                f"prepare.placeholder_images '{self.placeholder_images}' is not drop/missing/keep."
            )
        if self.placeholder_max_titles is not None and self.placeholder_max_titles < 1:
            raise MscgError(
                f"prepare.placeholder_max_titles must be >= 1 or null, got "
                f"{self.placeholder_max_titles}."
            )
        placeholders.normalise_hashes(self.placeholder_hashes)
        if self.hub is not None and self.adapter != "amazon2023":
            raise MscgError(f"prepare.hub works with adapter amazon2023, not '{self.adapter}'.")
        validate.check_config(self)  # given codes: layouts that read them, codebook size

    def image_protocol(self) -> tuple[bool, str]:
        """(dedup_images, placeholder_images) with nulls resolved by the layout's protocol."""
        default = IMAGE_PROTOCOL.get(self.adapter, IMAGE_PROTOCOL["amazon2023"])
        dedup = default[0] if self.dedup_images is None else self.dedup_images
        mode = default[1] if self.placeholder_images is None else self.placeholder_images
        return dedup, mode


# The paper's image handling per layout: (dedup_images, placeholder_images). It dedups and
# removes placeholder images on the Amazon sets only; PixelRec keeps every item as it is.
# Layouts not listed (no image folder, or new ones) follow the Amazon protocol.
IMAGE_PROTOCOL: dict[str, tuple[bool, str]] = {
    "amazon2023": (True, "drop"),
    "pixelrec": (False, "keep"),
}


def resolve_folder(cfg: PrepareConfig, data_root: Path) -> Path:
    """The dataset folder: `path` (relative to `data_root` unless absolute), or the wheel cache."""
    if cfg.path is None:
        from mscg_lightning.data.recbole_wheel import cache_dir

        return cache_dir()
    path = Path(cfg.path).expanduser()
    return path if path.is_absolute() else Path(data_root) / path


def config_for(adapter: str, path: str | Path | None = None, **kwargs: object) -> PrepareConfig:
    """A PrepareConfig with defaults and `path` given as str or Path (for scripts and tests)."""
    return PrepareConfig(adapter=adapter, path=None if path is None else str(path), **kwargs)  # type: ignore[arg-type]
