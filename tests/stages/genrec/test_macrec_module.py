"""MACRec generator: the composed T5's per-modality decoding, the losses against per-row
references, implicit alignment pairing, and ranking against a brute-force ensemble."""

import math

import pytest
import torch

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.genrec.losses import target_log_probs
from mscg_lightning.stages.genrec.macrec_module import MacrecModule
from mscg_lightning.stages.genrec.macrec_tasks import TASK_NAMES
from mscg_lightning.stages.genrec.tokens import EncoderInputs

TINY = dict(d_model=16, num_heads=2, d_kv=8, d_ff=32, encoder_layers=1, decoder_layers=1)
N = 14


def _unique(sem: torch.Tensor) -> torch.Tensor:
    """Append a collision level numbering the items that share a tuple."""
    seen: dict[tuple, int] = {}
    coll = []
    for row in sem.tolist():
        coll.append(seen.get(tuple(row), 0))
        seen[tuple(row)] = coll[-1] + 1
    return torch.cat([sem, torch.tensor(coll)[:, None]], 1)


def catalogue() -> tuple[dict, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    text = _unique(torch.randint(0, 4, (N, 2), generator=g))
    image = _unique(torch.randint(0, 3, (N, 2), generator=g))
    codes = torch.stack([text, image], 1)
    present = torch.ones(N, 2, dtype=torch.bool)
    present[3, 1] = False  # item 3 has no image codes
    sizes = [[4, 4, int(text[:, 2].max()) + 1], [3, 3, int(image[:, 2].max()) + 1]]
    return {"modalities": ["text", "image"], "vocab_sizes": sizes}, codes, present


def make(**kwargs: object) -> MacrecModule:
    torch.manual_seed(0)
    layout, codes, present = catalogue()
    args = dict(TINY, dropout=0.0, prompt_tokens=2, num_beams=20, top_k=10, ks=(1, 5, 10))
    module = MacrecModule(token_layout=layout, **{**args, **kwargs})
    module.set_catalogue(codes, present)
    module.log = lambda *a, **k: None  # no trainer attached
    return module.eval()


HISTORY = torch.tensor([[0, 1, 2], [-1, 4, 5], [6, 7, 8], [-1, -1, 10]])
TARGET = torch.tensor([11, 12, 13, 3])  # item 3: no image codes


@pytest.mark.parametrize("modality", ["text", "image"])
def test_teacher_forcing_equals_step_decoding_of_the_modality(modality):
    # The shifted decoder inputs and the column slice of training must be what beam search
    # feeds and scores step by step.
    module = make()
    gen, m = module.generator, ("text", "image").index(modality)
    task = torch.full((4,), TASK_NAMES.index("seqrec" if m == 0 else "seqimage"))
    tb = module.tasks(HISTORY, torch.tensor([11, 12, 13, 10]), task)
    codes = tb.target_codes
    enc = gen.encode(tb.encoder)
    logits = gen.logits(enc, tb.encoder.attention_mask, codes, tb.target_modality)
    view = gen.view(modality)
    state = view.start_decoding(enc, tb.encoder.attention_mask)
    tokens = torch.zeros(4, 1, dtype=torch.long)
    for level, size in enumerate(view.cfg.target_sizes):
        step = view.level_logits(view.decode_step(state, tokens), level)[:, 0]
        assert torch.allclose(step, logits[:, level, :size], atol=1e-5)
        assert torch.isinf(logits[:, level, size:]).all()
        tokens = view.code_token_ids(codes[:, level : level + 1], level)
    full = gen.logits(enc, tb.encoder.attention_mask, codes, tb.target_modality, full_vocab=True)
    rows = gen.full_vocab_targets(codes, tb.target_modality)
    assert torch.allclose(
        full.gather(2, rows[..., None])[..., 0],
        logits.gather(2, codes[..., None])[..., 0],
        atol=1e-5,
    )


def _row_nll(module, tb, mode):
    """Per-row reference NLL, one row at a time, each level normalised by hand."""
    gen, total, count = module.generator, 0.0, 0
    for b in range(tb.target_codes.shape[0]):
        codes = tb.target_codes[b : b + 1]
        if (codes < 0).any():
            continue
        m = int(tb.target_modality[b])
        e = tb.encoder
        inputs = EncoderInputs(
            e.input_ids[b : b + 1], e.attention_mask[b : b + 1], e.item_pos, e.code_pos
        )
        enc = gen.encode(inputs)
        full = gen.logits(enc, inputs.attention_mask, codes, tb.target_modality[b : b + 1], True)[0]
        index = module.indexes[("text", "image")[m]]
        for level in range(codes.shape[1]):
            start = gen.t5.head_offsets[level] + int(gen.column[m, level])
            own = full[level, start : start + int(gen.sizes[m, level])]
            if mode == "full_vocab":
                z = full[level]
            elif mode == "per_level":
                z = own
            else:
                z = own[index.allowed(codes[:, :level])[0]]
            total += float(torch.logsumexp(z, 0) - own[codes[0, level]])
            count += 1
    return total / count


@pytest.mark.parametrize("mode", ["full_vocab", "constrained", "per_level"])
def test_task_loss_matches_a_per_row_reference(mode):
    module = make(constrained_training=mode)
    task = torch.arange(4) % len(TASK_NAMES) + torch.tensor([0, 1, 2, 0])  # mixed targets
    tb = module.tasks(HISTORY, TARGET, task)
    loss, rows = module.task_loss(tb)
    assert rows == int((tb.target_codes >= 0).all(1).sum())
    assert float(loss.detach()) == pytest.approx(_row_nll(module, tb, mode), rel=1e-4)


def test_rows_whose_target_lacks_the_modality_leave_the_loss():
    module = make()
    seqimage = torch.full((4,), TASK_NAMES.index("seqimage"))
    tb = module.tasks(HISTORY, TARGET, seqimage)
    assert (tb.target_codes[3] == -1).all()  # item 3 has no image codes
    _, rows = module.task_loss(tb)
    assert rows == 3


def test_implicit_loss_pairs_each_item_with_its_own_image_codes():
    # Reference: every distinct target item encoded alone, text and image, then a loop InfoNCE.
    module = make(implicit_tau=0.5)
    target = torch.tensor([5, 2, 5, 3, 7])  # 5 twice; 3 has no image: left out
    loss = module.implicit_loss(target)
    gen, tasks = module.generator, module.tasks
    pooled = {}
    for item in (2, 5, 7):
        for modality in ("text", "image"):
            inputs = tasks.item_inputs(torch.tensor([item]), modality)
            pooled[item, modality] = gen.encode(inputs)[0].mean(0)
    items = [2, 5, 7]

    def one(a, b):
        total = 0.0
        for i in items:
            s = [float(pooled[i, a] @ pooled[j, b]) / 0.5 for j in items]
            total += -(s[items.index(i)] - math.log(sum(math.exp(x) for x in s)))
        return total / len(items)

    assert float(loss) == pytest.approx(one("text", "image") + one("image", "text"), rel=1e-4)
    assert float(module.implicit_loss(torch.tensor([3, 3]))) == 0.0


def test_training_step_reaches_the_encoder_through_the_implicit_loss():
    module = make(implicit_weight=1.0).train()
    module.generator.t5.embed.weight.grad = None
    module.implicit_loss(TARGET).backward()
    grad = module.generator.t5.embed.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    module.zero_grad()
    loss = module.training_step(
        {"history": HISTORY, "target": TARGET, "user_idx": torch.arange(4)}, 0
    )
    loss.backward()
    assert torch.isfinite(loss) and module.generator.t5.head.weight.grad.abs().sum() > 0


def _brute_scores(module, modality):
    """Every catalogue item's constrained sequence log-probability for each history."""
    gen, index = module.generator, module.indexes[modality]
    m = ("text", "image").index(modality)
    items = index.sorted_items
    task = TASK_NAMES.index("seqrec" if m == 0 else "seqimage")
    out = []
    for b in range(HISTORY.shape[0]):
        hist = HISTORY[b : b + 1].expand(len(items), -1)
        tb = module.tasks(hist, items, torch.full((len(items),), task))
        enc = gen.encode(tb.encoder)
        codes = tb.target_codes
        logits = gen.logits(enc, tb.encoder.attention_mask, codes, tb.target_modality)
        allowed = torch.zeros(logits.shape, dtype=torch.bool)
        allowed[..., : index.permissible(codes).shape[-1]] = index.permissible(codes)
        scores = target_log_probs(logits, codes, allowed).sum(1)
        out.append(dict(zip(items.tolist(), scores.tolist())))
    return out


@pytest.mark.parametrize("rule", ["mean", "mql4grec"])
def test_rank_equals_a_brute_force_average_over_every_item(rule):
    # 20 beams >= 14 items: beam search is exhaustive, so the ensemble must equal averaging
    # every item's two brute-force scores (an item without image codes takes the image list's
    # lowest score, "floor"; mql4grec: +1 for items in both lists, which here is every item
    # with both modalities).
    module = make(constrained_training="constrained", ensemble_rule=rule, top_k=N)
    with torch.no_grad():
        text, image = _brute_scores(module, "text"), _brute_scores(module, "image")
        items, scores = module.rank(HISTORY)
    for b in range(HISTORY.shape[0]):
        t, v = text[b], image[b]
        floor = min(v.values())
        if rule == "mean":
            ref = {i: (t[i] + v.get(i, floor)) / 2 for i in t}
        else:
            ref = {i: (t[i] + v[i]) / 2 + 1 if i in v else t[i] for i in t}
        best = sorted(ref, key=lambda i: -ref[i])  # the whole catalogue
        assert items[b].tolist() == best
        assert scores[b].tolist() == pytest.approx([ref[i] for i in best], abs=1e-4)


def test_single_modality_inference_and_bad_switches():
    module = make(inference="image", constrained_training="constrained")
    with torch.no_grad():
        items, _ = module.rank(HISTORY)
    assert 3 not in items.tolist()[0]  # item 3 has no image codes
    layout, *_ = catalogue()
    with pytest.raises(MscgError, match="seqimage"):
        MacrecModule(token_layout=layout, **TINY, tasks=["seqrec"], inference="ensemble")
    with pytest.raises(MscgError, match="tasks"):
        MacrecModule(token_layout=layout, **TINY, tasks=["seqrec", "nope"])
    bad = {**layout, "vocab_sizes": [[4, 4, 2], [3, 2]]}
    with pytest.raises(MscgError, match="levels"):
        MacrecModule(token_layout=bad, **TINY)


def test_task_sampling_all_trains_every_task_of_every_row():
    module = make(task_sampling="all", implicit_weight=0.0)
    batch = {"history": HISTORY, "target": TARGET, "user_idx": torch.arange(4)}
    seen = []
    original = module.task_loss

    def spy(tb):
        seen.append(tb.task)
        return original(tb)

    module.task_loss = spy
    loss = module.training_step(batch, 0)
    assert sorted(seen[0].tolist()) == sorted(list(range(len(TASK_NAMES))) * 4)
    rows = [module.tasks(HISTORY, TARGET, torch.full((4,), t)) for t in range(len(TASK_NAMES))]
    losses = [original(tb) for tb in rows]
    ref = sum(float(lo) * n for lo, n in losses) / sum(n for _, n in losses)
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-5)
