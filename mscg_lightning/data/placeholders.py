"""Image hashes for `prepare`: placeholder pictures and byte-identical duplicates.

Amazon catalogues give many unrelated items the same stock "no image available" picture. The
paper removes items with empty *or placeholder* images before it merges items whose images are
byte-identical; without the first step every such item would be merged into one. A placeholder
is recognised by its content hash (SHA-256, as `sha256sum` prints it):

* the hash is in a known list (`prepare.placeholder_hashes`), or
* the hash is shared by items with more than `prepare.placeholder_max_titles` distinct titles: a
  product photographed once and listed a few times keeps its title (or a handful of variants),
  a stock picture is shared by hundreds of unrelated products.

Every image file is read once (`image_digests`); detection and dedup reuse the digests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mscg_lightning.errors import MscgError

# Details of at most this many placeholder hashes go into stats.json (the largest groups).
REPORTED = 20


def image_digests(paths: Sequence[str | None]) -> list[str | None]:
    """SHA-256 hex digest of every image file; None where the path is None.

    One read per item with an image (I/O bound anyway); an unreadable file is a user error.
    """
    out: list[str | None] = []
    for path in paths:
        if path is None:
            out.append(None)
            continue
        try:
            out.append(hashlib.sha256(Path(path).read_bytes()).hexdigest())
        except OSError as err:
            raise MscgError(f"cannot read the image {path}: {err.strerror}.") from err
    return out


def normalise_hashes(hashes: Iterable[str] | None) -> set[str]:
    """Known placeholder hashes as lower-case hex; raises MscgError for a malformed one."""
    known = set()
    for value in hashes or ():
        text = str(value).strip().lower()
        if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
            raise MscgError(
                f"prepare.placeholder_hashes: '{value}' is not a SHA-256 hex digest "
                "(64 hex characters, as printed by sha256sum)."
            )
        known.add(text)
    return known


def find_placeholders(
    digests: Sequence[str | None],
    titles: Sequence[str | None] | None,
    max_titles: int | None,
    known: set[str],
) -> tuple[np.ndarray, list[dict[str, object]]]:
    """Which items show a placeholder picture.

    Args:
        digests: per item [n], the image's SHA-256 hex digest or None (no image).
        titles: per item [n], its title (None: no title; each untitled item counts as a title
            of its own) or None for layouts without titles (every item counts as distinct).
        max_titles: a digest shared by items with more distinct titles than this is a
            placeholder; None disables the rule.
        known: digests that are placeholders whatever their items.

    Returns:
        (mask [n] bool: the item's image is a placeholder, details of the placeholder digests:
        ``{"sha256", "items", "titles", "known"}``, largest groups first, at most REPORTED).
    """
    groups: dict[str, list[int]] = {}
    for row, digest in enumerate(digests):
        if digest is not None:
            groups.setdefault(digest, []).append(row)
    mask = np.zeros(len(digests), dtype=bool)
    details = []
    for digest, rows in groups.items():
        if titles is None:
            n_titles = len(rows)
        else:
            named = {titles[r] for r in rows if titles[r] is not None}
            n_titles = len(named) + sum(titles[r] is None for r in rows)
        is_known = digest in known
        if is_known or (max_titles is not None and n_titles > max_titles):
            mask[rows] = True
            details.append(
                {"sha256": digest, "items": len(rows), "titles": n_titles, "known": is_known}
            )
    details.sort(key=lambda d: (-int(d["items"]), str(d["sha256"])))
    return mask, details[:REPORTED]


def mark_placeholders(
    items: pa.Table,
    digests: list[str | None],
    text_columns: Sequence[str],
    max_titles: int | None,
    hashes: Iterable[str] | None,
) -> tuple[pa.Table, list[str | None], np.ndarray, list[dict[str, object]]]:
    """Find the placeholder items of a catalogue and null their image.

    Titles come from the `title` column, else the first text column, else none (items count).

    Returns:
        (items with `image_path` null for placeholders, `digests` [n] with None for them,
        mask [n] bool of the placeholder items, details as `find_placeholders`).
    """
    titles = None
    for name in ("title", *text_columns):
        if name in items.column_names:
            titles = items.column(name).to_pylist()
            break
    mask, details = find_placeholders(digests, titles, max_titles, normalise_hashes(hashes))
    if not mask.any():
        return items, digests, mask, details
    paths = pc.if_else(pa.array(mask), pa.nulls(len(mask), pa.string()), items.column("image_path"))
    items = items.set_column(items.column_names.index("image_path"), "image_path", paths)
    return items, [None if m else d for d, m in zip(digests, mask)], mask, details


def representatives(digests: Sequence[str | None]) -> np.ndarray:
    """rep [n] int64: for items whose images are byte-identical, the smallest row of the group.

    Items without an image (None digest) map to themselves.
    """
    rep = np.arange(len(digests), dtype=np.int64)
    first: dict[str, int] = {}
    for row, digest in enumerate(digests):
        if digest is not None:
            rep[row] = first.setdefault(digest, row)
    return rep
