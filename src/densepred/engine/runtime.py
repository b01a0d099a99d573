"""Process settings a job runs under: threads, determinism, seeds, precision and memory format.

`job_settings` applies them for the duration of a train or evaluate job and restores the previous
values afterwards (thread count, deterministic-algorithm switch, cuDNN benchmark, RNG states), so a
job run in-process (tests, Ray Tune trials) leaves the caller's process as it found it.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from densepred.config import RuntimeCfg
from densepred.engine.checkpoint import capture_rng, restore_rng


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and random from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(mode: bool, warn_only: bool, compiled: bool) -> None:
    """Switch torch's deterministic algorithms on or off.

    `torch.use_deterministic_algorithms` also sets the deterministic flag of TorchInductor's config,
    and importing that config imports Dynamo and Inductor: about 1.8 s of CPU in every process, more
    than a smoke evaluation's own work. That flag matters only to compiled code, so without
    `runtime.compile` (and while Inductor is not loaded anyway) the switch itself is set, which is
    all the eager kernels read.
    """
    if compiled or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=warn_only)


@contextlib.contextmanager
def job_settings(runtime: RuntimeCfg, device: torch.device, seed: int) -> Iterator[None]:
    """Threads (`runtime.threads`), determinism (`runtime.deterministic`) and seeds for one job.

    Deterministic mode: `torch.use_deterministic_algorithms(True, warn_only=True)`, cuDNN benchmark
    off and, on CUDA, the cuBLAS workspace setting deterministic GEMMs need.
    """
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        capture_rng(),
    )
    torch.set_num_threads(runtime.threads)
    if runtime.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        set_deterministic(True, warn_only=True, compiled=runtime.compile)
        torch.backends.cudnn.benchmark = False
    seed_everything(seed)
    try:
        yield
    finally:
        threads, deterministic, warn_only, benchmark, rng = saved
        torch.set_num_threads(threads)
        set_deterministic(deterministic, warn_only=warn_only, compiled=runtime.compile)
        torch.backends.cudnn.benchmark = benchmark
        restore_rng(rng)


def autocast_context(runtime: RuntimeCfg, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when `runtime.amp == "bf16"`; CPU runs stay fp32.

    Criteria and meters run outside this context (the losses also disable autocast themselves), so
    losses, softmax-based cluster combinations inside the criteria and metrics are fp32 islands.
    """
    if device.type == "cuda" and runtime.amp == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def uses_channels_last(runtime: RuntimeCfg, device: torch.device) -> bool:
    """channels_last memory format: on CUDA only, when `runtime.channels_last`."""
    return runtime.channels_last and device.type == "cuda"


def to_device(batch: Mapping[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    """Move every tensor of a batch to `device` (the image in channels_last when asked)."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if key == "image" and channels_last:
                value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out
