"""BBQRec's generator pieces: similarity-enhanced attention and triple-token embeddings."""

import pytest
import torch
import torch.nn.functional as F

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.bbq.triples import compact_vocabulary, join_triples
from mscg_lightning.stages.genrec.similarity_attention import (
    SimilarityAttention,
    encoder_buckets,
    similarity_attention_reference,
    similarity_buckets,
    token_items,
)
from mscg_lightning.stages.genrec.tokens import HistoryTokenizer, TokenLayout
from mscg_lightning.stages.genrec.triple_embedding import TripleEmbedding


def _qkv(b=2, h=2, n=5, dk=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, dk, generator=g) for _ in range(3)]


def _padding_bias(b=2, n=5):
    bias = torch.zeros(b, 1, 1, n)
    bias[0, ..., :2] = float("-inf")  # row 0: two padding keys (left)
    return bias


def test_buckets_follow_equation_15_and_mark_tokens_of_no_item():
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
    items = torch.tensor([[0, 1, 2, 3, -1]])
    buckets = similarity_buckets(vectors, items, items, num_buckets=100)
    assert buckets[0, 0, 0] == 100 and buckets[0, 0, 1] == 50 and buckets[0, 0, 2] == 0
    assert buckets[0, 0, 3] == 80  # cos 0.6 -> round(0.8 * 100)
    assert (buckets[0, 4] == 101).all() and (buckets[0, :, 4] == 101).all()


def test_all_equal_buckets_initialised_at_one_equal_plain_attention():
    q, k, v = _qkv()
    bias = _padding_bias()
    attention = SimilarityAttention(2, 3, num_buckets=10)
    buckets = torch.full((2, 5, 5), 7)
    out = attention(q, k, v, bias, buckets)
    plain = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
    assert torch.allclose(out, plain, atol=1e-6)


def test_learned_buckets_equal_the_explicit_loop_and_keep_padding_masked():
    q, k, v = _qkv()
    bias = _padding_bias() + torch.randn(1, 2, 5, 5)
    torch.manual_seed(0)
    attention = SimilarityAttention(2, 3, num_buckets=4, init="paper")
    with torch.no_grad():
        attention.table.normal_()
    items = torch.tensor([[-1, -1, 0, 1, 2], [3, 1, 0, 2, 4]])
    buckets = similarity_buckets(torch.randn(5, 6), items, items, num_buckets=4)
    out = attention(q, k, v, bias, buckets, chunk=2)
    ref = similarity_attention_reference(attention, q, k, v, bias, buckets)
    assert torch.allclose(out, ref, atol=1e-5)
    # a padding key's value never reaches the output
    v2 = v.clone()
    v2[0, :, :2] = 1e3
    assert torch.allclose(attention(q, k, v2, bias, buckets), out, atol=1e-5)


def test_triple_sum_embedding_and_scores_equal_the_explicit_sums():
    torch.manual_seed(0)
    emb = TripleEmbedding(3, 4, 2, d_model=6, collision_size=3)
    codes = torch.randint(0, 4, (7, 3, 2))
    tokens = join_triples(codes, 4)  # [7, 2]
    level = torch.tensor([0, 1]).expand(7, 2)
    out = emb(tokens, level)
    for i in range(7):
        for lv in range(2):
            want = emb.level.weight[lv] + sum(emb.codes[lv, s, codes[i, s, lv]] for s in range(3))
            assert torch.allclose(out[i, lv], want, atol=1e-6)
    coll = emb(torch.tensor([2]), torch.tensor([2]))
    assert torch.allclose(coll[0], emb.level.weight[2] + emb.collision.weight[2])
    hidden = torch.randn(4, 6)
    scores = emb.logits(hidden, 1, tokens[:, 1])
    want = hidden @ (out[:, 1] - emb.level.weight[1]).T
    assert torch.allclose(scores, want, atol=1e-5)


def test_full_vocabulary_and_inherited_codebooks():
    codes = torch.randint(0, 4, (9, 2, 2), generator=torch.Generator().manual_seed(0))
    dense, vocab = compact_vocabulary(join_triples(codes, 4))
    emb = TripleEmbedding(2, 4, 2, d_model=5, mode="full", vocab_sizes=[len(v) for v in vocab])
    out = emb(dense[:, 0], torch.zeros(9, dtype=torch.long))
    assert torch.allclose(out, emb.full[0].weight[dense[:, 0]] + emb.level.weight[0])
    with pytest.raises(MscgError, match="vocab_sizes"):
        TripleEmbedding(2, 4, 2, d_model=5, mode="full")
    summed = TripleEmbedding(2, 4, 2, d_model=5)
    books = torch.randn(1, 2, 4, 5)  # a shared codebook
    summed.inherit_codebooks(books)
    assert torch.equal(summed.codes[:, 0], books[0]) and torch.equal(summed.codes[:, 1], books[0])
    with pytest.raises(MscgError, match="latent_dim"):
        summed.inherit_codebooks(torch.randn(1, 2, 4, 8))


def test_token_items_follow_the_history_tokenizer_layout():
    layout = TokenLayout(["text"], [[4, 4, 3]], "text")
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 3, (6, 1, 3), generator=g)
    tokenizer = HistoryTokenizer(layout, codes, torch.ones(6, 1, dtype=torch.bool))
    history = torch.tensor([[-1, 2, -1, 5], [1, 0, 3, 4], [-1, -1, -1, 3]])
    enc = tokenizer(history)
    items = token_items(history, layout.tokens_per_item)
    assert items.shape == enc.input_ids.shape
    assert torch.equal(items >= 0, enc.attention_mask)
    rows, cols = enc.attention_mask.nonzero(as_tuple=True)
    assert torch.equal(
        tokenizer.item_tokens[items[rows, cols], cols % 3], enc.input_ids[rows, cols]
    )
    buckets = encoder_buckets(torch.randn(6, 4), history, layout.tokens_per_item, 10)
    assert buckets.shape == (3, items.shape[1], items.shape[1])
    assert (buckets[~enc.attention_mask] == 11).all()


def test_grouped_form_equals_the_token_level_form():
    q, k, v = _qkv(b=2, h=2, n=6, dk=3)  # 3 items x 2 tokens
    bias = torch.randn(1, 2, 6, 6)
    bias[..., :2] = float("-inf")  # the first item is padding
    attention = SimilarityAttention(2, 3, num_buckets=5)
    with torch.no_grad():
        attention.table.normal_()
    items = torch.tensor([[-1, 0, 1], [2, 3, 0]])
    item_buckets = similarity_buckets(torch.randn(4, 5), items, items, num_buckets=5)
    token_buckets = item_buckets.repeat_interleave(2, 1).repeat_interleave(2, 2)
    grouped = attention.forward_grouped(q, k, v, bias, item_buckets, 2)
    assert torch.allclose(grouped, attention(q, k, v, bias, token_buckets), atol=1e-5)
