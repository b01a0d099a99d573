"""Three optimiser steps of a tiny conv net, with or without BatchNorm, for
tests/test_engine_accumulation.py: in the test's process (one process, any accumulation) and under
`torchrun --nproc_per_node=2` (gloo on 127.0.0.1, synchronised BatchNorm, DDP), where it writes the
result of rank 0 to the file given as its argument. Every variant consumes the same 8 images per step:
the global batch, split over processes and micro-batches as engine/accumulation.py does."""

from __future__ import annotations

import sys

import torch
from torch import nn

from densepred.engine import distributed as dist_utils
from densepred.engine.accumulation import accumulate_gradients, plan_batch

GLOBAL_BATCH, STEPS = 8, 3


def make_model(batchnorm: bool) -> nn.Module:
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(8) if batchnorm else nn.Identity()
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), norm, nn.ReLU(), nn.Conv2d(8, 1, 1))


def step_data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of `step`: images and per-pixel targets."""
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(GLOBAL_BATCH, 3, 8, 8, generator=gen) * 2 + 0.5
    return x, torch.randn(GLOBAL_BATCH, 1, 8, 8, generator=gen)


def run(batchnorm: bool, accumulation: int, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
    """Train STEPS steps; returns the first step's gradients (`grad.<name>`) and the final parameters."""
    raw = make_model(batchnorm)
    model: nn.Module = raw
    if world_size > 1:
        raw = dist_utils.convert_sync_batchnorm(raw, torch.device("cpu"))
        model = nn.parallel.DistributedDataParallel(raw)
    plan = plan_batch(GLOBAL_BATCH, world_size, accumulation)
    optimizer = torch.optim.SGD(raw.parameters(), lr=0.1)

    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"total": ((model(x) - y) ** 2).mean()}

    result: dict[str, torch.Tensor] = {}
    for step in range(STEPS):
        x, y = step_data(step)
        lo = rank * plan.local_batch
        micro = [
            (x[i : i + plan.micro_batch], y[i : i + plan.micro_batch])
            for i in range(lo, lo + plan.local_batch, plan.micro_batch)
        ]
        optimizer.zero_grad(set_to_none=True)
        losses = accumulate_gradients(model, micro, loss_fn)
        if step == 0:
            result.update({f"grad.{n}": p.grad.clone() for n, p in raw.named_parameters()})
            result["loss"] = (
                dist_utils.all_reduce_sum(dist_utils.DistEnv(rank, world_size), losses["total"].double())
                / world_size
            )
        optimizer.step()
    result.update({f"param.{n}": p.detach().clone() for n, p in raw.named_parameters()})
    return result


def main(argv: list[str]) -> None:
    out, batchnorm = argv[0], argv[1] == "bn"
    env = dist_utils.setup("cpu")
    try:
        result = run(batchnorm, 1, env.rank, env.world_size)
        if env.is_main:
            torch.save(result, out)
    finally:
        dist_utils.teardown(env)


if __name__ == "__main__":
    main(sys.argv[1:])
