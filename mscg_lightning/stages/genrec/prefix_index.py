"""Vectorised prefix tree over the catalogue's code tuples (constrained training and decoding).

Layout (after STATIC's idea: dense masks for shallow levels, CSR for deep ones):

* every tuple ``(c_0, .., c_{D-1})`` is a mixed-radix integer key; the key of a length-``l``
  prefix is ``key // prod(V_l..V_{D-1})``, so sorting the full keys once sorts every level;
* for the first ``dense_levels`` levels a bool table ``[prod(V_<l), V_l]`` answers a prefix with
  one row lookup (level 0 is a single row). By default every level but the last is dense when
  its table has at most ``MAX_DENSE_CELLS`` cells: the semantic levels branch widely (up to 256
  children), where a padded CSR gather costs ``beams x max_children``, while the collision level
  is narrow and its dense table would be large (``prod(V_<L) x V_L``);
* for deeper levels, CSR: the sorted unique prefix keys of length ``l``, offsets into the sorted
  children codes; a batch of prefixes is answered with one ``searchsorted`` and one scatter.
  When every node's children are exactly ``0..n-1`` (a collision level numbering the items that
  share a prefix), the children array is dropped and the mask is ``arange(V) < n``;
* complete tuples map to item ids through ``searchsorted`` on the sorted full keys.

Everything lives in buffers on the module's device; no Python loop over prefixes or items.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mscg_lightning.errors import MscgError

# Above this many cells a would-be dense level falls back to CSR (bool bytes; 64 MiB).
MAX_DENSE_CELLS = 1 << 26


class PrefixIndex(nn.Module):
    """Set of catalogue code tuples answering "which codes may follow this prefix".

    Args:
        tuples: LongTensor[N, D] of codes (D = L+1 levels including the collision level);
            tuples must be unique.
        level_sizes: vocabulary size V_l of each level (len D).
        item_ids: LongTensor[N] id returned by :meth:`lookup` for each tuple (default: row index).
        dense_levels: number of leading levels answered from dense tables (rest: CSR); None =
            all but the last level. A level whose table would exceed ``MAX_DENSE_CELLS`` cells is
            CSR regardless.
    """

    def __init__(
        self,
        tuples: Tensor,
        level_sizes: Sequence[int],
        item_ids: Tensor | None = None,
        dense_levels: int | None = None,
    ) -> None:
        super().__init__()
        tuples = tuples.long()
        sizes = [int(v) for v in level_sizes]
        if tuples.ndim != 2 or tuples.shape[1] != len(sizes) or tuples.shape[0] == 0:
            raise MscgError(
                f"prefix index needs a non-empty [N, {len(sizes)}] code table, "
                f"got shape {tuple(tuples.shape)}."
            )
        for level, size in enumerate(sizes):
            col = tuples[:, level]
            if col.min() < 0 or col.max() >= size:
                raise MscgError(
                    f"target codes at level {level} span {int(col.min())}..{int(col.max())}, "
                    f"outside [0, {size})."
                )
        if math.prod(sizes) >= 2**62:
            raise MscgError(f"target code space {sizes} is too large for 64-bit prefix keys.")
        n, depth = tuples.shape
        if dense_levels is None:
            dense_levels = depth - 1
        if item_ids is None:
            item_ids = torch.arange(n, device=tuples.device)
        self.level_sizes: tuple[int, ...] = tuple(sizes)
        self.depth = depth
        # div[l] = prod(V_l..V_{D-1}): the prefix key of length l is full_key // div[l].
        self.div: tuple[int, ...] = tuple(math.prod(sizes[i:]) for i in range(depth + 1))

        full = self._keys(tuples)
        full, order = torch.sort(full)
        if (full[1:] == full[:-1]).any():
            dup = int((full[1:] == full[:-1]).sum())
            raise MscgError(
                f"{dup} target code tuples are duplicated; the collision level must make every "
                "item's tuple unique."
            )
        self.register_buffer("full_keys", full, persistent=False)
        self.register_buffer("sorted_items", item_ids.long()[order], persistent=False)

        self.kinds: list[str] = []
        self.max_children: list[int] = []
        for level in range(depth):
            # unique (l+1)-prefixes, their parent l-prefix and last code
            child_keys = torch.unique_consecutive(full // self.div[level + 1])
            parent = child_keys // sizes[level]
            code = child_keys % sizes[level]
            n_rows = math.prod(sizes[:level])
            parents, counts = torch.unique_consecutive(parent, return_counts=True)
            self.max_children.append(int(counts.max()))
            if level < dense_levels and n_rows * sizes[level] <= MAX_DENSE_CELLS:
                table = torch.zeros(n_rows, sizes[level], dtype=torch.bool, device=full.device)
                table[parent, code] = True
                self.register_buffer(f"dense_{level}", table, persistent=False)
                self.kinds.append("dense")
            else:
                offsets = torch.zeros(len(parents) + 1, dtype=torch.long, device=full.device)
                offsets[1:] = torch.cumsum(counts, 0)
                self.register_buffer(f"keys_{level}", parents, persistent=False)
                self.register_buffer(f"offsets_{level}", offsets, persistent=False)
                # Collision levels number the items under a prefix 0..n-1: then the children
                # are implied by the count and the query needs no gather ("count" kind).
                rank = torch.arange(len(code), device=full.device) - offsets[:-1].repeat_interleave(
                    counts
                )
                if torch.equal(code, rank):
                    self.kinds.append("count")
                else:
                    self.register_buffer(f"children_{level}", code, persistent=False)
                    self.kinds.append("csr")

    @property
    def num_items(self) -> int:
        """Number of catalogue tuples N."""
        return self.full_keys.shape[0]

    def nbytes(self) -> int:
        """Bytes held by the index tensors."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def _keys(self, codes: Tensor) -> Tensor:
        """Mixed-radix key of prefixes: LongTensor[B, l] -> LongTensor[B] (codes must be in range)."""
        key = torch.zeros(codes.shape[0], dtype=torch.long, device=codes.device)
        for level in range(codes.shape[1]):
            key = key * self.level_sizes[level] + codes[:, level]
        return key

    def _in_range(self, codes: Tensor) -> Tensor:
        """BoolTensor[B]: every code of the prefix lies in its level's vocabulary."""
        ok = torch.ones(codes.shape[0], dtype=torch.bool, device=codes.device)
        for level in range(codes.shape[1]):
            ok &= (codes[:, level] >= 0) & (codes[:, level] < self.level_sizes[level])
        return ok

    def allowed(self, prefix: Tensor) -> Tensor:
        """Permissible next codes after each prefix.

        Args:
            prefix: LongTensor[B, l] with 0 <= l < D (any values; unknown prefixes allow nothing).

        Returns:
            BoolTensor[B, V_l].
        """
        level = prefix.shape[1]
        if level >= self.depth:
            raise ValueError(f"prefix length {level} must be < {self.depth}")
        size = self.level_sizes[level]
        ok = self._in_range(prefix)
        key = self._keys(torch.where(ok[:, None], prefix, 0))
        if self.kinds[level] == "dense":
            return getattr(self, f"dense_{level}")[key] & ok[:, None]
        keys = getattr(self, f"keys_{level}")
        offsets = getattr(self, f"offsets_{level}")
        pos = torch.searchsorted(keys, key).clamp(max=keys.shape[0] - 1)
        found = ok & (keys[pos] == key)
        start = offsets[pos]
        count = torch.where(found, offsets[pos + 1] - start, 0)
        if self.kinds[level] == "count":
            return torch.arange(size, device=prefix.device) < count[:, None]
        # Gather up to max_children codes per row; invalid slots scatter into a spare column.
        slot = torch.arange(self.max_children[level], device=prefix.device)
        children = getattr(self, f"children_{level}")
        idx = (start[:, None] + slot).clamp(max=children.shape[0] - 1)
        codes = torch.where(slot < count[:, None], children[idx], size)
        out = torch.zeros(prefix.shape[0], size + 1, dtype=torch.bool, device=prefix.device)
        out.scatter_(1, codes, True)
        return out[:, :size]

    def lookup(self, tuples: Tensor) -> Tensor:
        """Item id of complete tuples: LongTensor[B, D] -> LongTensor[B] (-1 if not in catalogue)."""
        ok = self._in_range(tuples)
        key = self._keys(torch.where(ok[:, None], tuples, 0))
        pos = torch.searchsorted(self.full_keys, key).clamp(max=self.num_items - 1)
        found = ok & (self.full_keys[pos] == key)
        return torch.where(found, self.sorted_items[pos], -1)

    def permissible(self, tuples: Tensor) -> Tensor:
        """Masks of permissible codes along target tuples, for constrained training (Eq. 6).

        Args:
            tuples: LongTensor[B, D] target code tuples.

        Returns:
            BoolTensor[B, D, V_max]: entry (b, l, c) is True iff code c may follow tuples[b, :l];
            columns beyond V_l are False.
        """
        v_max = max(self.level_sizes)
        out = torch.zeros(
            tuples.shape[0], self.depth, v_max, dtype=torch.bool, device=tuples.device
        )
        for level in range(self.depth):
            out[:, level, : self.level_sizes[level]] = self.allowed(tuples[:, :level])
        return out
