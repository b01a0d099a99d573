"""What every streaming meter shares: its summable state, reset, merge, DDP sync and input checks.

A meter accumulates *sufficient statistics* (confusion matrices, histograms, sums and counts) in a
dict of tensors, `self._state`, and turns them into metrics only in `compute()`. Every entry of the
state is summable across data shards, so a dataset split over processes (DDP) or over several
passes gives exactly the same totals as one pass:

    meter.state()          -> dict[str, Tensor], a copy of the statistics
    meter.merge(state)     adds another meter's statistics (same configuration) into this one
    meter.sync(group)      all-reduces (sums) the statistics over a torch.distributed process group

`sync()` replaces the local statistics with the global ones, so call it once, after the last
`update()` and before `compute()`, on every rank; a second `sync()` or an `update()` after it would
count data twice and raises instead (call `reset()` to start again). Without an initialised
process group `sync()` does nothing. A DistributedSampler that pads the dataset to a multiple of
the world size makes the padded images count twice: that is the sampler's business, not the meter's.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor


class Meter:
    """Base class of the streaming meters (see the module docstring for the state protocol)."""

    def __init__(self) -> None:
        self._state: dict[str, Tensor] = {}
        self._synced = False
        self.reset()

    # -- to implement -------------------------------------------------------------------------------
    def _initial_state(self) -> dict[str, Tensor]:
        """Zeroed statistics (on the CPU; they follow the device of the updates)."""
        raise NotImplementedError

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Accumulate the statistics of one batch."""
        raise NotImplementedError

    def compute(self) -> dict:
        """Metrics from the statistics accumulated so far."""
        raise NotImplementedError

    # -- state protocol -----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The meter's class name, used in every error message."""
        return type(self).__name__

    def reset(self) -> None:
        """Forget everything accumulated."""
        self._state = self._initial_state()
        self._synced = False

    def state(self) -> dict[str, Tensor]:
        """A copy of the summable statistics (see the module docstring)."""
        return {key: value.clone() for key, value in self._state.items()}

    def merge(self, other: Mapping[str, Tensor]) -> None:
        """Add the statistics `other` (from `state()` of an identically configured meter)."""
        if set(other) != set(self._state):
            raise ValueError(
                f"{self.name}: cannot merge a state with keys {sorted(other)}; expected {sorted(self._state)}"
            )
        for key, mine in self._state.items():
            theirs = other[key]
            if not isinstance(theirs, Tensor) or theirs.shape != mine.shape:
                shape = getattr(theirs, "shape", type(theirs).__name__)
                raise ValueError(
                    f"{self.name}: state entry {key!r} has shape {shape}, expected {tuple(mine.shape)} "
                    "(meters built with different settings?)"
                )
        for key in self._state:
            self._state[key] = self._state[key] + other[key].to(
                self._state[key].device, self._state[key].dtype
            )

    def sync(self, group: dist.ProcessGroup | None = None) -> None:
        """Sum the statistics over all ranks of `group` (no-op without an initialised process group).

        NCCL needs CUDA tensors, so with that backend the statistics travel through the current CUDA
        device; with gloo they are reduced on the CPU. Entries are reduced in sorted-key order, the
        same on every rank.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        if self._synced:
            raise RuntimeError(
                f"{self.name}: sync() was already called; call reset() before accumulating again"
            )
        if dist.get_backend(group) == "nccl":
            comm_device = torch.device("cuda", torch.cuda.current_device())
        else:
            comm_device = torch.device("cpu")
        for key in sorted(self._state):
            local = self._state[key]
            buffer = local.to(comm_device, copy=True)
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=group)
            self._state[key] = buffer.to(local.device)
        self._synced = True

    # -- helpers for subclasses ---------------------------------------------------------------------
    def _begin_update(self, device: torch.device) -> None:
        """Refuse updates after sync(); move the statistics to the device the batch is on."""
        if self._synced:
            raise RuntimeError(
                f"{self.name}: update() after sync() would count data twice; call reset() first"
            )
        for key, value in self._state.items():
            if value.device != device:
                self._state[key] = value.to(device)

    def _error(self, message: str) -> ValueError:
        return ValueError(f"{self.name}: {message}")

    def _check_finite(self, tensor: Tensor, what: str) -> None:
        """Raise a ValueError naming this meter when `tensor` holds NaN or inf.

        One sum decides in the common case: NaN and inf propagate through it, so a finite sum means
        finite values (a sum is several times cheaper than `aminmax`, notably on channels-last
        logits, and than `isfinite(...).all()`). Only a non-finite sum, which finite values can
        also give by overflowing, is checked exactly, by min/max; the offending values are only
        counted when there are some.
        """
        if not tensor.is_floating_point() or tensor.numel() == 0:
            return
        if bool(torch.isfinite(tensor.sum())):
            return
        low, high = torch.aminmax(tensor)
        if not (bool(torch.isfinite(low)) and bool(torch.isfinite(high))):
            n_bad = int((~torch.isfinite(tensor)).sum())
            raise self._error(f"{what} contains {n_bad} NaN/inf value(s)")

    def _check_tensor(self, tensor: object, what: str) -> Tensor:
        if not isinstance(tensor, Tensor):
            raise self._error(f"{what} must be a torch.Tensor, got {type(tensor).__name__}")
        return tensor.detach()

    def _batched(self, tensor: Tensor, single_ndim: int, what: str, shape_hint: str) -> Tensor:
        """Add a batch axis to a single sample; check the number of dimensions."""
        if tensor.ndim == single_ndim:
            return tensor.unsqueeze(0)
        if tensor.ndim != single_ndim + 1:
            raise self._error(f"{what} must have shape {shape_hint}, got {tuple(tensor.shape)}")
        return tensor


def compute_device(device: torch.device) -> torch.device:
    """The device a meter computes on: the batch's, except Apple MPS (no float64), which uses the CPU."""
    return torch.device("cpu") if device.type == "mps" else device


def count_true(mask: Tensor) -> Tensor:
    """(B,) number of True entries per row of a (B,N) boolean mask, as int32.

    Sums a uint8 view in int32: on CPU the plain boolean sum widens every entry to int64 first and
    costs about twice as much.
    """
    return mask.view(torch.uint8).sum(1, dtype=torch.int32)
