"""T5 model: HF weight equivalence, dual position bias, padding invariance, KV-cache steps."""

import pytest
import torch

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.genrec.losses import generative_loss
from mscg_lightning.stages.genrec.model import (
    GenRecConfig,
    GenRecT5,
    exact_bucket,
    relative_bucket,
    to_hf_t5,
)
from mscg_lightning.stages.genrec.tokens import HistoryTokenizer, TokenLayout

LAYOUT = TokenLayout(["text", "collab"], [[4, 4, 3], [3, 3, 2]], target="collab")
TINY = dict(d_model=16, num_heads=2, d_kv=8, d_ff=32, encoder_layers=2, decoder_layers=2)


def make_batch(seed: int = 0) -> tuple[HistoryTokenizer, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    n = 12
    codes = torch.stack(
        [torch.randint(0, 3, (n, 3), generator=gen), torch.randint(0, 2, (n, 3), generator=gen)], 1
    )
    present = torch.ones(n, 2, dtype=torch.bool)
    present[5, 0] = False
    tok = HistoryTokenizer(LAYOUT, codes, present)
    history = torch.tensor([[0, 1, 2, 5], [-1, 3, 4, 6], [-1, -1, 7, 8]])
    targets = torch.randint(0, 2, (3, 3), generator=gen)
    return tok, history, targets


def make_model(seed: int = 0, **kwargs: object) -> GenRecT5:
    torch.manual_seed(seed)
    cfg = GenRecConfig.from_layout(LAYOUT, dropout=0.0, **{**TINY, **kwargs})
    return GenRecT5(cfg).eval()


def test_relative_bucket_matches_transformers() -> None:
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-300, 300)[None]
    for bidirectional in (True, False):
        for buckets, dist in ((32, 128), (16, 20), (8, 12)):
            ours = relative_bucket(rel, buckets, dist, bidirectional)
            theirs = T5Attention._relative_position_bucket(rel, bidirectional, buckets, dist)
            assert torch.equal(ours, theirs)


@pytest.mark.parametrize("ffn", ["relu", "gated-gelu"])
@pytest.mark.parametrize("tie", [False, True])
def test_t5_mode_equals_transformers_t5(ffn: str, tie: bool) -> None:
    tok, history, targets = make_batch()
    model = make_model(position_bias="t5", ffn=ffn, tie_output=tie)
    enc = tok(history)
    hf = to_hf_t5(model)
    with torch.no_grad():
        ours = model(*enc, targets)
        theirs = hf(
            input_ids=enc.input_ids,
            attention_mask=enc.attention_mask.long(),
            decoder_input_ids=model.decoder_input_ids(targets),
        ).logits
    for level, (start, size) in enumerate(zip(LAYOUT.target_offsets, LAYOUT.target_sizes)):
        assert torch.allclose(
            ours[:, level, :size], theirs[:, level, start : start + size], atol=1e-4
        )
        assert torch.isneginf(ours[:, level, size:]).all()


def test_dual_bias_is_sum_of_item_and_code_biases() -> None:
    model = make_model()
    t = LAYOUT.tokens_per_item
    item_pos = torch.arange(2, -1, -1).repeat_interleave(t)
    code_pos = torch.arange(t).repeat(3)
    bias = model.encoder_bias_values(item_pos, code_pos)[0]  # [H, S, S]
    cfg = model.cfg
    assert cfg.code_buckets_exact and cfg.code_buckets == 2 * t - 1
    for q, k in ((0, 0), (1, 7), (7, 1), (3, 14), (14, 2), (5, 11), (0, 5), (5, 0)):
        rel_item = item_pos[q] - item_pos[k]
        rel_code = code_pos[k] - code_pos[q]
        expect = (
            model.item_bias.weight[
                relative_bucket(rel_item, cfg.item_buckets, cfg.item_max_distance, True)
            ]
            + model.code_bias.weight[exact_bucket(rel_code, cfg.code_buckets, t - 1)]
        )
        assert torch.allclose(bias[:, q, k], expect)
    # same code position one item apart gets the same bias wherever the pair sits
    assert torch.allclose(bias[:, 0, t], bias[:, t, 2 * t])
    assert not torch.allclose(bias[:, 0, t], bias[:, 0, t + 1])


def test_every_within_item_offset_of_a_3_modality_layout_gets_its_own_bucket() -> None:
    # text, image, collab: 3 levels + collision each = 12 tokens per item, offsets -11..11
    layout = TokenLayout(["text", "image", "collab"], [[8, 8, 8, 3]] * 3, target="collab")
    torch.manual_seed(0)
    model = GenRecT5(GenRecConfig.from_layout(layout, **TINY)).eval()
    cfg, t = model.cfg, layout.tokens_per_item
    assert (cfg.code_buckets, cfg.item_buckets, cfg.code_max_distance) == (23, 9, 11)
    with torch.no_grad():  # bucket b of the within-item bias adds b; the item bias adds 0
        model.code_bias.weight.copy_(torch.arange(23.0)[:, None].expand(-1, cfg.num_heads))
        model.item_bias.weight.zero_()
    h = 2
    item_pos = torch.arange(h - 1, -1, -1).repeat_interleave(t)
    code_pos = torch.arange(t).repeat(h)
    bias = model.encoder_bias_values(item_pos, code_pos)[0, 0]  # [S, S]
    offset = code_pos[None, :] - code_pos[:, None]  # key - query, [S, S]
    bucket_of = {}
    for rel in range(-(t - 1), t):
        values = bias[offset == rel].unique()
        assert values.numel() == 1, rel  # one bucket per offset, wherever the pair sits
        bucket_of[rel] = int(values.item())
    assert len(set(bucket_of.values())) == 2 * t - 1  # 23 offsets, 23 distinct buckets
    # T5's log buckets (the former 16 up to distance 8) merged offsets 7..11
    old = relative_bucket(torch.arange(7, 12), 16, 8, True)
    assert old.unique().numel() == 1


def test_bucket_counts_must_sum_to_32_unless_the_switch_allows_it() -> None:
    with pytest.raises(MscgError, match="check_bucket_sum"):
        GenRecConfig.from_layout(LAYOUT, item_buckets=16, **TINY)  # 16 + 11 = 27
    cfg = GenRecConfig.from_layout(LAYOUT, item_buckets=16, check_bucket_sum=False, **TINY)
    assert (cfg.item_buckets, cfg.code_buckets) == (16, 11)
    GenRecConfig.from_layout(LAYOUT, item_buckets=16, position_bias="t5", **TINY)  # unused
    wide = TokenLayout(["a", "b", "c", "d"], [[4, 4, 4, 2]] * 4, target="a")  # 31 code buckets
    with pytest.raises(MscgError, match="leave 1 of num_buckets=32"):
        GenRecConfig.from_layout(wide, **TINY)


@pytest.mark.parametrize("sizes", [[[4, 4, 4, 3]] * 3, [[4, 4, 4, 3]] * 2])
def test_former_16_plus_16_buckets_keep_their_bucketing(sizes: list) -> None:
    # checkpoints saved before exact within-item buckets name item_buckets=code_buckets=16 and
    # were trained with T5 buckets up to distance 8: they must give the same biases
    layout = TokenLayout(["a", "b", "c"][: len(sizes)], sizes, target="a")
    cfg = GenRecConfig.from_layout(layout, item_buckets=16, code_buckets=16, **TINY)
    model = GenRecT5(cfg)
    t = layout.tokens_per_item
    rel = torch.arange(-(t - 1), t)
    ours = exact_bucket(rel, 16, cfg.code_max_distance)
    if not cfg.code_buckets_exact:
        ours = relative_bucket(rel, 16, cfg.code_max_distance, True)
    assert torch.equal(ours, relative_bucket(rel, 16, 8, True))
    code_pos = torch.arange(t)
    got = model.encoder_bias_values(torch.zeros(t, dtype=torch.long), code_pos)[0]
    want = (
        model.item_bias.weight[0]
        + model.code_bias.weight[
            relative_bucket(code_pos[None, :] - code_pos[:, None], 16, 8, True)
        ]
    )
    assert torch.allclose(got, want.permute(2, 0, 1))


@pytest.mark.parametrize("position_bias", ["dual", "t5"])
def test_a_padded_row_gives_the_outputs_of_the_row_alone(position_bias: str) -> None:
    # the short rows of a batch are left-padded to the longest one: padding must change nothing
    tok, history, targets = make_batch()
    model = make_model(position_bias=position_bias)
    with torch.no_grad():
        batch = model(*tok(history), targets)
        for row in (1, 2):  # 3 and 2 valid items beside a 4-item row
            alone_history = history[row : row + 1, (history[row] >= 0)]
            alone_inputs = tok(alone_history)
            assert alone_inputs.input_ids.shape[1] < tok(history).input_ids.shape[1]
            alone = model(*alone_inputs, targets[row : row + 1])
            assert torch.allclose(batch[row], alone[0], atol=1e-5)
            enc = model.encode(*tok(history))[row, -alone_inputs.input_ids.shape[1] :]
            assert torch.allclose(enc, model.encode(*alone_inputs)[0], atol=1e-5)


def test_full_vocab_logits_hold_each_levels_logits_at_its_rows() -> None:
    tok, history, targets = make_batch()
    for tie in (False, True):
        model = make_model(tie_output=tie)
        with torch.no_grad():
            per_level = model(*tok(history), targets)
            full = model(*tok(history), targets, full_vocab=True)
        assert full.shape == (3, 3, sum(LAYOUT.target_sizes))
        for level, size in enumerate(LAYOUT.target_sizes):
            start = model.head_offsets[level]
            assert torch.allclose(full[:, level, start : start + size], per_level[:, level, :size])


def test_incremental_decoding_matches_teacher_forcing() -> None:
    tok, history, targets = make_batch()
    model = make_model()
    enc_in = tok(history)
    with torch.no_grad():
        full = model(*enc_in, targets)
        state = model.start_decoding(model.encode(*enc_in), enc_in.attention_mask)
        tokens = torch.zeros(3, 1, dtype=torch.long)
        for level in range(3):
            h = model.decode_step(state, tokens)  # [3, 1, d]
            step = model.level_logits(h[:, 0], level)
            size = LAYOUT.target_sizes[level]
            assert torch.allclose(step, full[:, level, :size], atol=1e-5)
            tokens = model.code_token_ids(targets[:, level : level + 1], level)


def test_a_few_steps_of_training_lower_the_loss() -> None:
    tok, history, targets = make_batch()
    torch.manual_seed(0)
    model = GenRecT5(GenRecConfig.from_layout(LAYOUT, **TINY))  # dropout 0.1, train mode
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    enc = tok(history, mask_prob=0.75)
    losses = []
    for _ in range(30):
        loss = generative_loss(model(*enc, targets), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_activation_checkpointing_gives_the_same_loss_and_gradients() -> None:
    tok, history, targets = make_batch()
    enc = tok(history)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        cfg = GenRecConfig.from_layout(LAYOUT, **TINY, activation_checkpointing=checkpointing)
        model = GenRecT5(cfg)  # train mode, dropout 0.1
        assert model.training and cfg.dropout > 0
        torch.manual_seed(1)  # same dropout masks in both runs
        loss = generative_loss(model(*enc, targets), targets)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = grads
    assert torch.equal(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
