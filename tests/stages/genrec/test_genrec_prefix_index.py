"""PrefixIndex parity with a plain Python dict-trie on random catalogues with collisions."""

import pytest
import torch

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.genrec.prefix_index import PrefixIndex


def random_catalogue(
    gen: torch.Generator, n: int, sizes: list[int], sparse: bool = False
) -> tuple[torch.Tensor, list]:
    """n random code tuples over small vocabularies + a collision level (rank within prefix).
    sparse: only even codes are used (vocabularies doubled), so children are never 0..n-1."""
    sem = torch.stack([torch.randint(0, v, (n,), generator=gen) for v in sizes], 1)
    if sparse:
        sem, sizes = sem * 2, [2 * v for v in sizes]
    seen: dict[tuple, int] = {}
    coll = []
    for row in sem.tolist():
        coll.append(seen.get(tuple(row), 0))
        seen[tuple(row)] = coll[-1] + 1
    tuples = torch.cat([sem, torch.tensor(coll)[:, None]], 1)
    return tuples, [*sizes, max(coll) + 1]


def dict_trie(tuples: torch.Tensor) -> tuple[dict, dict]:
    """prefix tuple -> set of next codes, and full tuple -> row index."""
    children: dict[tuple, set] = {}
    for row in tuples.tolist():
        for level in range(len(row)):
            children.setdefault(tuple(row[:level]), set()).add(row[level])
    return children, {tuple(row): i for i, row in enumerate(tuples.tolist())}


@pytest.mark.parametrize("dense_levels", [None, 0, 1, 4])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("sparse", [False, True])
def test_allowed_and_lookup_match_dict_trie(
    seed: int, dense_levels: int | None, sparse: bool
) -> None:
    gen = torch.Generator().manual_seed(seed)
    tuples, sizes = random_catalogue(gen, 300, [3, 5, 4], sparse)
    assert sizes[-1] > 1, "the catalogue must contain collisions"
    item_ids = torch.randperm(len(tuples), generator=gen) + 1000
    index = PrefixIndex(tuples, sizes, item_ids=item_ids, dense_levels=dense_levels)
    # every query path is exercised: dense tables, CSR with gathered children, and the
    # children-by-count shortcut of the collision level
    if dense_levels == 0:
        assert index.kinds[:3] == (["csr"] * 3 if sparse else ["count"] * 3)
        assert index.kinds[3] == "count"
    children, full = dict_trie(tuples)
    for level in range(len(sizes)):
        known = torch.unique(tuples[:, :level], dim=0) if level else tuples[:1, :0]
        # random prefixes include unknown ones and out-of-range codes (-1, V_l)
        rand = (
            torch.stack([torch.randint(-1, v + 1, (200,), generator=gen) for v in sizes[:level]], 1)
            if level
            else torch.zeros(1, 0, dtype=torch.long)
        )
        prefixes = torch.cat([known, rand])
        got = index.allowed(prefixes)
        assert got.shape == (len(prefixes), sizes[level])
        for row, mask in zip(prefixes.tolist(), got):
            expect = children.get(tuple(row), set())
            assert set(mask.nonzero().flatten().tolist()) == expect, row
    queries = torch.cat([tuples, random_catalogue(gen, 200, [3, 5, 4], sparse)[0]])
    queries[-5:, 0] = 7  # out of range at level 0
    looked = index.lookup(queries)
    for row, item in zip(queries.tolist(), looked.tolist()):
        expect = item_ids[full[tuple(row)]].item() if tuple(row) in full else -1
        assert item == expect


def test_permissible_masks_follow_target_prefixes() -> None:
    gen = torch.Generator().manual_seed(3)
    tuples, sizes = random_catalogue(gen, 100, [2, 3, 3])
    index = PrefixIndex(tuples, sizes)
    masks = index.permissible(tuples[:20])
    assert masks.shape == (20, 4, max(sizes))
    children, _ = dict_trie(tuples)
    for row, mask in zip(tuples[:20].tolist(), masks):
        for level in range(4):
            assert set(mask[level].nonzero().flatten().tolist()) == children[tuple(row[:level])]
            assert mask[level, row[level]]  # the target itself is always permissible


def test_duplicates_and_out_of_range_are_user_errors() -> None:
    tuples = torch.tensor([[0, 1, 0], [0, 1, 0]])
    with pytest.raises(MscgError, match="duplicated"):
        PrefixIndex(tuples, [2, 2, 1])
    with pytest.raises(MscgError, match="level 1"):
        PrefixIndex(torch.tensor([[0, 2, 0]]), [2, 2, 1])


def test_nbytes_counts_buffers() -> None:
    tuples = torch.tensor([[0, 1, 0], [1, 1, 0], [1, 0, 0]])
    index = PrefixIndex(tuples, [2, 2, 1], dense_levels=1)
    assert index.nbytes() == sum(b.numel() * b.element_size() for b in index.buffers())
    assert index.kinds == ["dense", "csr", "count"]
