"""Token layout, history tokenisation, missing modalities and modality masking."""

import pytest
import torch

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.genrec.tokens import (
    HistoryTokenizer,
    TokenLayout,
    stack_modality_codes,
)


def small_layout() -> TokenLayout:
    # text: 2 levels + collision; collab: 1 level + collision
    return TokenLayout(["text", "collab"], [[4, 3, 2], [5, 2]], target="collab")


def test_layout_ids_by_hand() -> None:
    lay = small_layout()
    assert lay.offsets == ((1, 5, 8), (10, 15))
    assert lay.tokens_per_item == 5
    assert lay.mask_ids == (17, 18, 19, 20, 21)
    assert lay.vocab_size == 22
    assert lay.target_offsets == (10, 15) and lay.target_sizes == (5, 2)
    assert lay.modality_of_position == (0, 0, 0, 1, 1)
    with pytest.raises(MscgError, match="target modality"):
        TokenLayout(["text"], [[4, 2]], target="image")


def make_tokenizer() -> HistoryTokenizer:
    lay = small_layout()
    tables = {
        "text": (torch.tensor([0, 1, 2]), torch.tensor([[3, 2, 1], [0, 0, 0], [1, 2, 0]])),
        "collab": (torch.tensor([0, 2, 3]), torch.tensor([[4, 1], [0, 0], [2, 1]])),
    }
    codes, present = stack_modality_codes(lay, 4, tables)
    assert present.tolist() == [[True, True], [True, False], [True, True], [False, True]]
    return HistoryTokenizer(lay, codes, present)


def test_history_tokens_right_aligned_with_missing_modalities() -> None:
    tok = make_tokenizer()
    # row 0: items 0, 1 then padding; row 1: padding, item 3
    enc = tok(torch.tensor([[0, 1, -1], [-1, -1, 3]]))
    item0 = [1 + 3, 5 + 2, 8 + 1, 10 + 4, 15 + 1]
    item1 = [1 + 0, 5 + 0, 8 + 0, 20, 21]  # collab missing -> its mask tokens
    item3 = [17, 18, 19, 10 + 2, 15 + 1]  # text missing
    # the first column is padding in every row after right-alignment: it is dropped
    assert enc.input_ids.tolist() == [item0 + item1, [0] * 5 + item3]
    assert enc.attention_mask.tolist() == [[True] * 10, [False] * 5 + [True] * 5]
    assert enc.item_pos.tolist() == [1] * 5 + [0] * 5
    assert enc.code_pos.tolist() == [0, 1, 2, 3, 4] * 2
    assert tok.target_codes(torch.tensor([0, 1, 3])).tolist() == [[4, 1], [-1, -1], [2, 1]]


def test_all_padding_columns_are_dropped_but_every_row_keeps_its_items() -> None:
    tok = make_tokenizer()
    padded = tok(torch.tensor([[-1, -1, -1, 3, -1], [-1, 0, -1, -1, 2]]))
    alone = [tok(torch.tensor([[3]])), tok(torch.tensor([[0, 2]]))]
    assert padded.input_ids.shape == (2, 10)
    assert padded.input_ids[0, 5:].tolist() == alone[0].input_ids[0].tolist()
    assert padded.input_ids[1].tolist() == alone[1].input_ids[0].tolist()
    assert padded.item_pos.tolist() == alone[1].item_pos.tolist()
    empty = tok(torch.full((3, 4), -1))  # no history at all: one masked-out item position
    assert empty.input_ids.shape == (3, 5) and not empty.attention_mask.any()


def test_eval_masking_of_chosen_modalities() -> None:
    tok = make_tokenizer()
    enc = tok(torch.tensor([[0, 2]]), masked_modalities=["collab"])
    ids = enc.input_ids.view(2, 5)
    assert ids[:, 3:].tolist() == [[20, 21], [20, 21]]
    assert ids[:, :3].tolist() == [[4, 7, 9], [2, 7, 8]]  # text untouched
    with pytest.raises(MscgError, match="image"):
        tok(torch.tensor([[0]]), masked_modalities=["image"])


def test_random_masking_hides_one_modality_per_item_with_probability_p() -> None:
    tok = make_tokenizer()
    history = torch.tensor([[0, 2] * 50] * 40)  # items with both modalities
    gen = torch.Generator().manual_seed(0)
    ids = tok(history, mask_prob=1.0, generator=gen).input_ids.view(40, 100, 5)
    is_mask = ids >= 17
    text_masked = is_mask[..., :3].all(-1)
    collab_masked = is_mask[..., 3:].all(-1)
    assert (text_masked ^ collab_masked).all()  # exactly one modality, never both
    assert 0.4 < text_masked.float().mean() < 0.6  # chosen uniformly
    ids = tok(history, mask_prob=0.75, generator=gen).input_ids.view(40, 100, 5)
    rate = (ids >= 17).any(-1).float().mean().item()
    assert abs(rate - 0.75) < 0.03
    assert not (tok(history).input_ids >= 17).any()  # p = 0: nothing masked


def test_code_out_of_range_names_modality_and_item() -> None:
    lay = small_layout()
    codes, present = stack_modality_codes(
        lay,
        2,
        {
            "text": (torch.tensor([0, 1]), torch.tensor([[0, 0, 0], [0, 3, 0]])),
            "collab": (torch.tensor([0]), torch.tensor([[0, 0]])),
        },
    )
    with pytest.raises(MscgError, match="item 1, modality 'text', position 1"):
        HistoryTokenizer(lay, codes, present)
    with pytest.raises(MscgError, match="expected \\[n, 2\\]"):
        stack_modality_codes(
            lay,
            2,
            {
                "text": (torch.tensor([0]), torch.zeros(1, 3)),
                "collab": (torch.tensor([0]), torch.zeros(1, 3)),
            },
        )
