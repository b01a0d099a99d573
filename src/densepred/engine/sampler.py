"""Seeded, resumable training data order for one process or many (DDP).

The training data is an endless stream: epoch e is a permutation of the dataset drawn from
(seed, e) alone, and the stream concatenates epochs 0, 1, 2, ... Optimiser step s consumes the
stream positions [s*B, (s+1)*B) where B is the *global* batch size; with W processes rank r takes
the contiguous slice [s*B + r*B/W, s*B + (r+1)*B/W). Hence:

* the data order is a pure function of (seed, step): resuming at step s needs nothing but s, and
  the batches equal those of an uninterrupted run (also when the world size changes);
* the ranks' slices of a step, concatenated in rank order, are exactly the single-process batch;
* no sample is dropped at epoch ends (a batch may span two epochs), and datasets smaller than a
  batch work.

Each position also knows its epoch, which the dataset needs to derive per-item augmentation
randomness from (seed, epoch, index) (`ShardDataset.set_epoch`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def epoch_permutation(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the dataset in `epoch`: a permutation of range(num_items) seeded by (seed, epoch)."""
    state = np.random.SeedSequence([int(seed), int(epoch), 0x5A3]).generate_state(2, dtype=np.uint32)
    gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.randperm(num_items, generator=gen)


class TrainStream:
    """Maps a stream position to (epoch, dataset index); caches the current epoch's permutation."""

    def __init__(self, num_items: int, seed: int) -> None:
        if num_items <= 0:
            raise ValueError(f"the training set is empty (0 samples); nothing to train on (seed {seed})")
        self.num_items = num_items
        self.seed = seed
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def locate(self, position: int) -> tuple[int, int]:
        """(epoch, dataset index) of stream `position`."""
        epoch, offset = divmod(int(position), self.num_items)
        if epoch != self._epoch:
            self._perm = epoch_permutation(self.num_items, self.seed, epoch)
            self._epoch = epoch
        return epoch, int(self._perm[offset])


class StreamDataset(Dataset):
    """A map-style view of `dataset` indexed by stream position (see the module docstring).

    Before reading an item it calls `dataset.set_epoch(epoch)` when the dataset has that method, so
    augmentation randomness follows the item's own epoch even inside DataLoader worker processes.
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset = dataset
        self.stream = TrainStream(len(dataset), seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, position: int) -> Any:
        epoch, index = self.stream.locate(position)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


class StepSampler(Sampler[int]):
    """Yields this rank's stream positions for steps start_step .. total_steps-1, in batch order.

    Use with `DataLoader(StreamDataset(...), batch_size=local_batch, sampler=StepSampler(...))`.
    """

    def __init__(
        self, global_batch: int, start_step: int, total_steps: int, rank: int = 0, world_size: int = 1
    ):
        if global_batch % world_size:
            raise ValueError(
                f"batch_size {global_batch} (the global batch) must be divisible by the number of "
                f"processes {world_size}"
            )
        if not 0 <= start_step <= total_steps:
            raise ValueError(f"start step {start_step} outside [0, {total_steps}]")
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.start_step = start_step
        self.total_steps = total_steps
        self.rank = rank

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.local_batch

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start_step, self.total_steps):
            first = step * self.global_batch + self.rank * self.local_batch
            yield from range(first, first + self.local_batch)
