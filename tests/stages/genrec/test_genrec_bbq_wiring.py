"""BBQRec's pieces wired into GenRecT5: triple tokens, similarity attention, inherited codes."""

import pytest
import torch

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.bbq.triples import compact_vocabulary, join_triples
from mscg_lightning.stages.genrec.beam_search import beam_search
from mscg_lightning.stages.genrec.losses import target_log_probs
from mscg_lightning.stages.genrec.module import GenRecModule
from mscg_lightning.stages.genrec.prefix_index import PrefixIndex

TINY = dict(d_model=16, num_heads=2, d_kv=8, d_ff=32, encoder_layers=2, decoder_layers=1)
S, K = 2, 3  # signals, per-signal codebook size


def bbq_catalogue(n: int = 24, seed: int = 0) -> dict:
    """A text modality and a bbq modality (2 triple levels + collision level), compacted as the
    genrec stage compacts it; item vectors v [N, 6]."""
    gen = torch.Generator().manual_seed(seed)
    per_signal = torch.randint(0, K, (n, S, 2), generator=gen)
    raw = join_triples(per_signal, K)  # [N, 2] triples < K^S
    dense, vocab = compact_vocabulary(raw)
    seen: dict[tuple, int] = {}
    coll = []
    for row in raw.tolist():
        coll.append(seen.get(tuple(row), 0))
        seen[tuple(row)] = coll[-1] + 1
    bbq = torch.cat([dense, torch.tensor(coll)[:, None]], 1)
    text = torch.randint(0, 4, (n, 3), generator=gen)
    layout = {
        "modalities": ["text", "bbq"],
        "vocab_sizes": [[4, 4, 4], [len(v) for v in vocab] + [max(coll) + 1]],
        "target": "bbq",
        "triple": {"modality": "bbq", "signals": S, "codebook_size": K},
    }
    return {
        "codes": torch.stack([text, bbq], 1),
        "present": torch.ones(n, 2, dtype=torch.bool),
        "layout": layout,
        "triples": vocab,
        "vectors": torch.randn(n, 6, generator=gen),
        "bbq": bbq,
    }


def make_module(cat: dict, **kwargs: object) -> GenRecModule:
    torch.manual_seed(0)
    module = GenRecModule(token_layout=cat["layout"], **{**TINY, "dropout": 0.0, **kwargs})
    module.set_catalogue(
        cat["codes"], cat["present"], triples=cat["triples"], item_vectors=cat["vectors"]
    )
    return module


def randomise_similarity(module: GenRecModule) -> None:
    """Non-trivial bucket vectors, so that similarity attention differs from plain attention."""
    with torch.no_grad():
        for layer in module.model.encoder_layers:
            layer.sim.table.uniform_(0.2, 2.0)


def test_triple_tokens_embed_and_score_with_the_triple_embedding() -> None:
    cat = bbq_catalogue()
    model = make_module(cat).model
    triple = model.triple
    start = triple.start
    # input: a dense level-1 id embeds as the sum of its signals' codes + the level vector
    level, dense = 1, 2
    raw = cat["triples"][level][dense]
    ids = torch.tensor([start + triple.sizes[0] + dense, 1])  # a triple id and a text id
    out = model.embed_ids(ids)
    expected = triple.embedding(raw[None], torch.tensor([level]))[0]
    torch.testing.assert_close(out[0], expected)
    torch.testing.assert_close(out[1], model.embed.weight[1])
    # output: tied rows = TripleEmbedding.logits over the level's triples, scaled by d**-0.5
    hidden = torch.randn(5, 16)
    for lv in range(3):
        cands = cat["triples"][lv] if lv < 2 else torch.arange(triple.sizes[-1])
        ref = triple.embedding.logits(hidden, lv, cands) * 16**-0.5
        torch.testing.assert_close(model.level_logits(hidden, lv), ref)
    assert model.head is None and model.embed.weight.shape[0] == model.cfg.vocab_size


def test_similarity_attention_at_init_equals_plain_attention() -> None:
    cat = bbq_catalogue()
    plain = make_module(cat).eval()
    sim = make_module(cat, sim_attention=True).eval()
    sim.load_state_dict(plain.state_dict(), strict=False)
    history = torch.randint(0, 24, (4, 5))
    history[0, :3] = -1
    inputs = plain.tokenizer(history)
    ref = plain.model.encode(*inputs)
    out = sim.model.encode(*inputs, sim.model.similarity_buckets(history))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    randomise_similarity(sim)
    moved = sim.model.encode(*inputs, sim.model.similarity_buckets(history))
    assert (moved - ref).abs().max() > 1e-3
    with pytest.raises(MscgError, match="item_buckets"):
        sim.model.encode(*inputs)


def exhaustive(module: GenRecModule, history: torch.Tensor) -> torch.Tensor:
    """Eq. 6 log-prob of every catalogue item for every user, teacher-forced: [B, N]."""
    model, index = module.model, module.index
    codes = module.tokenizer.target_codes_table
    n = codes.shape[0]
    enc_in = module.tokenizer(history)
    hidden = model.encode(*enc_in, model.similarity_buckets(history))
    out = []
    for b in range(hidden.shape[0]):
        mask = enc_in.attention_mask[b : b + 1].expand(n, -1)
        logits = model.decode(hidden[b : b + 1].expand(n, -1, -1), mask, codes)
        out.append(target_log_probs(logits, codes, index.permissible(codes)).sum(-1))
    return torch.stack(out)


@pytest.mark.parametrize("triple_embedding", ["sum", "full"])
def test_beam_search_with_similarity_attention_equals_exhaustive_scoring(
    triple_embedding: str,
) -> None:
    cat = bbq_catalogue()
    module = make_module(cat, sim_attention=True, triple_embedding=triple_embedding).eval()
    randomise_similarity(module)
    assert isinstance(module.index, PrefixIndex)
    gen = torch.Generator().manual_seed(1)
    history = torch.randint(0, 24, (5, 4), generator=gen)
    history[0, :2] = -1
    history[1, 1] = -1
    with torch.no_grad():
        ref = exhaustive(module, history)
        enc = module.tokenizer(history)
        res = beam_search(
            module.model,
            module.index,
            *enc,
            num_beams=24,
            top_k=10,
            item_buckets=module.model.similarity_buckets(history),
        )
        items, _ = module.rank(history)  # the module's own path passes the buckets too
    assert torch.allclose(ref.exp().sum(1), torch.ones(5), atol=1e-5)
    ref_scores, ref_items = ref.topk(10, dim=1)
    assert torch.equal(res.items, ref_items)
    torch.testing.assert_close(res.scores, ref_scores, atol=1e-5, rtol=1e-5)
    assert torch.equal(items[:, :10], ref_items)


def test_triple_token_training_step_reaches_the_triple_and_similarity_tables() -> None:
    cat = bbq_catalogue()
    module = make_module(cat, sim_attention=True).train()
    batch = {"history": torch.tensor([[-1, 0, 1, 2], [3, 4, 5, 6]]), "target": torch.tensor([7, 8])}
    loss, n = module._loss(batch, mask_prob=0.5)
    loss.backward()
    assert n == 2 and torch.isfinite(loss)
    emb = module.model.triple.embedding
    assert emb.codes.grad.abs().sum() > 0 and emb.collision.weight.grad.abs().sum() > 0
    assert module.model.encoder_layers[0].sim.table.grad.abs().sum() > 0
    # the similarity tables never decay towards zero (init ones = plain attention)
    module.trainer = type("T", (), {"estimated_stepping_batches": 10})()
    groups = module.configure_optimizers()["optimizer"].param_groups
    table = module.model.encoder_layers[0].sim.table
    assert any(p is table for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0


def test_windows_with_similarity_attention_equal_per_sample_training() -> None:
    cat = bbq_catalogue()
    module = make_module(cat, sim_attention=True, encoder_attention="item_causal").train()
    randomise_similarity(module)
    windows = {
        "history": torch.tensor([[-1, -1, 0, 1, 2], [5, 6, 7, 8, 9]]),
        "targets": torch.tensor([[-1, -1, 1, 2, 4], [6, 7, 8, 9, 10]]),
    }
    loss, n = module._window_loss(windows, 0.0)
    histories, targets = [], []
    for hist, tgt in zip(windows["history"], windows["targets"]):
        for t in range(hist.shape[0]):
            if tgt[t] >= 0:
                prefix = hist[: t + 1]
                histories.append(torch.cat([torch.full((5 - t - 1,), -1), prefix]))
                targets.append(int(tgt[t]))
    ref, ref_n = module._loss(
        {"history": torch.stack(histories), "target": torch.tensor(targets)}, 0.0
    )
    assert n == ref_n == 8
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)


def test_inherit_code_embeddings_copies_the_codebooks_and_checks_the_width() -> None:
    cat = bbq_catalogue()
    module = make_module(cat, inherit_code_embeddings=True)
    books = torch.randn(1, 2, K, 16)
    module.inherit_codebooks(books)
    codes = module.model.triple.embedding.codes
    torch.testing.assert_close(codes[:, 0], books[0])
    torch.testing.assert_close(codes[:, 1], books[0])
    with pytest.raises(MscgError, match="latent_dim"):
        module.inherit_codebooks(torch.randn(1, 2, K, 8))
    with pytest.raises(MscgError, match="triple_embedding 'sum'"):
        make_module(cat, inherit_code_embeddings=True, triple_embedding="full")


def test_sim_attention_without_item_vectors_is_one_sentence() -> None:
    cat = bbq_catalogue()
    module = GenRecModule(token_layout=cat["layout"], **TINY, sim_attention=True)
    with pytest.raises(MscgError, match="sim_attention needs the item vectors"):
        module.set_catalogue(cat["codes"], cat["present"], triples=cat["triples"])


def test_bf16_autocast_similarity_windows_and_no_hf_export() -> None:
    from mscg_lightning.stages.genrec.hf_export import to_hf_t5

    cat = bbq_catalogue()
    module = make_module(cat, sim_attention=True, encoder_attention="item_causal").train()
    windows = {"history": torch.tensor([[-1, 0, 1, 2]]), "targets": torch.tensor([[-1, 1, 2, 4]])}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, n = module._window_loss(windows, 0.0)
    loss.backward()
    assert n == 3 and torch.isfinite(loss)
    assert module.model.encoder_layers[0].sim.table.grad is not None
    with pytest.raises(MscgError, match="no HF T5 form"):
        to_hf_t5(make_module(cat, position_bias="t5").model)  # triple tokens
