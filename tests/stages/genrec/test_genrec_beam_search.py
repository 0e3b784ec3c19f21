"""Constrained beam search vs exhaustive scoring of every catalogue item."""

import pytest
import torch

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.genrec.beam_search import beam_search
from mscg_lightning.stages.genrec.losses import full_vocab_targets, target_log_probs
from mscg_lightning.stages.genrec.model import GenRecConfig, GenRecT5
from mscg_lightning.stages.genrec.prefix_index import PrefixIndex
from mscg_lightning.stages.genrec.tokens import HistoryTokenizer, TokenLayout

TINY = dict(d_model=16, num_heads=2, d_kv=8, d_ff=32, encoder_layers=2, decoder_layers=1)


def setup(n_items: int = 30, seed: int = 0, sizes: tuple = (3, 4, 3)) -> tuple:
    """Catalogue of n items (text + collab codes, collab = 3 levels + collision), tiny model."""
    gen = torch.Generator().manual_seed(seed)
    sem = torch.stack([torch.randint(0, v, (n_items,), generator=gen) for v in sizes], 1)
    rank: dict[tuple, int] = {}
    coll = []
    for row in sem.tolist():
        coll.append(rank.get(tuple(row), 0))
        rank[tuple(row)] = coll[-1] + 1
    collab = torch.cat([sem, torch.tensor(coll)[:, None]], 1)
    text = torch.randint(0, 5, (n_items, 4), generator=gen)
    layout = TokenLayout(
        ["text", "collab"], [[5, 5, 5, 5], [*sizes, max(coll) + 1]], target="collab"
    )
    tok = HistoryTokenizer(
        layout, torch.stack([text, collab], 1), torch.ones(n_items, 2, dtype=torch.bool)
    )
    index = PrefixIndex(collab, layout.target_sizes)
    torch.manual_seed(seed)
    model = GenRecT5(GenRecConfig.from_layout(layout, dropout=0.0, **TINY)).eval()
    history = torch.randint(0, n_items, (5, 4), generator=gen)
    history[0, :2] = -1
    return tok, index, model, collab, history


def exhaustive(
    model, index, enc, collab, constrained: bool = True, full_vocab: bool = False
) -> torch.Tensor:
    """Teacher-forced log-prob of every catalogue item for every user: [B, N].

    constrained: Eq. 6 (renormalised over permissible children); otherwise the model's own
    softmax over the level's codes, or over every level's rows with ``full_vocab``. A catalogue
    item's prefixes are all permissible, so masking without renormalising leaves its score as is.
    """
    n = collab.shape[0]
    out = []
    with torch.no_grad():
        hidden = model.encode(*enc)
        for b in range(hidden.shape[0]):
            mask = enc.attention_mask[b : b + 1].expand(n, -1)
            args = (hidden[b : b + 1].expand(n, -1, -1), mask, collab)
            if full_vocab:
                logits = model.decode(*args, full_vocab=True)
                targets = full_vocab_targets(collab, model.cfg.target_sizes)
                out.append(target_log_probs(logits, targets).sum(-1))
                continue
            allowed = index.permissible(collab) if constrained else None
            out.append(target_log_probs(model.decode(*args), collab, allowed).sum(-1))
    return torch.stack(out)


def test_top_k_equals_exhaustive_scoring_when_beams_cover_the_catalogue() -> None:
    for seed in (0, 1):
        tok, index, model, collab, history = setup(seed=seed)
        enc = tok(history)
        res = beam_search(model, index, *enc, num_beams=30, top_k=10)
        ref = exhaustive(model, index, enc, collab)
        # constrained log-probs of all items form a distribution over the catalogue
        assert torch.allclose(ref.exp().sum(1), torch.ones(len(history)), atol=1e-5)
        ref_scores, ref_items = ref.topk(10, dim=1)
        assert torch.equal(res.items, ref_items)
        assert torch.allclose(res.scores, ref_scores, atol=1e-5)
        assert torch.equal(res.codes, collab[res.items])


def test_small_beam_returns_unique_catalogue_items_with_their_exact_scores() -> None:
    tok, index, model, collab, history = setup(n_items=40)
    enc = tok(history)
    res = beam_search(model, index, *enc, num_beams=6, top_k=5)
    ref = exhaustive(model, index, enc, collab)
    assert (res.items >= 0).all() and (res.items < 40).all()
    for row in res.items:
        assert len(set(row.tolist())) == 5
    assert (res.scores[:, :-1] >= res.scores[:, 1:]).all()
    assert torch.allclose(res.scores, ref.gather(1, res.items), atol=1e-5)


def test_unconstrained_mode_drops_tuples_outside_the_catalogue() -> None:
    # 3*4*3*C tuples in the code space; 72 beams explore all of it, so the unconstrained search
    # is exact: its top-K = catalogue items ranked by full-softmax log-prob.
    tok, index, model, collab, history = setup(n_items=20, sizes=(3, 4, 3))
    space = 3 * 4 * 3 * index.level_sizes[-1]
    enc = tok(history)
    res = beam_search(model, index, *enc, num_beams=space, top_k=10, constrained=False)
    ref = exhaustive(model, index, enc, collab, constrained=False)
    ref_scores, ref_items = ref.topk(10, dim=1)
    assert torch.equal(res.items, ref_items)
    assert torch.allclose(res.scores, ref_scores, atol=1e-5)
    # with few beams most generated tuples are not items: they come back as -1 / -inf
    few = beam_search(model, index, *enc, num_beams=10, top_k=10, constrained=False)
    valid = few.items >= 0
    assert (torch.isneginf(few.scores) == ~valid).all()
    assert (valid[:, :-1] >= valid[:, 1:]).all()  # valid items first


def test_fewer_items_than_k_are_padded() -> None:
    tok, index, model, collab, history = setup(n_items=4, sizes=(2, 2, 2))
    res = beam_search(model, index, *tok(history), num_beams=8, top_k=6)
    assert (res.items[:, :4] >= 0).all()
    assert (res.items[:, 4:] == -1).all() and torch.isneginf(res.scores[:, 4:]).all()
    assert sorted(res.items[0, :4].tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("full_vocab", [False, True])
def test_masked_softmax_equals_exhaustive_scoring_when_beams_cover_the_catalogue(
    full_vocab: bool,
) -> None:
    # the prefix_allowed_tokens_fn scoring: the model's softmax (level's codes, or every level's
    # rows for a full_vocab model), impermissible codes at -inf, no renormalisation
    for seed in (0, 1):
        tok, index, model, collab, history = setup(seed=seed)
        enc = tok(history)
        res = beam_search(
            model,
            index,
            *enc,
            num_beams=30,
            top_k=10,
            scoring="masked_softmax",
            full_vocab=full_vocab,
        )
        ref = exhaustive(model, index, enc, collab, constrained=False, full_vocab=full_vocab)
        # not renormalised: the catalogue holds less than all of the probability
        assert (ref.exp().sum(1) < 0.999).all()
        ref_scores, ref_items = ref.topk(10, dim=1)
        assert torch.equal(res.items, ref_items)
        assert torch.allclose(res.scores, ref_scores, atol=1e-5)
        assert torch.equal(res.codes, collab[res.items])
        # renormalised scores rank differently and are never lower
        renorm = exhaustive(model, index, enc, collab)
        assert (renorm >= ref - 1e-5).all() and not torch.allclose(renorm, ref, atol=1e-3)


@pytest.mark.parametrize("full_vocab", [False, True])
def test_masked_softmax_with_few_beams_returns_exact_scores(full_vocab: bool) -> None:
    tok, index, model, collab, history = setup(n_items=40)
    enc = tok(history)
    res = beam_search(
        model, index, *enc, num_beams=6, top_k=5, scoring="masked_softmax", full_vocab=full_vocab
    )
    ref = exhaustive(model, index, enc, collab, constrained=False, full_vocab=full_vocab)
    assert (res.items >= 0).all() and (res.items < 40).all()
    for row in res.items:
        assert len(set(row.tolist())) == 5
    assert (res.scores[:, :-1] >= res.scores[:, 1:]).all()
    assert torch.allclose(res.scores, ref.gather(1, res.items), atol=1e-5)


def test_renormalized_scores_do_not_depend_on_the_normaliser() -> None:
    tok, index, model, collab, history = setup()
    enc = tok(history)
    a = beam_search(model, index, *enc, num_beams=8, top_k=5)
    b = beam_search(model, index, *enc, num_beams=8, top_k=5, full_vocab=True)
    assert torch.equal(a.items, b.items) and torch.allclose(a.scores, b.scores, atol=1e-5)


def test_unknown_scoring_is_refused() -> None:
    tok, index, model, collab, history = setup(n_items=4, sizes=(2, 2, 2))
    with pytest.raises(MscgError, match="scoring"):
        beam_search(model, index, *tok(history), num_beams=4, top_k=4, scoring="softmax")
