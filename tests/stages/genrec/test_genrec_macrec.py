"""MACRec generator pieces: task construction, implicit alignment pairing, modality ensemble."""

import math
import random

import pytest
import torch

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.genrec.ensemble import ensemble
from mscg_lightning.stages.genrec.macrec_alignment import implicit_alignment_loss, mean_pool
from mscg_lightning.stages.genrec.macrec_tasks import TASK_NAMES, MacrecTasks
from mscg_lightning.stages.genrec.tokens import PAD_ID, TokenLayout, stack_modality_codes

N, P = 6, 3  # items; 2 levels + collision level


def _tasks(tasks=TASK_NAMES, prompt_tokens=2):
    layout = TokenLayout(["text", "image"], [[4, 4, 2], [5, 5, 3]], target="text")
    g = torch.Generator().manual_seed(0)
    text = torch.stack(
        [
            torch.randint(0, 4, (N,), generator=g),
            torch.randint(0, 4, (N,), generator=g),
            torch.zeros(N, dtype=torch.long),
        ],
        1,
    )
    image = torch.stack(
        [
            torch.randint(0, 5, (N,), generator=g),
            torch.randint(0, 5, (N,), generator=g),
            torch.arange(N) % 3,
        ],
        1,
    )
    codes, present = stack_modality_codes(
        layout, N, {"text": (torch.arange(N), text), "image": (torch.arange(N - 1), image[:-1])}
    )
    return (
        MacrecTasks(layout, codes, present, tasks, prompt_tokens=prompt_tokens),
        layout,
        text,
        image,
    )


def _ids(layout, m, codes):
    return [layout.offsets[m][p] + int(c) for p, c in enumerate(codes)]


def test_each_task_builds_its_input_and_target():
    tasks, layout, text, image = _tasks()
    history = torch.tensor([[-1, 0, 1]] * 6)
    target = torch.full((6,), 2)
    task = torch.arange(6)
    out = tasks(history, target, task)
    enc = out.encoder
    assert enc.input_ids.shape == (6, 2 * P + 2)
    for row, name in enumerate(TASK_NAMES):
        ids = enc.input_ids[row].tolist()
        mask = enc.attention_mask[row].tolist()
        src = 0 if name in ("seqrec", "item2image", "seqitem2image") else 1
        tgt = 0 if name in ("seqrec", "image2item", "seqimage2item") else 1
        table = text if src == 0 else image
        if name in ("item2image", "image2item"):
            expected = [PAD_ID] * P + _ids(layout, src, table[2])
            assert mask[:P] == [False] * P
        else:
            expected = _ids(layout, src, table[0]) + _ids(layout, src, table[1])
        prompt = [layout.vocab_size + row * 2, layout.vocab_size + row * 2 + 1]
        assert ids == expected + prompt
        assert out.target_modality[row] == tgt
        assert out.target_codes[row].tolist() == (text if tgt == 0 else image)[2].tolist()
    assert enc.item_pos.tolist() == [2, 2, 2, 1, 1, 1, 0, 0]
    assert enc.code_pos.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert tasks.vocab_size == layout.vocab_size + 12


def test_padding_right_aligns_and_missing_modality_is_masked():
    tasks, layout, text, image = _tasks(prompt_tokens=0)
    out = tasks(torch.tensor([[5, -1], [-1, 1]]), torch.tensor([5, 0]), torch.tensor([1, 1]))
    enc = out.encoder
    assert enc.input_ids.shape == (2, P)  # one real item per row after trimming
    start = layout.positions_per_modality[0]
    assert enc.input_ids[0].tolist() == list(layout.mask_ids[start : start + P])  # no image
    assert enc.input_ids[1].tolist() == _ids(layout, 1, image[1])
    assert out.target_codes[0].tolist() == [-1, -1, -1]  # item 5 has no image target
    ids = tasks.target_token_ids(out.target_codes, out.target_modality)
    assert ids[0].tolist() == [PAD_ID] * 3 and ids[1].tolist() == _ids(layout, 1, image[0])


def test_sampling_draws_only_configured_tasks():
    tasks, *_ = _tasks(tasks=("seqrec", "seqimage"))
    drawn = tasks.sample(200, torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == {0, 1}
    with pytest.raises(MscgError):
        _tasks(tasks=("seqrec", "nope"))


def _loop_implicit(et, ev, tau):
    def one(a, b):
        total = 0.0
        for i in range(len(a)):
            s = [float(a[i] @ b[j]) / tau for j in range(len(b))]
            total += -(s[i] - math.log(sum(math.exp(x) for x in s)))
        return total / len(a)

    return one(et, ev) + one(ev, et)


def test_implicit_alignment_pairs_each_item_with_its_own_image():
    g = torch.Generator().manual_seed(0)
    st, sv = torch.randn(5, 3, 4, generator=g), torch.randn(5, 4, 4, generator=g)
    mt = torch.tensor([[1, 1, 0]] * 5, dtype=torch.bool)
    mv = torch.ones(5, 4, dtype=torch.bool)
    loss = implicit_alignment_loss(st, mt, sv, mv, tau=0.5)
    et = torch.stack([st[i, :2].mean(0) for i in range(5)])
    ev = torch.stack([sv[i].mean(0) for i in range(5)])
    assert torch.allclose(mean_pool(st, mt), et, atol=1e-6)
    assert float(loss) == pytest.approx(_loop_implicit(et, ev, 0.5), rel=1e-5)
    shifted = implicit_alignment_loss(st, mt, sv.roll(1, 0), mv, tau=0.5)
    assert float(shifted) != pytest.approx(float(loss), rel=1e-3)


def test_item_inputs_hold_each_items_codes():
    tasks, layout, text, image = _tasks()
    enc = tasks.item_inputs(torch.tensor([3, 1]), "image")
    assert enc.input_ids.tolist() == [_ids(layout, 1, image[3]), _ids(layout, 1, image[1])]
    assert bool(enc.attention_mask.all())


def _reference(ia, sa, ib, sb, k, rule, missing):
    a = {int(i): float(s) for i, s in zip(ia, sa) if i >= 0}
    b = {int(i): float(s) for i, s in zip(ib, sb) if i >= 0}
    fa, fb = (min(a.values()) if a else None), (min(b.values()) if b else None)
    scored = []
    for pos, item in enumerate(list(a) + [i for i in b if i not in a]):
        if rule == "mql4grec":
            s = (a[item] + b[item]) / 2 + 1 if item in a and item in b else a.get(item, b.get(item))
        else:
            x = a.get(item, fa if missing == "floor" and fa is not None else b.get(item))
            y = b.get(item, fb if missing == "floor" and fb is not None else a.get(item))
            s = (x + y) / 2
        scored.append((-s, pos, item))
    return [item for _, _, item in sorted(scored)[:k]]


@pytest.mark.parametrize(
    "rule,missing", [("mean", "floor"), ("mean", "own"), ("mql4grec", "floor")]
)
def test_ensemble_matches_plain_python(rule, missing):
    rng = random.Random(0)
    rows_a, rows_b, sa, sb = [], [], [], []
    for r in range(30):
        ka = rng.randint(0, 8) if r % 7 else 0
        a = rng.sample(range(12), ka) + [-1] * (8 - ka)
        b = rng.sample(range(12), 6) + [-1] * 2
        rows_a.append(a)
        rows_b.append(b)
        sa.append(sorted([-rng.random() * 5 for _ in range(8)], reverse=True))
        sb.append(sorted([-rng.random() * 5 for _ in range(8)], reverse=True))
    ia, ib = torch.tensor(rows_a), torch.tensor(rows_b)
    ta, tb = torch.tensor(sa), torch.tensor(sb)
    out = ensemble(ia, ta, ib, tb, top_k=10, rule=rule, missing=missing)
    for r in range(30):
        ref = _reference(rows_a[r], sa[r], rows_b[r], sb[r], 10, rule, missing)
        got = [i for i in out.items[r].tolist() if i >= 0]
        assert got == ref
        assert len(set(got)) == len(got)


def test_mql4grec_bonus_lifts_a_common_item_but_mean_does_not():
    ia, sa = torch.tensor([[1, 2]]), torch.tensor([[-0.1, -0.5]])
    ib, sb = torch.tensor([[3, 2]]), torch.tensor([[-0.2, -0.5]])
    assert ensemble(ia, sa, ib, sb, top_k=3, rule="mql4grec").items[0, 0] == 2
    assert ensemble(ia, sa, ib, sb, top_k=3, rule="mean").items[0].tolist() == [1, 3, 2]
