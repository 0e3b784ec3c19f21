"""Readers of raw dataset layouts; each returns the same canonical in-memory form, `RawData`.

An adapter only reads and validates: it maps raw ids to positions in the layout's item catalogue,
counts the rows it cannot use (`rows_dropped`) and raises `MscgError` for input it cannot trust
(missing file or column, wrong type, truncated JSON, duplicate ids, unknown items by default).
k-core, image dedup, ordering and the splits are `prepare.py`'s job and the same for every layout.

Catalogue order (which becomes `item_idx` order) is the layout's own item numbering where it has
one (P5 id, MQL4GRec id, UniSRec index); otherwise raw ids sorted numerically when they are all
integers, else lexicographically. Users follow the same "natural" order of their raw ids.

Modules: `common.py` (`RawData` and the in-memory helpers), `files.py` (reading raw files), one
module per layout family (`recbole.py`, `amazon.py`, `unisrec.py`, `pixelrec.py`,
`interactions.py`); this package holds the `ADAPTERS` registry and re-exports their names.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mscg_lightning.data.adapters.amazon import read_amazon2014, read_amazon2018, read_amazon2023
from mscg_lightning.data.adapters.common import (
    RawData,
    apply_mask,
    blank_to_null,
    build_raw_data,
    catalogue_from_keys,
    check_unique,
    drop_missing,
    encode_ids,
    fixed_size_embeddings,
    int_positions,
    join_list,
    map_keys,
    natural_order,
    plain_ints,
    require_columns,
    resolve_unknown,
)
from mscg_lightning.data.adapters.files import (
    IMAGE_SUFFIXES,
    NOT_DATA,
    find_stem,
    image_column,
    load_json,
    need_file,
    parse_code_file,
    read_delimited,
    read_jsonl,
    scan_images,
)
from mscg_lightning.data.adapters.interactions import read_interactions
from mscg_lightning.data.adapters.pixelrec import PIXELREC_TEXT, read_pixelrec
from mscg_lightning.data.adapters.recbole import (
    RECBOLE_RENAMES,
    _recbole_field,
    _recbole_header,
    read_ml100k_wheel,
    read_recbole,
)
from mscg_lightning.data.adapters.unisrec import read_unisrec

if TYPE_CHECKING:
    from mscg_lightning.data.prepare_config import PrepareConfig

__all__ = [
    "ADAPTERS",
    "IMAGE_SUFFIXES",
    "NOT_DATA",
    "PIXELREC_TEXT",
    "RECBOLE_RENAMES",
    "RawData",
    "_recbole_field",
    "_recbole_header",
    "apply_mask",
    "blank_to_null",
    "build_raw_data",
    "catalogue_from_keys",
    "check_unique",
    "drop_missing",
    "encode_ids",
    "find_stem",
    "fixed_size_embeddings",
    "image_column",
    "int_positions",
    "join_list",
    "load_json",
    "map_keys",
    "natural_order",
    "need_file",
    "parse_code_file",
    "plain_ints",
    "read_amazon2014",
    "read_amazon2018",
    "read_amazon2023",
    "read_delimited",
    "read_interactions",
    "read_jsonl",
    "read_ml100k_wheel",
    "read_pixelrec",
    "read_recbole",
    "read_unisrec",
    "require_columns",
    "resolve_unknown",
    "scan_images",
]

ADAPTERS: dict[str, Callable[[PrepareConfig, Path], RawData]] = {
    "interactions": read_interactions,
    "recbole": read_recbole,
    "ml100k_wheel": read_ml100k_wheel,
    "amazon2014": read_amazon2014,
    "amazon2018": read_amazon2018,
    "unisrec": read_unisrec,
    "amazon2023": read_amazon2023,
    "pixelrec": read_pixelrec,
}
