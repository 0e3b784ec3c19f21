"""One pass per window (item-causal encoder) equals per-sample training; DropKey; bf16 fit."""

from pathlib import Path

import lightning as L
import pytest
import torch

from mscg_lightning.data.datamodule import pad_left
from mscg_lightning.errors import MscgError
from mscg_lightning.stages.genrec.layers import _neg, drop_keys
from mscg_lightning.stages.genrec.module import GenRecModule

REPO = Path(__file__).resolve().parents[3]
TINY = dict(d_model=16, num_heads=2, d_kv=8, d_ff=32, encoder_layers=2, decoder_layers=2)


def catalogue(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """codes [N, 2, 3], present [N, 2] (item 3 lacks collab codes) and the token layout."""
    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(0, 4, (n, 3), generator=gen)
    sem = torch.randint(0, 3, (n, 2), generator=gen)
    seen: dict[tuple, int] = {}
    coll = []
    for row in sem.tolist():
        coll.append(seen.get(tuple(row), 0))
        seen[tuple(row)] = coll[-1] + 1
    collab = torch.cat([sem, torch.tensor(coll)[:, None]], 1)
    present = torch.ones(n, 2, dtype=torch.bool)
    present[3, 1] = False
    layout = {
        "modalities": ["text", "collab"],
        "vocab_sizes": [[4, 4, 4], [3, 3, max(coll) + 1]],
        "target": "collab",
    }
    return torch.stack([text, collab], 1), present, layout


def make_module(**kwargs: object) -> GenRecModule:
    torch.manual_seed(0)
    codes, present, layout = catalogue()
    module = GenRecModule(token_layout=layout, **{**TINY, "dropout": 0.0, **kwargs})
    module.set_catalogue(codes, present)
    return module


# windows as WindowDataset gives them: inputs s[a-1:b-1], targets s[a:b], left-padded with -1
WINDOWS = {
    "history": torch.tensor([[-1, -1, 0, 1, 2, 4], [5, 6, 7, 8, 9, 10], [-1, -1, -1, -1, -1, 12]]),
    "targets": torch.tensor([[-1, -1, 1, 2, 4, 3], [6, 7, 8, 9, 10, 11], [-1, -1, -1, -1, -1, 13]]),
    "user_idx": torch.arange(3),
}


def per_sample_batch() -> dict[str, torch.Tensor]:
    """Every (prefix, target) pair of WINDOWS as a sample batch (histories left-padded)."""
    histories, targets = [], []
    for hist, tgt in zip(WINDOWS["history"], WINDOWS["targets"]):
        for t in range(hist.shape[0]):
            if tgt[t] >= 0:
                prefix = hist[: t + 1]
                histories.append(prefix[prefix >= 0].numpy())
                targets.append(int(tgt[t]))
    return {"history": pad_left(histories, 6), "target": torch.tensor(targets)}


def grads(module: GenRecModule) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "mode, dropout_mode",
    [("constrained", "t5"), ("per_level", "t5"), ("full_vocab", "t5"), ("constrained", "fast")],
)
def test_one_pass_loss_and_gradients_equal_per_sample_training(
    mode: str, dropout_mode: str
) -> None:
    module = make_module(
        encoder_attention="item_causal", constrained_training=mode, dropout_mode=dropout_mode
    ).train()
    loss, n = module._window_loss(WINDOWS, 0.0)
    loss.backward()
    one_pass = grads(module)
    module.zero_grad()
    ref_loss, ref_n = module._loss(per_sample_batch(), 0.0)  # the simple reference
    ref_loss.backward()
    reference = grads(module)
    assert n == ref_n == 10  # 11 targets, item 3 has no collab codes
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert set(one_pass) == set(reference) and len(one_pass) > 20
    for name, g in reference.items():
        torch.testing.assert_close(one_pass[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_loss_norm_weighs_targets_by_the_epoch_mean() -> None:
    module = make_module(encoder_attention="item_causal")
    loss, n = module._window_loss(WINDOWS, 0.0)
    normed, _ = module._window_loss({**WINDOWS, "loss_norm": torch.tensor(22.0)}, 0.0)
    torch.testing.assert_close(normed, loss * n / 22.0)


def test_item_causal_states_ignore_later_items() -> None:
    module = make_module(encoder_attention="item_causal").eval()
    a = module.tokenizer(torch.tensor([[0, 1, 2, 4]]))
    b = module.tokenizer(torch.tensor([[0, 1, 5, 6]]))
    t = module.layout.tokens_per_item
    with torch.no_grad():
        ea, eb = module.model.encode(*a), module.model.encode(*b)
    torch.testing.assert_close(ea[:, : 2 * t], eb[:, : 2 * t])
    assert not torch.allclose(ea[:, 2 * t :], eb[:, 2 * t :])
    bidirectional = make_module().eval()
    with torch.no_grad():
        ea, eb = bidirectional.model.encode(*a), bidirectional.model.encode(*b)
    assert not torch.allclose(ea[:, : 2 * t], eb[:, : 2 * t])


@pytest.mark.parametrize("attention", ["bidirectional", "item_causal"])
def test_beam_search_runs_with_both_encoders(attention: str) -> None:
    module = make_module(encoder_attention=attention, num_beams=8, top_k=5, ks=(1, 5)).eval()
    items, scores = module.rank(torch.tensor([[0, 1, 2], [-1, 4, 5]]))
    assert items.shape == (2, 5) and (items >= 0).all() and torch.isfinite(scores).all()
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_windows_refuse_a_bidirectional_encoder() -> None:
    module = make_module()
    module.trainer = type("T", (), {"datamodule": type("D", (), {"train_mode": "windows"})()})()
    with pytest.raises(MscgError, match="encoder_attention 'item_causal'"):
        module.on_fit_start()


def test_bad_switch_values_are_one_sentence_errors() -> None:
    with pytest.raises(MscgError, match="dropout_mode"):
        make_module(dropout_mode="cheap")
    with pytest.raises(MscgError, match="encoder_attention"):
        make_module(encoder_attention="causal")


def test_drop_keys_drops_at_rate_p_and_never_unmasks_structural_keys() -> None:
    torch.manual_seed(0)
    bias = torch.zeros(1, 2, 50, 50)
    dropped = drop_keys(bias, (4, 2, 50, 50), 0.1) < 0
    assert abs(dropped.float().mean().item() - 0.1) < 0.01
    # causal structure; p=1 drops every key: rows fall back to uniform over permitted keys
    causal = torch.full((5, 5), _neg(torch.float32)).triu(1)[None, None]
    q = torch.randn(1, 1, 5, 4)
    k = torch.randn(1, 1, 5, 4)
    mask = drop_keys(causal, (1, 1, 5, 5), 1.0)
    weights = torch.softmax(q @ k.transpose(-1, -2) + mask, dim=-1)[0, 0]
    expect = torch.tril(torch.ones(5, 5)) / torch.arange(1, 6)[:, None]
    torch.testing.assert_close(weights, expect)


def test_fast_dropout_is_inactive_in_eval_and_keeps_the_rate_in_training() -> None:
    t5 = make_module(dropout_mode="t5", dropout=0.1)
    fast = make_module(dropout_mode="fast", dropout=0.1)
    fast.load_state_dict(t5.state_dict())
    inputs = t5.tokenizer(torch.tensor([[0, 1, 2, 4]]))
    with torch.no_grad():
        torch.testing.assert_close(
            t5.eval().model.encode(*inputs), fast.eval().model.encode(*inputs)
        )
        fast.train()
        assert not torch.allclose(fast.model.encode(*inputs), fast.model.encode(*inputs))
    assert fast.model.encoder_layers[0].ff.dropout.p == 0.0  # FFN-inner site dropped
    assert fast.model.encoder_layers[0].dropout.p == 0.1  # sublayer outputs kept
    assert t5.model.encoder_layers[0].ff.dropout.p == 0.1


def test_bf16_mixed_windows_fit_end_to_end_on_cpu(tmp_path) -> None:
    """A tiny fit + test under bf16-mixed on the CPU with the fast path (windows, fast
    dropout, item-causal): finite losses, metrics in range, float32 scores."""
    from mscg_lightning.artifacts import read_manifest
    from mscg_lightning.cli import main
    from mscg_lightning.data.datamodule import SequenceDataModule

    run = tmp_path / "run"
    args = ["prepare", "--config", str(REPO / "configs" / "tiny.yaml"), "--run_dir", str(run)]
    assert main([*args, "--data_root", str(REPO / "tests" / "fixtures")]) == 0
    prepared = run / "prepared"
    num_items = int(read_manifest(prepared).extra["num_items"])
    codes, present, layout = catalogue(num_items, seed=1)
    present[3, 1] = True
    layout["vocab_sizes"][1][2] = int(codes[:, 1, 2].max()) + 1
    L.seed_everything(0)
    module = GenRecModule(
        token_layout=layout,
        **TINY,
        dropout=0.1,
        dropout_mode="fast",
        encoder_attention="item_causal",
        num_beams=10,
        top_k=10,
        warmup_steps=2,
    )
    module.set_catalogue(codes, present)
    data = SequenceDataModule(str(prepared), batch_size=8, train_mode="windows")
    trainer = L.Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        max_epochs=1,
        limit_train_batches=4,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data)
    assert torch.isfinite(trainer.callback_metrics["train/loss_epoch"])
    result = trainer.test(module, data)[0]
    assert 0.0 <= result["test/ndcg@10"] <= 1.0
    scores = torch.cat([p[2] for p in module.predictions])
    assert scores.dtype == torch.float32 and torch.isfinite(scores[:, 0]).all()


def test_fast_dropout_module_matches_inverted_dropout_statistics() -> None:
    from mscg_lightning.stages.genrec.layers import FastDropout

    torch.manual_seed(0)
    drop = FastDropout(0.1).train()
    y = drop(torch.ones(400, 1000))
    assert abs((y == 0).float().mean().item() - 0.1) < 0.002
    assert abs(y.mean().item() - 1.0) < 0.01
    assert torch.equal(drop.eval()(y), y)


def test_head_and_beam_scores_stay_float32_under_bf16_autocast() -> None:
    """Issue 18 item 9: bf16 logits tie and misorder close items; the head runs in float32."""
    module = make_module().eval()
    hidden = torch.randn(3, 16)
    reference = hidden @ module.model.head_weight(0).T
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = module.model.level_logits(hidden.bfloat16(), 0)
        full = module.model.full_logits(hidden)
        items, scores = module.rank(torch.tensor([[0, 1, 2], [-1, 4, 5]]))
    assert logits.dtype == full.dtype == scores.dtype == torch.float32
    torch.testing.assert_close(logits, hidden.bfloat16().float() @ module.model.head_weight(0).T)
    torch.testing.assert_close(full[:, : reference.shape[1]], reference)
