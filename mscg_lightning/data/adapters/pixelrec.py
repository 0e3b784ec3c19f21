"""PixelRec CSV with an image folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from mscg_lightning.data.adapters.common import (
    RawData,
    _interaction_table_to_raw,
    blank_to_null,
    catalogue_from_keys,
    check_unique,
    drop_missing,
    require_columns,
)
from mscg_lightning.data.adapters.files import find_stem, image_column, read_delimited
from mscg_lightning.errors import MscgError

if TYPE_CHECKING:
    from mscg_lightning.data.prepare_config import PrepareConfig


PIXELREC_TEXT = ("title", "title_en", "tag", "description")


def read_pixelrec(cfg: PrepareConfig, folder: Path) -> RawData:
    """PixelRec: `interactions/<dataset>.csv` (`item_id`, `user_id`, `timestamp`),
    `item_info/<dataset>.csv` (`item_id` + text columns `title`, `title_en`, `tag`,
    `description` where present; counts are ignored) and covers `cover/<item_id>.jpg`.
    File names are overridable (`interactions_file`, `items_file`, `image_dir`). PixelRec's own
    protocol uses only the last item of a sequence as target: set `target_mode: last_item`.

    No real PixelRec data exists on this machine: this adapter is tested on the fixture
    generator's miniature layout only.
    """
    dataset = cfg.dataset or find_stem(folder / "interactions", ".csv")
    inter_path = folder / (cfg.interactions_file or f"interactions/{dataset}.csv")
    item_path = folder / (cfg.items_file or f"item_info/{dataset}.csv")
    dropped: dict[str, int] = {}
    table = read_delimited(
        inter_path,
        delimiter=",",
        quoted=True,
        dropped=dropped,
        column_types={"item_id": pa.string(), "user_id": pa.string()},
    )
    require_columns(table, inter_path, ["item_id", "user_id", "timestamp"])
    ts_type = table.column("timestamp").type
    if not (
        pa.types.is_integer(ts_type)
        or pa.types.is_floating(ts_type)
        or pa.types.is_timestamp(ts_type)
        or pa.types.is_null(ts_type)
    ):
        ts = table.column("timestamp").cast(pa.string())
        numeric = pc.match_substring_regex(ts, r"^\s*-?\d+(\.\d*)?\s*$")
        first = pc.filter(ts, pc.invert(pc.fill_null(numeric, True)))[0].as_py()
        raise MscgError(
            f"{inter_path} column 'timestamp' holds {first!r}, not a number or a date-time."
        )
    rows_read = table.num_rows + dropped.get("malformed_row", 0)
    if table.num_rows == 0:
        raise MscgError(f"{inter_path} holds no interaction rows.")
    table = table.select(["user_id", "item_id", "timestamp"])
    table = drop_missing(
        table,
        {"user_id": "missing_user", "item_id": "missing_item", "timestamp": "missing_timestamp"},
        dropped,
    )
    item_dropped: dict[str, int] = {}
    info = read_delimited(
        item_path,
        delimiter=",",
        quoted=True,
        dropped=item_dropped,
        column_types={"item_id": pa.string()},
    )
    require_columns(info, item_path, ["item_id"])
    if info.num_rows == 0:
        raise MscgError(f"{item_path} lists no items.")
    check_unique(info.column("item_id"), item_path, "item_id")
    keys, order = catalogue_from_keys(info.column("item_id").combine_chunks())
    info = info.take(pa.array(order))
    text_columns = [c for c in PIXELREC_TEXT if c in info.column_names]
    columns: dict[str, pa.Array] = {"item_id": keys}
    for name in text_columns:
        columns[name] = blank_to_null(info.column(name).cast(pa.string()))
    columns["image_path"] = image_column(folder / (cfg.image_dir or "cover"), keys, item_dropped)
    return _interaction_table_to_raw(
        table,
        pa.table(columns),
        text_columns,
        cfg=cfg,
        inter_path=inter_path,
        item_path=item_path,
        rows_read=rows_read,
        dropped=dropped,
        item_dropped=item_dropped,
        dataset=dataset,
    )
