"""Training cost of a model without running it: FLOPs per image and memory per process.

`trace_cost` builds the model on the meta device, gives it storage-free fake CPU tensors
(`FakeTensorMode`), and runs training-mode forwards at batch 2 and 4 under the stage's autocast
(bf16 when `runtime.amp` is bf16: CPU autocast stands in for CUDA's, whose lists of bf16 ops are much
the same). Nothing is allocated, so a 240 M-parameter model at 512x512 traces in seconds on a laptop.

* FLOPs: `torch.utils.flop_counter.FlopCounterMode` (2 per multiply-accumulate of matmuls,
  convolutions and attention; bench/gpu.py counts the same way); a training image costs 3x its
  forward (backward ~ 2x forward), the usual MFU convention.
* Activations: the bytes of the tensors autograd saves for backward (`saved_tensors_hooks`), each
  storage counted once, parameters excluded. The growth from batch 2 to 4 gives the bytes per image,
  the rest (bf16 copies of the weights under autocast, for instance) is per step. Both are scaled by
  `ACTIVATION_FACTOR` for what the forward trace does not see: the gradients of activations alive
  during backward, the criterion's full-resolution terms, kernel workspaces. The factor is measured:
  peak RSS per image on CPU (fp32, bench/memory_check.py, batch 1 vs 2) over the traced bytes per
  image at paper size: PolyMaX ConvNeXt-L at 512x512 3662 / 2829 MB = 1.29, MQTransformer Swin-L at
  448x576 5209 / 3785 MB = 1.38; their mean, 1.35, is used.
* Static: fp32 weights and gradients (4 + 4 bytes per parameter) and the optimiser state (AdamW 8,
  SGD with momentum 4 bytes per parameter).

    peak per process = static + per-step activations + micro-batch x activations per image

This is the allocator's peak as torch.cuda.max_memory_allocated reports it; the CUDA context (about
0.5 GB) and allocator fragmentation come on top, hence `HEADROOM` in the fit. On CPU (fp32) the
estimate is checked against the measured peak RSS (tests/test_plan.py; README "On a GPU cluster").

`preflight` stops a stage before its first step when its micro-batch cannot fit the memory one
process has: the GPU's, or `runtime.device_memory_gb` (which also makes the check testable on CPU).
"""

from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import dataclass
from typing import Any

import torch

from densepred.config import RuntimeCfg
from densepred.model_params import ModelCfg

GB = 1e9
ACTIVATION_FACTOR = 1.35  # measured peak / traced saved activations (module docstring)
HEADROOM = 0.9  # share of a device's memory the allocator's peak may use (context, fragmentation)
OPTIMIZER_STATE_BYTES = {"adamw": 8, "sgd": 4}  # per parameter (exp_avg + exp_avg_sq; momentum)


class MemoryPreflightError(ValueError):
    """A stage's micro-batch does not fit the memory of one process; the message names the setting."""


@dataclass(frozen=True)
class ModelCost:
    """What one training step of a model costs at one crop (see the module docstring)."""

    params: int
    forward_flops_per_image: float
    activation_bytes_per_image: float
    activation_bytes_per_step: float

    @property
    def train_flops_per_image(self) -> float:
        return 3 * self.forward_flops_per_image

    def static_bytes(self, optimizer: str) -> float:
        """fp32 weights, gradients and optimiser state."""
        return self.params * (8 + OPTIMIZER_STATE_BYTES[optimizer])

    def peak_bytes(self, micro_batch: int, optimizer: str) -> float:
        """Allocator peak of one process running `micro_batch` images forward and backward."""
        activations = self.activation_bytes_per_step + micro_batch * self.activation_bytes_per_image
        return self.static_bytes(optimizer) + activations

    def max_micro_batch(self, memory_bytes: float, optimizer: str) -> int:
        """The largest micro-batch whose peak fits `HEADROOM` of `memory_bytes` (0: not even one)."""
        room = HEADROOM * memory_bytes - self.static_bytes(optimizer) - self.activation_bytes_per_step
        return max(0, int(room // self.activation_bytes_per_image))


def trace_cost(
    model: ModelCfg, tasks: list[str], dataset: str, crop: tuple[int, int], amp: bool
) -> ModelCost:
    """The cost of `model` at `crop` (cached: every seed and chain of a job shares its models)."""
    key = json.dumps(model.model_dump(mode="json"), sort_keys=True)
    return _trace(key, type(model), tuple(tasks), dataset, tuple(crop), amp)


@functools.lru_cache(maxsize=64)
def _trace(
    key: str, cls: type, tasks: tuple[str, ...], dataset: str, crop: tuple[int, int], amp: bool
) -> ModelCost:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    from densepred.engine.build import build_model

    cfg = cls(**json.loads(key))
    if getattr(cfg, "pretrained_file", None) is not None:
        cfg = cfg.model_copy(update={"pretrained_file": None})  # the weights' values do not matter
    with torch.device("meta"):
        net = build_model(cfg, list(tasks), dataset)
    params = sum(p.numel() for p in net.parameters())
    saved: dict[int, dict[int, int]] = {2: {}, 4: {}}
    flops = 0.0
    with FakeTensorMode(allow_non_fake_inputs=True):
        net.to_empty(device="cpu").train()
        weights = {p.untyped_storage()._cdata for p in net.parameters()}
        for batch in (2, 4):
            store = saved[batch]

            def pack(t: torch.Tensor, store: dict[int, int] = store) -> torch.Tensor:
                storage = t.untyped_storage()
                if storage._cdata not in weights:
                    store[storage._cdata] = storage.nbytes()
                return t

            counter = FlopCounterMode(display=False)
            cast = torch.autocast("cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
            with cast, counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                net(torch.empty(batch, 3, *crop))
            if batch == 2:
                flops = counter.get_total_flops() / 2
    at2, at4 = (float(sum(saved[b].values())) for b in (2, 4))
    per_image = (at4 - at2) / 2
    fixed = max(0.0, at2 - 2 * per_image)
    return ModelCost(params, flops, ACTIVATION_FACTOR * per_image, ACTIVATION_FACTOR * fixed)


def device_memory(runtime: RuntimeCfg, device: torch.device) -> tuple[float | None, str]:
    """Bytes one process may use and where that figure comes from; None: no limit known (CPU)."""
    if runtime.device_memory_gb is not None:
        return runtime.device_memory_gb * GB, "runtime.device_memory_gb"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return float(props.total_memory), props.name
    return None, ""


def preflight(run: Any, device: torch.device, micro_batch: int, global_batch: int) -> str | None:
    """Raise MemoryPreflightError when the stage's micro-batch cannot fit one process's memory;
    returns the line saying what was checked (None when there is no limit to check against)."""
    available, source = device_memory(run.runtime, device)
    if available is None:
        return None
    settings = run.train_settings
    amp = run.runtime.amp == "bf16" and device.type == "cuda"
    cost = trace_cost(run.job_cfg.model, list(run.job_cfg.tasks), run.dataset, settings.crop, amp)
    optimizer = settings.optimizer.name
    needed = cost.peak_bytes(micro_batch, optimizer)
    if needed <= HEADROOM * available:
        return (
            f"memory: micro-batch {micro_batch} needs about {needed / GB:.2f} GB of {available / GB:.2f} GB"
        )
    fit = cost.max_micro_batch(available, optimizer)
    change = (
        f"set runtime.max_micro_batch={fit} (accumulation keeps the global batch {global_batch}) "
        "or run more processes (runtime.gpus_per_job)"
        if fit
        else "not even one image fits: use devices with more memory or a smaller crop"
    )
    raise MemoryPreflightError(
        f"{run.job}/{run.stage}: micro-batch {micro_batch} needs about {needed / GB:.2f} GB per process "
        f"(weights, gradients, optimiser state {cost.static_bytes(optimizer) / GB:.2f} GB + activations "
        f"{cost.activation_bytes_per_image / GB:.3f} GB per image), {HEADROOM:.0%} of "
        f"{available / GB:.2f} GB available ({source}); {change}"
    )
