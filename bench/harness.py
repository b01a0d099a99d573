"""What the training benchmarks share (bench/bench_train.py, bench/gpu.py).

- `load_job`: a job of a profile with its pretrained file dropped (nothing is downloaded or read),
  so the model is the job's architecture with random initialisation;
- `build_training` / `train_step`: the model, criterion and optimiser built exactly as
  `densepred train` builds them (`build_model`, `prepare_model`, `wrap_model`, `build_criterion`,
  `build_optimizer`) and one training step: forward under the engine's autocast, the job's
  criterion, backward, optimiser step (no gradient clipping, no scheduler: they cost nothing
  measurable and would only tie the step to a schedule);
- `synthetic_batch`: random data with the shapes, dtypes and value ranges of real data;
- `timed_steps`: warmup then timed calls, synchronised on CUDA so each time covers the kernels;
- memory: the process's RSS (CPU) and `peak_memory_mb` (CUDA: max_memory_allocated; CPU: the growth
  of the peak RSS over a baseline);
- `run_child`: one configuration in a fresh interpreter (`<script> --one <json>`), so that peak
  memory is its own and a crash, an OOM or a timeout loses that configuration only.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {"smoke": ROOT / "params" / "smoke.yaml", "paper": ROOT / "params" / "paper.yaml"}


def load_job(profile: Path, job: str, overrides: Sequence[str] = ()) -> tuple[Any, Any, Any]:
    """(job config, its training stage: finetune, else pretrain, the profile's runtime settings) of
    `job` in `profile`, with `pretrained_file` set to null and `overrides` (`--set` strings) applied."""
    from densepred.params_loading import load_params

    params = load_params(profile, [f"jobs.{job}.model.pretrained_file=null", *overrides])
    job_cfg = params.job(job)
    return job_cfg, job_cfg.finetune or job_cfg.pretrain, params.runtime


def synthetic_batch(
    tasks: list[str], dataset: str, batch: int, size: tuple[int, int], device: torch.device | str
) -> dict[str, torch.Tensor]:
    """A batch with the shapes, dtypes and value ranges of real data (valid everywhere)."""
    from densepred.tasks import dataset_info

    info = dataset_info(dataset)
    gen = torch.Generator().manual_seed(0)
    h, w = size
    out: dict[str, torch.Tensor] = {"image": torch.rand(batch, 3, h, w, generator=gen)}
    if "semseg" in tasks:
        out["semseg"] = torch.randint(0, info.num_classes, (batch, h, w), generator=gen)
    if "depth" in tasks:
        out["depth"] = torch.rand(batch, 1, h, w, generator=gen) * (info.max_depth - 0.5) + 0.5
    if "normals" in tasks:
        normals = torch.randn(batch, 3, h, w, generator=gen)
        out["normals"] = normals / normals.norm(dim=1, keepdim=True)
    if "edge" in tasks:
        out["edge"] = (torch.rand(batch, 1, h, w, generator=gen) > 0.9).float()
    return {k: v.to(device) for k, v in out.items()}


@dataclass
class Training:
    """What one training step needs: the plain model, the one called (compiled and/or DDP-wrapped),
    the criterion, the optimiser and the runtime settings the engine would use."""

    model: nn.Module
    step_model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    runtime: Any  # densepred.config.RuntimeCfg
    device: torch.device


def build_training(job_cfg: Any, stage: Any, runtime: Any, env: Any) -> Training:
    """Model, criterion and optimiser of `job_cfg`'s `stage`, as `densepred train` builds them under
    `runtime` (amp, channels_last, compile) in the process `env` (a `DistEnv`: device, world size)."""
    from densepred.engine.build import build_criterion, build_model
    from densepred.engine.optim import build_optimizer
    from densepred.engine.train import prepare_model, wrap_model

    torch.manual_seed(0)
    model = build_model(job_cfg.model, list(job_cfg.tasks), stage.dataset)
    model = prepare_model(model, runtime, env).train()
    criterion = build_criterion(job_cfg, stage).to(env.device)
    optimizer = build_optimizer(model, stage.optimizer)
    return Training(model, wrap_model(model, runtime, env), criterion, optimizer, runtime, env.device)


def train_step(training: Training, batch: dict[str, torch.Tensor]) -> None:
    """Forward under the engine's autocast, the job's criterion (fp32), backward, optimiser step."""
    from densepred.engine.runtime import autocast_context

    with autocast_context(training.runtime, training.device):
        outputs = training.step_model(batch["image"])
    loss = training.criterion(outputs, batch)["total"]
    training.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    training.optimizer.step()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(
    step: Callable[[], None], warmup: int, steps: int, device: torch.device
) -> tuple[list[float], list[float]]:
    """(warmup times, timed times) in seconds of `warmup` + `steps` calls of `step`, each ended by a
    device synchronisation."""
    times = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times[:warmup], times[warmup:]


def rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_mb(device: torch.device, baseline_rss_mb: float) -> float:
    """CUDA: torch.cuda.max_memory_allocated since the last reset; CPU: the peak RSS minus
    `baseline_rss_mb` (the RSS before the model was built), i.e. model, optimiser state and
    activations."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb() - baseline_rss_mb


def run_child(
    script: Path, config: dict[str, Any], timeout_s: float | None = None
) -> tuple[list[dict], str | None]:
    """Run `script --one <config as JSON>` in a fresh interpreter; returns the JSON objects it printed
    (one per line, in order) and an error (None when it exited 0).

    The child runs in a session of its own; on timeout that whole process group (compile workers,
    DDP ranks) is killed and the lines printed before are kept.
    """
    env = {**os.environ, "DENSEPRED_TRACKING": "off", "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, str(script), "--one", json.dumps(config)]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    error = None
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        error = f"killed after {timeout_s:.0f} s (time limit)"
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    if error is None and proc.returncode != 0:
        lines = [line.strip() for line in (stderr or stdout).splitlines() if line.strip()]
        error = f"exit {proc.returncode}: {lines[-1] if lines else 'no output'}"
    return rows, error
