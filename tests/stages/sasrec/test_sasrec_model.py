"""SASRec nn.Module: shapes, causality, padding invariance, history masking, and that it learns."""

import pytest
import torch
import torch.nn.functional as F

from mscg_lightning.data.datamodule import trim_left_padding
from mscg_lightning.stages.sasrec.model import SASRec
from mscg_lightning.stages.sasrec.module import mask_items


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors: a second thread only adds contention on a shared CPU (30x slower here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_forward_shapes_and_scores():
    model = SASRec(num_items=30, hidden_size=16, num_heads=2, inner_size=32, max_len=8).eval()
    history = torch.tensor([[-1, -1, -1, 3, 4, 5, 6, 7], [-1] * 7 + [29]])
    hidden = model(history)
    assert hidden.shape == (2, 8, 16)
    assert torch.isfinite(hidden).all()  # padding rows must not turn into NaN
    assert model.last_hidden(history).shape == (2, 16)
    assert model.scores(model.last_hidden(history)).shape == (2, 30)
    # The exported table is the embedding without the padding row: row i is item_idx i.
    assert model.item_table.shape == (30, 16)
    assert torch.equal(model.item_table[5], model.item_emb.weight[6])
    assert torch.equal(model.item_emb.weight[0], torch.zeros(16))


def test_later_items_do_not_change_earlier_positions():
    torch.manual_seed(0)
    model = SASRec(num_items=50, hidden_size=16, num_heads=2, inner_size=32, max_len=10).eval()
    history = torch.randint(0, 50, (3, 10))
    history[:, :2] = -1
    changed = history.clone()
    changed[:, 6:] = (changed[:, 6:] + 7) % 50
    with torch.no_grad():
        a, b = model(history), model(changed)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-3)


def test_padding_length_and_padded_content_do_not_matter():
    torch.manual_seed(0)
    model = SASRec(num_items=40, hidden_size=16, num_heads=1, inner_size=32, max_len=12).eval()
    short = torch.tensor([[3, 9, 27, 4]])
    long = torch.cat([torch.full((1, 8), -1), short], dim=1)
    with torch.no_grad():
        assert torch.allclose(model.last_hidden(short), model.last_hidden(long), atol=1e-5)
        # A real item hidden behind padding would change the output: padding is really masked.
        leaked = long.clone()
        leaked[0, 7] = 11
        assert not torch.allclose(model.last_hidden(leaked), model.last_hidden(long), atol=1e-3)


def test_trim_left_padding_drops_only_all_padding_columns_and_changes_no_output():
    history = torch.tensor([[-1, -1, -1, 4, 5], [-1, -1, 2, 3, 1]])
    targets = history + 10
    trimmed, cut = trim_left_padding(history, targets)
    assert trimmed.tolist() == [[-1, 4, 5], [2, 3, 1]]
    assert torch.equal(cut, trimmed + 10)
    # An all-padding batch keeps one column (a model needs at least one position).
    assert trim_left_padding(torch.full((2, 4), -1))[0].shape == (2, 1)
    model = SASRec(num_items=10, hidden_size=16, num_heads=2, inner_size=32, max_len=5).eval()
    with torch.no_grad():
        assert torch.allclose(model(history)[:, 2:], model(trimmed), atol=1e-5)


def test_window_positions_equal_per_item_prefixes():
    # Whole-window training is per-item training: position t of a window gives the output of
    # the prefix that ends at t, fed alone (left-padded) as a per-item sample would be.
    torch.manual_seed(0)
    model = SASRec(num_items=30, hidden_size=16, num_heads=2, inner_size=32, max_len=8).eval()
    window = torch.tensor([[-1, -1, 5, 9, 2, 17, 3, 11]])
    with torch.no_grad():
        hidden = model(window)
        for t in range(2, 8):
            prefix = torch.full((1, 8), -1)
            prefix[0, 8 - (t - 1) :] = window[0, 2 : t + 1]
            assert torch.allclose(hidden[0, t], model.last_hidden(prefix)[0], atol=1e-5)


def test_mask_items_masks_history_but_not_padding():
    scores = torch.zeros(2, 5)
    mask_items(scores, torch.tensor([[-1, 1, 3], [-1, -1, 0]]))
    inf = float("-inf")
    assert scores.tolist() == [[0, inf, 0, inf, 0], [inf, 0, 0, 0, 0]]


def test_learns_the_successor_pattern():
    # Item i is always followed by item i+1 (mod N): recall@1 must approach 1.
    torch.manual_seed(0)
    num_items, length = 40, 8
    model = SASRec(
        num_items,
        hidden_size=32,
        num_layers=1,
        num_heads=1,
        inner_size=64,
        dropout=0.1,
        max_len=length,
    )
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(150):
        start = torch.randint(0, num_items, (64, 1))
        seq = (start + torch.arange(length + 1)) % num_items
        hidden = model(seq[:, :-1])  # every position is trained: whole windows
        loss = F.cross_entropy(model.scores(hidden).reshape(-1, num_items), seq[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    history = torch.arange(num_items)[:, None] + torch.arange(-3, 1)  # 4 items ending at i
    history = history % num_items
    with torch.no_grad():
        top1 = model.scores(model.last_hidden(history)).argmax(dim=1)
    recall1 = (top1 == (torch.arange(num_items) + 1) % num_items).float().mean().item()
    assert recall1 >= 0.95
