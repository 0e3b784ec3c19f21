"""GenRecModule: the three constrained_training losses, beam scoring, empty-target batches."""

import pytest
import torch

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.genrec.attribution import require_masked_training
from mscg_lightning.stages.genrec.module import GenRecModule

LAYOUT = {
    "modalities": ["text", "collab"],
    "vocab_sizes": [[4, 4, 2], [3, 3, 2]],
    "target": "collab",
}
TINY = dict(d_model=16, num_heads=2, d_kv=8, d_ff=32, encoder_layers=1, decoder_layers=1)


def catalogue(n: int = 14, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """codes [N, 2, 3] (collab tuples unique through the collision level), present [N, 2]."""
    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(0, 4, (n, 3), generator=gen)
    text[:, 2] = torch.randint(0, 2, (n,), generator=gen)
    sem = torch.randint(0, 3, (n, 2), generator=gen)
    seen: dict[tuple, int] = {}
    coll = []
    for row in sem.tolist():
        coll.append(seen.get(tuple(row), 0))
        seen[tuple(row)] = coll[-1] + 1
    collab = torch.cat([sem, torch.tensor(coll)[:, None]], 1)
    present = torch.ones(n, 2, dtype=torch.bool)
    present[[3, 9], 1] = False  # items 3 and 9 have no collab codes: never a trainable target
    return torch.stack([text, collab], 1), present


def make_module(**kwargs: object) -> GenRecModule:
    torch.manual_seed(0)
    codes, present = catalogue()
    collision = int(codes[:, 1, 2][present[:, 1]].max()) + 1
    layout = {**LAYOUT, "vocab_sizes": [[4, 4, 2], [3, 3, collision]]}
    module = GenRecModule(
        token_layout=layout, **TINY, dropout=0.0, num_beams=20, top_k=10, ks=(1, 5), **kwargs
    )
    module.set_catalogue(codes, present)
    return module.eval()


BATCH = {
    "history": torch.tensor([[0, 1, 2], [-1, 4, 5], [6, 7, 8], [-1, -1, 10]]),
    "target": torch.tensor([11, 12, 13, 3]),  # item 3 has no collab codes
    "user_idx": torch.arange(4),
}


def manual_nll(module: GenRecModule, mode: str) -> torch.Tensor:
    """Reference NLL [B', D] of the batch's trainable targets, normaliser by normaliser."""
    keep = BATCH["target"] != 3
    target = module.tokenizer.target_codes(BATCH["target"][keep])
    inputs = module.tokenizer(BATCH["history"][keep])
    model = module.model
    with torch.no_grad():
        full = model(*inputs, target, full_vocab=True)  # every level's rows at every level
    sizes = module.layout.target_sizes
    nll = torch.zeros(target.shape)
    for b in range(target.shape[0]):
        for level, size in enumerate(sizes):
            start = model.head_offsets[level]
            z = full[b, level]
            own = z[start : start + size]
            if mode == "full_vocab":
                rows = z
            elif mode == "per_level":
                rows = own
            else:
                prefix = target[b : b + 1, :level]
                rows = own[module.index.allowed(prefix)[0]]
            nll[b, level] = torch.logsumexp(rows, 0) - own[target[b, level]]
    return nll


@pytest.mark.parametrize("mode", ["constrained", "per_level", "full_vocab"])
def test_each_training_mode_normalises_over_its_own_set(mode: str) -> None:
    module = make_module(constrained_training=mode)
    with torch.no_grad():
        loss, n = module._loss(BATCH, 0.0)
    assert n == 3
    assert torch.allclose(loss, manual_nll(module, mode).mean(), atol=1e-5)


def test_the_normalisers_are_nested() -> None:
    # permissible children of the prefix within the level's codes within all levels' rows
    module = make_module()
    constrained, per_level, full = (
        manual_nll(module, m) for m in ("constrained", "per_level", "full_vocab")
    )
    assert (constrained <= per_level + 1e-6).all() and (per_level < full).all()
    assert (constrained < per_level - 1e-4).any()


def test_former_booleans_map_to_the_mode_names() -> None:
    assert make_module(constrained_training=True).hparams.constrained_training == "constrained"
    assert make_module(constrained_training=False).hparams.constrained_training == "per_level"
    with pytest.raises(MscgError, match="constrained_training"):
        make_module(constrained_training="unconstrained")
    with pytest.raises(MscgError, match="beam_scoring"):
        make_module(beam_scoring="renormalised")


@pytest.mark.parametrize(
    "mode, scoring, expect",
    [
        ("constrained", "auto", "renormalized"),
        ("per_level", "auto", "masked_softmax"),
        ("full_vocab", "auto", "masked_softmax"),
        ("constrained", "masked_softmax", "masked_softmax"),
        ("full_vocab", "renormalized", "renormalized"),
    ],
)
def test_beam_scoring_auto_follows_the_training_mode(mode: str, scoring: str, expect: str) -> None:
    assert make_module(constrained_training=mode, beam_scoring=scoring).beam_scoring == expect


def test_rank_scores_items_with_the_models_scoring() -> None:
    # 20 beams cover the 12 catalogue items: each returned score is the item's exact score
    history = BATCH["history"]
    for mode in ("constrained", "full_vocab"):
        module = make_module(constrained_training=mode)
        items, scores = module.rank(history)
        n = int((items[0] >= 0).sum())
        assert n == 10
        inputs = module.tokenizer(history)
        for b in range(history.shape[0]):
            tuples = module.tokenizer.target_codes(items[b])
            one = [
                t[b : b + 1].expand(len(tuples), *t.shape[1:]) if t.ndim == 2 else t for t in inputs
            ]
            with torch.no_grad():
                full = module.model(*one, tuples, full_vocab=True)
            logp = torch.zeros(len(tuples))
            for level, size in enumerate(module.layout.target_sizes):
                start = module.model.head_offsets[level]
                rows = (
                    full[:, level] if mode == "full_vocab" else full[:, level, start : start + size]
                )
                if mode == "constrained":
                    allowed = module.index.allowed(tuples[:, :level])
                    rows = rows.masked_fill(~allowed, float("-inf"))
                logp += rows.gather(
                    1, (tuples[:, level] + (start if mode == "full_vocab" else 0))[:, None]
                )[:, 0]
                logp -= torch.logsumexp(rows, 1)
            assert torch.allclose(scores[b], logp, atol=1e-5)


def test_a_batch_without_any_target_codes_weighs_zero() -> None:
    for mode in ("constrained", "per_level", "full_vocab"):
        module = make_module(constrained_training=mode).train()
        batch = {**BATCH, "target": torch.tensor([3, 9, 3, 9])}
        loss, n = module._loss(batch, 0.75)
        assert n == 0 and loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_attribution_refuses_a_model_trained_without_masking() -> None:
    with pytest.raises(MscgError, match="mask_prob 0"):
        require_masked_training(dict(make_module().hparams), "runs/x")
    require_masked_training(dict(make_module(mask_prob=0.75).hparams), "runs/x")


def test_tiger_overlay_sets_the_three_switches_over_a_dataset_config(capsys) -> None:
    from pathlib import Path

    from mscg_lightning.cli import main

    repo = Path(__file__).resolve().parents[3]
    configs = [repo / "configs" / "instruments.yaml", repo / "configs" / "model" / "tiger.yaml"]
    args = [a for c in configs for a in ("--config", str(c))]
    assert main(["fit", *args, "--print_config"]) == 0
    genrec = capsys.readouterr().out.split("\ngenrec:")[1]
    for line in ("position_bias: t5", "constrained_training: full_vocab", "beam_scoring: masked"):
        assert line in genrec
    assert "num_beams: 20" in genrec  # the dataset config's other settings stay
