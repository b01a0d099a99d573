"""The training data order: seeded, resumable from the step alone, split over ranks without loss."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from densepred.engine.sampler import StepSampler, StreamDataset, TrainStream, epoch_permutation


class Recorder:
    """A dataset whose items say which index they are and which epoch they were read in."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.epoch = -1

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        return {"index": torch.tensor(index), "epoch": torch.tensor(self.epoch)}


def batches(n: int, batch: int, start: int, total: int, rank: int = 0, world: int = 1, seed: int = 3):
    sampler = StepSampler(batch, start, total, rank, world)
    loader = DataLoader(StreamDataset(Recorder(n), seed), batch_size=sampler.local_batch, sampler=sampler)
    return [(b["index"].tolist(), b["epoch"].tolist()) for b in loader]


def test_each_epoch_is_a_seeded_permutation():
    p = epoch_permutation(10, seed=3, epoch=0)
    assert sorted(p.tolist()) == list(range(10))
    assert torch.equal(p, epoch_permutation(10, seed=3, epoch=0))
    assert not torch.equal(p, epoch_permutation(10, seed=3, epoch=1))
    assert not torch.equal(p, epoch_permutation(10, seed=4, epoch=0))


def test_stream_covers_every_item_once_per_epoch_and_batches_span_epochs():
    got = batches(n=5, batch=4, start=0, total=5)  # 20 positions = 4 epochs of 5
    flat = [i for idx, _ in got for i in idx]
    epochs = [e for _, ep in got for e in ep]
    for e in range(4):
        assert sorted(flat[5 * e : 5 * e + 5]) == list(range(5))
        assert epochs[5 * e : 5 * e + 5] == [e] * 5
    assert got[1][1] == [0, 1, 1, 1]  # the second batch starts in epoch 0 and ends in epoch 1


def test_resume_from_step_equals_uninterrupted_order():
    full = batches(n=7, batch=4, start=0, total=9)
    assert batches(n=7, batch=4, start=5, total=9) == full[5:]


def test_ranks_split_the_global_batch_contiguously():
    single = batches(n=9, batch=4, start=0, total=6)
    ranks = [batches(n=9, batch=4, start=0, total=6, rank=r, world=2) for r in range(2)]
    for step in range(6):
        assert ranks[0][step][0] + ranks[1][step][0] == single[step][0]


def test_dataset_smaller_than_batch():
    got = batches(n=3, batch=8, start=0, total=2)
    assert len(got) == 2 and all(len(idx) == 8 for idx, _ in got)


def test_bad_settings_are_errors():
    with pytest.raises(ValueError, match="divisible by the number of processes 3"):
        StepSampler(8, 0, 10, 0, 3)
    with pytest.raises(ValueError, match="start step 11"):
        StepSampler(8, 11, 10)
    with pytest.raises(ValueError, match="empty"):
        TrainStream(0, seed=0)
