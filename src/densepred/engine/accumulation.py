"""Gradient accumulation: the paper's global batch on fewer (or smaller) GPUs.

One optimiser step consumes the stage's global batch B (`stage.batch_size`, the paper's). With W
processes (DDP) and A accumulation steps, each process runs A micro-batches of m = B / (W * A)
images forward and backward before the optimiser step:

    global batch = micro-batch x accumulation steps x world size

A is `runtime.accumulation_steps`, or, unset, the fewest steps that keep m within
`runtime.max_micro_batch` (1 without a cap), so the same profile reaches the paper's batch on 64
GPUs, on 8, or on one. The data order does not change: process r's share of step s is the stream
slice engine/sampler.py gives it, cut into A consecutive micro-batches, so micro-batch j of rank r
holds exactly the images that rank r * A + j would hold in a run of W * A processes at micro-batch m.

Loss scaling: each micro-batch's loss (a mean over its images) is divided by A before backward,
and DDP averages the W processes' gradients, so the step's gradient is the mean over the W * A
micro-batches of their mean losses: exactly what W * A processes compute, and, for losses that are
plain means over images, the gradient of the global batch's mean loss. (A loss averaged over each
micro-batch's *valid* pixels, such as the normals term, is a mean of means: the same departure as
DDP's, documented in tests/test_engine_ddp.py.) DDP synchronises gradients on the last micro-batch
only (`no_sync` on the others). The learning-rate schedule and the step counter advance once per
optimiser step, never per micro-batch.

Departure (BatchNorm): a BatchNorm layer normalises each micro-batch by its own statistics, over
m * W images (synchronised BatchNorm spans the processes), not over the B images of the paper's
batch, and updates its running statistics A times per step. Models without BatchNorm (the ConvNeXt
and Swin backbones use LayerNorm) are unaffected beyond float summation order; the kMaX decoder
(PolyMaX) and DeepLabv3+ heads use BatchNorm, so for them accumulation is an approximation whose
size tests/test_engine_accumulation.py measures. Prefer more GPUs over more accumulation steps where
the budget allows.

Checkpoints: the loop checks its stop flag and writes checkpoints between optimiser steps only; a
SIGTERM that arrives mid-accumulation takes effect at the end of that step, so a checkpoint never
holds half-accumulated gradients and resume stays bitwise (the data order is a function of the step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # no torch import at run time: the pipeline (stage identities) imports plan_batch
    import torch
    from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class BatchPlan:
    """How one optimiser step's global batch is split: over processes, then into micro-batches."""

    global_batch: int
    world_size: int
    accumulation: int

    @property
    def local_batch(self) -> int:
        """Images one process handles per optimiser step."""
        return self.global_batch // self.world_size

    @property
    def micro_batch(self) -> int:
        """Images one process runs forward and backward at once."""
        return self.local_batch // self.accumulation

    def describe(self) -> str:
        return (
            f"global batch {self.global_batch} = micro-batch {self.micro_batch} x "
            f"{self.accumulation} accumulation step(s) x {self.world_size} process(es)"
        )


def plan_batch(
    global_batch: int,
    world_size: int,
    accumulation_steps: int | None = None,
    max_micro_batch: int | None = None,
) -> BatchPlan:
    """The split of `global_batch` over `world_size` processes and accumulation steps.

    `accumulation_steps` set: used as given (it must divide the per-process batch, and the micro-batch
    must respect `max_micro_batch` when both are set). Unset: the fewest steps dividing the
    per-process batch whose micro-batch is at most `max_micro_batch`. Raises ValueError naming the
    setting to change when no split exists.
    """
    if global_batch % world_size:
        raise ValueError(
            f"batch_size {global_batch} (the global batch) must be divisible by the number of processes "
            f"{world_size} (runtime.gpus_per_job / procs_per_job x nodes_per_job)"
        )
    local = global_batch // world_size
    if accumulation_steps is not None:
        if local % accumulation_steps:
            raise ValueError(
                f"runtime.accumulation_steps={accumulation_steps} does not divide the {local} images "
                f"each of the {world_size} process(es) handles per step (batch_size {global_batch})"
            )
        plan = BatchPlan(global_batch, world_size, accumulation_steps)
        if max_micro_batch is not None and plan.micro_batch > max_micro_batch:
            raise ValueError(
                f"runtime.accumulation_steps={accumulation_steps} gives micro-batch {plan.micro_batch}, "
                f"above runtime.max_micro_batch={max_micro_batch}; raise accumulation_steps or unset it"
            )
        return plan
    cap = max_micro_batch or local
    steps = next(a for a in range(1, local + 1) if local % a == 0 and local // a <= cap)
    return BatchPlan(global_batch, world_size, steps)


def grouped(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive groups of `size` items (the last may be shorter when `items` runs out)."""
    group: list[T] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def accumulate_gradients(
    model: nn.Module,
    micro_batches: Sequence[Any],
    loss_fn: Callable[[Any], Mapping[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Forward and backward every micro-batch of one optimiser step into the parameters' `.grad`.

    Each micro-batch's `total` is divided by the number of micro-batches, so the accumulated
    gradient is their mean; a DDP `model` all-reduces on the last micro-batch only. Returns every
    loss term averaged over the micro-batches (detached; NaN/inf propagate, for the caller's check).
    Gradients must be zero (or None) on entry.
    """
    count = len(micro_batches)
    sums: dict[str, torch.Tensor] = {}
    for index, batch in enumerate(micro_batches):
        last = index == count - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            losses = loss_fn(batch)
            if "total" not in losses:
                raise ValueError(f"the criterion returned no 'total' entry (keys {sorted(losses)})")
            (losses["total"] / count).backward()
        for key, value in losses.items():
            value = value.detach().float().reshape(())
            sums[key] = sums[key] + value if key in sums else value
    return {key: value / count for key, value in sums.items()}
