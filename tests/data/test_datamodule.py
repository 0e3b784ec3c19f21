"""SequenceDataModule: sample counts, left padding, whole windows, unpadded DDP evaluation."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from mscg_lightning.artifacts import Manifest, write_shards
from mscg_lightning.data.datamodule import (
    LengthGroupedSampler,
    NextItemDataset,
    SequenceDataModule,
    UnpaddedDistributedSampler,
    WindowDataset,
    pad_left,
)
from mscg_lightning.errors import MscgError

# Train sequences of lengths 1, 2, 5 and 13 (item values encode user and position).
TRAIN = [[100], [200, 201], [300, 301, 302, 303, 304], list(range(400, 413))]


def flat(sequences):
    values = np.concatenate([np.array(s, dtype=np.int32) for s in sequences])
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sequences])]).astype(np.int64)
    return values, offsets


def write_prepared(root: Path, num_users: int = 7, target_mode: str = "per_item") -> None:
    """A prepared/ artifact whose train sequences are TRAIN (cycled) and eval rows simple."""
    lists = pa.list_(pa.int32())
    users = pa.array(range(num_users), pa.int32())
    train = [TRAIN[u % len(TRAIN)] for u in range(num_users)]
    write_shards(pa.table({"user_idx": users, "items": pa.array(train, lists)}), root / "train", 3)
    for split in ("valid", "test"):
        write_shards(
            pa.table(
                {
                    "user_idx": users,
                    "history": pa.array([list(range(u + 1)) for u in range(num_users)], lists),
                    "target": pa.array([1000 + u for u in range(num_users)], pa.int32()),
                }
            ),
            root / split,
            rows_per_shard=3,  # several shards: offsets of sliced list arrays are exercised
        )
    Manifest(
        "prepare",
        "t",
        extra={
            "num_items": 2000,
            "num_users": num_users,
            "max_history": 20,
            "target_mode": target_mode,
        },
    ).write(root)


def test_per_item_and_last_item_sample_counts():
    values, offsets = flat(TRAIN)
    users = np.arange(len(TRAIN))
    per_item = NextItemDataset(users, values, offsets, target_mode="per_item", max_history=3)
    assert len(per_item) == 0 + 1 + 4 + 12  # every position but the first is a target
    samples = [per_item[i] for i in range(len(per_item))]
    assert [(s["history"].tolist(), s["target"]) for s in samples[:2]] == [
        ([200], 201),
        ([300], 301),
    ]
    # History is truncated to the last max_history items before the target.
    assert samples[-1]["history"].tolist() == [409, 410, 411] and samples[-1]["target"] == 412
    last = NextItemDataset(users, values, offsets, target_mode="last_item", max_history=3)
    assert [last[i]["target"] for i in range(len(last))] == [201, 304, 412]


def test_pad_left_keeps_the_most_recent_items_at_the_right():
    out = pad_left([np.array([1, 2]), np.array([], dtype=np.int32), np.arange(6)], 4)
    assert out.tolist() == [[-1, -1, 1, 2], [-1, -1, -1, -1], [2, 3, 4, 5]]


@pytest.mark.parametrize("window", [1, 3, 4, 20])
def test_windows_cover_every_per_item_target_once(window):
    values, offsets = flat(TRAIN)
    users = np.arange(len(TRAIN))
    windows = WindowDataset(users, values, offsets, window=window)
    per_item = NextItemDataset(users, values, offsets, target_mode="per_item", max_history=window)
    got, expected = [], []
    for i in range(len(windows)):
        w = windows[i]
        assert 1 <= len(w["targets"]) <= window and len(w["history"]) == len(w["targets"])
        # Inputs are the targets shifted by one within the same user's sequence.
        seq = TRAIN[w["user_idx"]]
        start = seq.index(int(w["targets"][0]))
        assert w["history"].tolist() == seq[start - 1 : start - 1 + len(w["targets"])]
        got += [(w["user_idx"], int(t)) for t in w["targets"]]
    for i in range(len(per_item)):
        expected.append((per_item[i]["user_idx"], per_item[i]["target"]))
    assert sorted(got) == sorted(expected)
    # The last window of each sequence holds its last `window` targets with their full context.
    first = {windows[i]["user_idx"]: windows[i] for i in reversed(range(len(windows)))}
    assert first[3]["targets"].tolist() == TRAIN[3][1:][-window:]


def test_datamodule_batches_in_both_train_modes(tmp_path):
    write_prepared(tmp_path)
    dm = SequenceDataModule(str(tmp_path), batch_size=64, eval_batch_size=4, max_history=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"user_idx", "history", "target"}
    assert batch["history"].shape == (len(dm.datasets["train"]), 4)
    valid = next(iter(dm.val_dataloader()))
    assert valid["history"].tolist()[:3] == [[-1, -1, -1, 0], [-1, -1, 0, 1], [-1, 0, 1, 2]]
    assert valid["target"].tolist() == [1000, 1001, 1002, 1003]

    dm = SequenceDataModule(str(tmp_path), batch_size=64, max_history=4, train_mode="windows")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"user_idx", "history", "targets", "loss_norm"}
    assert batch["history"].shape == batch["targets"].shape == (len(dm.datasets["train"]), 4)
    # Padding is aligned: a position has a target exactly when it has an input.
    assert torch.equal(batch["history"] < 0, batch["targets"] < 0)
    # Each user's targets counted once over all windows: sum over TRAIN lengths - 1, cycled.
    expected = sum(max(len(TRAIN[u % 4]) - 1, 0) for u in range(7))
    assert int((batch["targets"] >= 0).sum()) == expected
    # loss_norm = batch_size x mean targets per window (the expected targets of a full batch).
    windows = len(dm.datasets["train"])
    assert batch["loss_norm"].item() == pytest.approx(64 * expected / windows)


def test_windows_need_per_item_targets(tmp_path):
    write_prepared(tmp_path, target_mode="last_item")
    dm = SequenceDataModule(str(tmp_path), train_mode="windows")
    with pytest.raises(MscgError, match="needs per_item targets"):
        dm.setup("fit")


@pytest.mark.parametrize("num_users", [7, 8, 1])
def test_unpadded_sampler_gives_every_user_to_exactly_one_rank(tmp_path, num_users):
    write_prepared(tmp_path, num_users=num_users)
    dm = SequenceDataModule(str(tmp_path), max_history=4)
    dm.setup("validate")
    for split in ("valid", "test"):
        dataset = dm.datasets[split]
        seen = []
        for rank in (0, 1):
            sampler = UnpaddedDistributedSampler(dataset, num_replicas=2, rank=rank)
            seen += [dataset[i]["user_idx"] for i in sampler]
            assert len(sampler) == len(list(sampler))
        assert sorted(seen) == list(range(num_users))


def test_length_grouped_sampler_is_a_grouped_permutation():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 50, 1003)
    sampler = LengthGroupedSampler(lengths, batch_size=10, group_batches=20, seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(1003))  # every sample exactly once
    batches = [first[i : i + 10] for i in range(0, 1003, 10)]
    assert len(batches[-1]) == 3  # the short batch is last: DataLoader batching stays aligned
    # Within a batch lengths are close (sorted groups of 200 out of 49 values), unlike random.
    spread = np.mean([np.ptp(lengths[b]) for b in batches[:-1]])
    random_spread = np.mean([np.ptp(lengths[rng.permutation(1003)[:10]]) for _ in range(100)])
    assert spread < random_spread / 4
    sampler.set_epoch(1)
    assert list(sampler) != first  # a new order each epoch
    sampler.set_epoch(0)
    assert list(sampler) == first  # ... that depends only on the seed and the epoch


def test_group_by_length_sorts_eval_rows_and_keeps_their_content(tmp_path):
    write_prepared(tmp_path, num_users=7)
    plain = SequenceDataModule(str(tmp_path), max_history=4)
    grouped = SequenceDataModule(str(tmp_path), max_history=4, group_by_length=True)
    plain.setup("fit")
    grouped.setup("fit")
    for split in ("valid", "test"):
        rows = {}
        for dm in (plain, grouped):
            ds = dm.datasets[split]
            rows[dm] = {
                ds[i]["user_idx"]: (ds[i]["history"].tolist(), ds[i]["target"])
                for i in range(len(ds))
            }
        assert rows[plain] == rows[grouped]
        lengths = grouped.datasets[split].sample_lengths()
        assert (np.diff(lengths) >= 0).all()
    # Train batches come from the grouped sampler and still cover every target once.
    grouped = SequenceDataModule(str(tmp_path), batch_size=2, max_history=4, group_by_length=True)
    grouped.setup("fit")
    loader = grouped.train_dataloader()
    assert isinstance(loader.sampler, LengthGroupedSampler)
    targets = sorted(t for b in loader for t in b["target"].tolist())
    ds = grouped.datasets["train"]
    assert targets == sorted(ds[i]["target"] for i in range(len(ds)))


def test_length_grouped_order_follows_the_run_seed_unless_set(tmp_path):
    write_prepared(tmp_path, num_users=40)

    def order(run_seed: int, data_seed: int | None = None) -> list[int]:
        torch.manual_seed(run_seed)  # what the stage's seed_everything(--seed) does
        dm = SequenceDataModule(
            str(tmp_path), batch_size=2, max_history=4, group_by_length=True, seed=data_seed
        )
        dm.setup("fit")
        return list(dm.train_dataloader().sampler)

    assert order(0) == order(0)
    assert order(0) != order(1)  # another --seed, another batch order
    assert order(0, data_seed=5) == order(1, data_seed=5)  # an explicit seed wins
