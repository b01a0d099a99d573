"""GPU bench of the paper-size models: training throughput, peak memory, FLOPs and MFU, the meters'
share of evaluation time, and a 2-GPU DDP ratio, in one command budgeted to end within 8 minutes on
one H200 (`--budget-s`).

    python bench/gpu.py                      # GPU mode: writes results/bench_gpu.json
    python bench/gpu.py --cpu                # CPU mode (automatic without CUDA): bench/out/bench_gpu_cpu.json
    python bench/gpu.py --markdown results/bench_gpu.json   # the README table of a written JSON

Models (params/paper.yaml, built as `densepred train` builds them, `pretrained_file` dropped, random
initialisation): PolyMaX ConvNeXt-L semseg and depth (`polymax_semseg`, `polymax_depth`) and
DeepLabv3+ R50 (`deeplab_semseg`) at their finetune crop 480x640, MQTransformer Swin-L with 4 tasks
(`mqtransformer`) at 448x576. Per model:

1. Training images/s, eager and with `torch.compile` (the engine's `wrap_model`), under the paper
   profile's runtime: bf16 autocast and channels_last on CUDA, its deterministic-algorithms setting.
   A step is forward under the engine's autocast, the job's criterion, backward, optimiser step, on
   a synthetic batch of the job's tasks (`harness.train_step`); `--warmup` untimed steps (the first
   compiled ones include the compilation, recorded as `warmup_s`), then `--steps` timed ones;
   images/s = batch / median step time.
2. Peak memory: torch.cuda.max_memory_allocated over the steps (GPU); on CPU the growth of the peak
   RSS (ru_maxrss) over the RSS before the model was built.
3. FLOPs: `torch.utils.flop_counter.FlopCounterMode` on one training-mode forward (two images,
   divided by two: BatchNorm on pooled features needs more than one value per channel). The counter
   counts 2 FLOPs per multiply-accumulate of matmuls, convolutions and attention and nothing for
   normalisations, activations or resizing (bench/model_size.py reports MACs, half of these). A
   training image costs 3x the forward (backward ~ 2x forward), the usual MFU convention; the
   criterion's own FLOPs are not counted. On CPU the fused attention kernel is not counted (Swin's
   window attention: ~1.5 % of MQTransformer's FLOPs at 64x96). MFU = 3 x forward FLOPs x images/s /
   the device's dense bf16 peak (`PEAK_BF16_FLOPS`, or `--peak-tflops`); null on CPU unless
   `--peak-tflops` is given, and for a GPU not in the table.
4. Meter share: the eval-mode forward (under the engine's autocast, outputs cast to fp32 as
   `evaluate.run_metrics` does) and the `MetricSuite` update, built as `engine/evaluate.py` builds it
   from the job's `evaluate` settings (101-threshold boundary meter for the edge task), timed apart
   over `--eval-batches` batches of the evaluation batch size, with device synchronisation; the
   meters get the predictions on the GPU, as in an evaluation. meter_share = meter time / (forward +
   meter time). The batches are rendered synthetic NYUD-v2 frames (`densepred.data.synthetic`), so
   the ground-truth edges are object boundaries as in real data; the predictions come from the
   randomly initialised model, and the boundary meter's cost depends on its edge maps (it thins and
   matches every distinct thresholded map), so a trained model's figure can differ. The Eigen crop
   applies to 480x640 frames only; at other sizes the depth meter runs without it (noted in the row).
5. DDP: with 2 or more CUDA devices, 2 processes (torch.multiprocessing spawn, NCCL, the engine's
   `distributed.setup`, SyncBatchNorm and DDP wrapper) each with the 1-GPU batch; ratio = global
   images/s / 1-GPU eager images/s (2.0 = linear scaling). Otherwise `ddp` is null with the reason.

Each model's eager run (training, then evaluation) and each compiled run is a fresh subprocess: peak
memory is its own, and an OOM, a crash or a timeout is recorded in its row without stopping the
rest. Eager runs go first, then compiled ones (a cold compile costs about a minute per model), then
DDP; `--budget-s` bounds the whole run: a run still going at the deadline is killed and what is left
is recorded as skipped. The JSON is rewritten atomically after every run.

CPU mode (`--cpu`, or no CUDA): 64x64 inputs (Swin's `img_size` follows), batch 2, 1 warmup and 2
timed steps, 2 evaluation batches (no warmup), fp32 and contiguous memory (bf16 autocast and
channels_last are GPU-only in the engine), the same paper architectures. torch.compile is skipped
there: a cold compile of the smallest model (DeepLabv3+ R50, forward and backward) took 82-88 s on a
2-core CPU, more than a CI run can spend (bench/NOTES.md); `--cpu-compile` compiles that model only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    PROFILES,
    ROOT,
    build_training,
    load_job,
    peak_memory_mb,
    rss_mb,
    run_child,
    synchronize,
    synthetic_batch,
    timed_steps,
    train_step,
)

PAPER = PROFILES["paper"]
GPU_OUT = ROOT / "results" / "bench_gpu.json"
CPU_OUT = ROOT / "bench" / "out" / "bench_gpu_cpu.json"
CPU_SIZE = (64, 64)
CPU_BATCH = 2
CPU_COMPILE_JOB = "deeplab_semseg"  # the smallest model: the one `--cpu-compile` compiles
CPU_COMPILE_SKIPPED = (
    "skipped in CPU mode: a cold torch.compile of even the smallest model takes longer than a CI run "
    "can spend (bench/NOTES.md); --cpu-compile compiles deeplab_semseg"
)
# Dense (no sparsity) bf16 tensor-core peaks by device name, most specific first. H200 NVL and H100
# PCIe/NVL have lower clocks and are left out on purpose: they need --peak-tflops.
PEAK_BF16_FLOPS: tuple[tuple[str, str, float], ...] = (
    (r"H200(?!\s*NVL)", "H200 SXM", 989.4e12),
    (r"H100.*(SXM|HBM3)", "H100 SXM", 989.4e12),
    (r"A100", "A100", 312e12),
)
PHASES = ("eager", "compiled", "eval")
# Steps and batches per mode; --warmup, --steps and --eval-batches override them.
MODE_DEFAULTS = {
    "gpu": {"warmup": 3, "steps": 10, "eval_warmup": 1, "eval_batches": 3},
    "cpu": {"warmup": 1, "steps": 2, "eval_warmup": 0, "eval_batches": 2},
}
# A row's measured keys, in the JSON's order (filled by `merge` and `finish`).
ROW_RESULTS = (
    "params_m",
    "forward_flops_per_image",
    "train_flops_per_image",
    *PHASES,
    "ddp",
    "ddp_reason",
)


@dataclass(frozen=True)
class BenchJob:
    """A model configuration of the bench: a paper-profile job and its GPU training batch."""

    job: str
    batch: int


# Smallest first: when the budget runs out, the compiled runs left are those of the largest models.
JOBS = (
    BenchJob("deeplab_semseg", 16),
    BenchJob("polymax_semseg", 8),
    BenchJob("polymax_depth", 8),
    BenchJob("mqtransformer", 8),
)


# ---------------------------------------------------------------------------------- peaks, MFU, table


def peak_flops(device_name: str, mode: str, peak_tflops: float | None = None) -> tuple[float | None, str]:
    """(dense bf16 peak in FLOP/s or None, where it comes from) for `device_name`.

    `peak_tflops` (the `--peak-tflops` option) wins; on CPU there is no table entry."""
    if peak_tflops is not None:
        return peak_tflops * 1e12, "--peak-tflops"
    if mode == "cpu":
        return None, "no CPU peak is known; pass --peak-tflops for an MFU"
    for pattern, label, value in PEAK_BF16_FLOPS:
        if re.search(pattern, device_name):
            return value, f"dense bf16 peak of the {label}"
    return None, f"no dense bf16 peak known for {device_name!r}; pass --peak-tflops"


def mfu(train_flops_per_image: float | None, images_per_s: float | None, peak: float | None) -> float | None:
    """Achieved training FLOP/s over the device peak (None where any input is missing)."""
    if not train_flops_per_image or not images_per_s or not peak:
        return None
    return train_flops_per_image * images_per_s / peak


def _cell(phase: Any, key: str, fmt: str, scale: float = 1.0) -> str:
    """A table cell: the formatted value, `error`/`skipped` for a phase that has none, `-` for null."""
    if not isinstance(phase, dict):
        return "-"
    if phase.get(key) is not None:
        return format(phase[key] * scale, fmt)
    if "error" in phase:
        return "error"
    return "skipped" if "skipped" in phase else "-"


def render_markdown(report: dict[str, Any]) -> str:
    """The README table of a bench JSON: one row per model, then the errors, skips and the DDP reason
    as notes (one line per distinct message, naming the cells it explains)."""
    lines = [
        f"{report['mode'].upper()} mode on {report['device']}, torch {report['torch']}, {report['date']}; "
        f"MFU peak: {report['peak']['source']}.",
        "",
        "| job | model | input | batch | img/s eager | img/s compiled | peak GiB eager / compiled "
        "| train GFLOP/img | MFU eager | MFU compiled | meter share | DDP 2/1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes: dict[str, list[str]] = {}
    for row in report["rows"]:
        eager, compiled, ddp = row.get("eager"), row.get("compiled"), row.get("ddp")
        flops = row.get("train_flops_per_image")
        memory = [_cell(phase, "peak_mem_mb", ".1f", 1 / 1024) for phase in (eager, compiled)]
        cells = [
            row["job"],
            f"{row['model']} ({row['backbone']})",
            row["input"],
            str(row["batch"]),
            _cell(eager, "images_per_s", ".1f"),
            _cell(compiled, "images_per_s", ".1f"),
            " / ".join(memory),
            "-" if flops is None else f"{flops / 1e9:.0f}",
            _cell(eager, "mfu", ".1%"),
            _cell(compiled, "mfu", ".1%"),
            _cell(row.get("eval"), "meter_share", ".2f"),
            _cell(ddp, "ratio", ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
        for phase in (*PHASES, "ddp"):
            value = row.get(phase)
            if isinstance(value, dict) and ("error" in value or "skipped" in value):
                notes.setdefault(value.get("error") or value["skipped"], []).append(f"{row['job']} {phase}")
        if ddp is None and row.get("ddp_reason"):
            notes.setdefault(row["ddp_reason"], []).append(f"{row['job']} ddp")
    lines += [""] * bool(notes) + [f"- {', '.join(where)}: {message}" for message, where in notes.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- child: measure


def emit(record: dict[str, Any]) -> None:
    """One result line for the parent (`harness.run_child` collects the JSON lines)."""
    print(json.dumps(record), flush=True)


def forward_flops_per_image(model: Any, size: tuple[int, int], device: Any) -> float:
    """FlopCounterMode FLOPs of one training-mode forward per image (see the module docstring)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(2, 3, *size, device=device))
    return counter.get_total_flops() / 2


def rendered_batch(tasks: list[str], dataset: str, batch: int, size: tuple[int, int]) -> dict[str, Any]:
    """`batch` rendered synthetic NYUD-v2 frames as an evaluation batch (image and `tasks`)."""
    import numpy as np
    import torch

    from densepred.data.labels import to_train_ids
    from densepred.data.samples import make_sample
    from densepred.data.synthetic import render_nyud_frames
    from densepred.tasks import dataset_info

    if dataset != "nyud":
        raise ValueError(f"evaluation batches are rendered NYUD-v2 frames; the job evaluates on {dataset!r}")
    classes = dataset_info(dataset).num_classes
    samples = []
    for frame in render_nyud_frames(batch + 1, 1, size[0], size[1], seed=0):
        arrays: dict[str, np.ndarray] = {
            "image": frame.rgb.transpose(2, 0, 1) / np.float32(255.0),
            "semseg": to_train_ids(frame.label40, classes),
            "depth": frame.depth[None],
            "normals": frame.normals.transpose(2, 0, 1),
            "edge": frame.edge[None],
        }
        samples.append(
            make_sample(str(frame.index), {k: v for k, v in arrays.items() if k in ("image", *tasks)})
        )
        if len(samples) == batch:
            break
    return {key: torch.stack([sample[key] for sample in samples]) for key in samples[0] if key != "id"}


def measure_eval(job_cfg: Any, model: Any, runtime: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Forward and meter times of the evaluation (item 4 of the module docstring)."""
    import torch

    from densepred.engine.evaluate import valid_parts
    from densepred.engine.runtime import autocast_context, to_device, uses_channels_last
    from densepred.metrics import MetricSuite
    from densepred.metrics.depth import EIGEN_FRAME
    from densepred.tasks import dataset_info

    settings, size, device = job_cfg.evaluate, tuple(config["size"]), torch.device(config["device"])
    eigen_crop = settings.eigen_crop and size == EIGEN_FRAME
    suite = MetricSuite.build(
        list(job_cfg.tasks),
        settings.dataset,
        dataset_info(settings.dataset).num_classes,
        settings.boundary_thresholds,
        eigen_crop,
    )
    per_meter = {name: MetricSuite({name: meter}) for name, meter in suite.meters.items()}
    batch = rendered_batch(list(job_cfg.tasks), settings.dataset, config["eval_batch"], size)
    batch = to_device(batch, device, uses_channels_last(runtime, device))
    model.eval()
    forward_s: list[float] = []
    meter_s: dict[str, list[float]] = {name: [] for name in per_meter}
    with torch.no_grad():
        for index in range(config["eval_warmup"] + config["eval_batches"]):
            timed = index >= config["eval_warmup"]
            start = time.perf_counter()
            with autocast_context(runtime, device):
                outputs = model(batch["image"])
            outputs = {k: v.float() for k, v in outputs.items() if isinstance(v, torch.Tensor)}
            synchronize(device)
            if timed:
                forward_s.append(time.perf_counter() - start)
            for name, meters in per_meter.items():
                start = time.perf_counter()
                for part_outputs, part_batch in valid_parts(outputs, batch):
                    meters.update(part_outputs, part_batch)
                synchronize(device)
                if timed:
                    meter_s[name].append(time.perf_counter() - start)
    forward, meters_total = sum(forward_s), sum(sum(times) for times in meter_s.values())
    result: dict[str, Any] = {
        "batch": config["eval_batch"],
        "batches": config["eval_batches"],
        "input": f"{size[0]}x{size[1]}",
        "boundary_thresholds": settings.boundary_thresholds if "edge" in job_cfg.tasks else None,
        "forward_s_per_batch": forward / len(forward_s),
        "meter_s_per_batch": meters_total / len(forward_s),
        "meter_s_per_batch_by_meter": {name: sum(t) / len(t) for name, t in meter_s.items()},
        "meter_share": meters_total / (forward + meters_total),
    }
    if settings.eigen_crop and not eigen_crop and "depth" in job_cfg.tasks:
        result["note"] = f"Eigen crop off: it is defined for 480x640 frames only, not {size[0]}x{size[1]}"
    return result


def runtime_for(config: dict[str, Any], profile_runtime: Any) -> Any:
    """The profile's runtime with this run's precision, memory format, compile flag and threads."""
    on_gpu = config["device"] == "cuda"
    return profile_runtime.model_copy(
        update={
            "amp": "bf16" if on_gpu else "none",
            "channels_last": on_gpu,
            "compile": config["phase"] == "compiled",
            "threads": config["threads"],
        }
    )


def child_train(config: dict[str, Any]) -> None:
    """One model's training run (eager or compiled), then its evaluation timing if asked."""
    import torch

    from densepred.engine.distributed import DistEnv
    from densepred.engine.runtime import job_settings, to_device, uses_channels_last

    device = torch.device(config["device"])
    job_cfg, stage, profile_runtime = load_job(PAPER, config["job"], config["overrides"])
    runtime = runtime_for(config, profile_runtime)
    size = tuple(config["size"])
    baseline = rss_mb()
    with job_settings(runtime, device, seed=0):
        training = build_training(job_cfg, stage, runtime, DistEnv(device=device))
        emit(
            {
                "phase": "info",
                "params_m": sum(p.numel() for p in training.model.parameters()) / 1e6,
                "forward_flops_per_image": forward_flops_per_image(training.model, size, device),
            }
        )
        batch = synthetic_batch(list(job_cfg.tasks), stage.dataset, config["batch"], size, device)
        batch = to_device(batch, device, uses_channels_last(runtime, device))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        warmup, times = timed_steps(
            lambda: train_step(training, batch), config["warmup"], config["steps"], device
        )
        median = statistics.median(times)
        emit(
            {
                "phase": config["phase"],
                "images_per_s": config["batch"] / median,
                "step_s_median": median,
                "step_s": times,
                "warmup_s": warmup,
                "peak_mem_mb": peak_memory_mb(device, baseline),
            }
        )
        if config["eval"]:
            training.optimizer.state.clear()
            training.model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            result = measure_eval(job_cfg, training.model, runtime, config)
            if device.type == "cuda":
                result["peak_mem_mb"] = peak_memory_mb(device, baseline)
            emit({"phase": "eval", **result})


def _ddp_worker(rank: int, config: dict[str, Any], port: int, result_path: str) -> None:
    """One DDP rank: the engine's process group, SyncBatchNorm and DDP wrapper; rank 0 writes the
    global images/s to `result_path`."""
    import torch

    from densepred.engine import distributed as dist_utils
    from densepred.engine.runtime import job_settings, to_device, uses_channels_last

    world = config["world_size"]
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    env = dist_utils.setup(config["device"])
    try:
        job_cfg, stage, profile_runtime = load_job(PAPER, config["job"], config["overrides"])
        runtime = runtime_for(config, profile_runtime)
        with job_settings(runtime, env.device, seed=0):
            training = build_training(job_cfg, stage, runtime, env)
            batch = synthetic_batch(
                list(job_cfg.tasks), stage.dataset, config["batch"], tuple(config["size"]), env.device
            )
            batch = to_device(batch, env.device, uses_channels_last(runtime, env.device))
            _, times = timed_steps(
                lambda: train_step(training, batch), config["warmup"], config["steps"], env.device
            )
        if env.is_main:
            median = statistics.median(times)
            result = {
                "world_size": world,
                "batch_per_process": config["batch"],
                "images_per_s": world * config["batch"] / median,
                "step_s_median": median,
                "peak_mem_mb_rank0": torch.cuda.max_memory_allocated(env.device) / 2**20
                if env.device.type == "cuda"
                else None,
            }
            Path(result_path).write_text(json.dumps(result))
    finally:
        dist_utils.teardown(env)


def child_ddp(config: dict[str, Any]) -> None:
    """Spawn the DDP ranks (item 5 of the module docstring) and emit rank 0's result."""
    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        result_path = str(Path(folder) / "ddp.json")
        mp.spawn(_ddp_worker, args=(config, port, result_path), nprocs=config["world_size"], join=True)
        emit({"phase": "ddp", **json.loads(Path(result_path).read_text())})


# ------------------------------------------------------------------------------------------ driver


def device_name(mode: str) -> str:
    """The GPU's name, or the CPU's model name from /proc/cpuinfo."""
    import torch

    if mode == "gpu":
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.machine()


def plan(args: argparse.Namespace, mode: str, gpus: int) -> tuple[list[dict], list[dict]]:
    """(one row per model, the child runs in execution order: eager+eval, compiled, DDP).

    A run's `phase` is eager, compiled or ddp; eager runs also time the evaluation (`eval`)."""
    rows, runs = [], []
    for spec in JOBS:
        if spec.job not in args.jobs:
            continue
        job_cfg, stage, _ = load_job(PAPER, spec.job)
        size = tuple(args.size) if args.size else (CPU_SIZE if mode == "cpu" else tuple(stage.crop))
        img_size = getattr(job_cfg.model, "img_size", None)
        img_size_set = None if img_size in (None, size) else f"[{size[0]},{size[1]}]"
        asked = {"warmup": args.warmup, "steps": args.steps, "eval_batches": args.eval_batches}
        base = {
            **MODE_DEFAULTS[mode],
            **{key: value for key, value in asked.items() if value is not None},
            "job": spec.job,
            "device": "cpu" if mode == "cpu" else "cuda",
            "size": list(size),
            "overrides": [f"jobs.{spec.job}.model.img_size={img_size_set}"] if img_size_set else [],
            "batch": args.batch or (CPU_BATCH if mode == "cpu" else spec.batch),
            "eval_batch": args.batch or (CPU_BATCH if mode == "cpu" else job_cfg.evaluate.batch_size),
            "threads": args.threads,
        }
        rows.append(
            {
                "job": spec.job,
                "model": job_cfg.model.name,
                "backbone": job_cfg.model.backbone,
                "tasks": list(job_cfg.tasks),
                "input": f"{size[0]}x{size[1]}",
                "img_size_override": img_size_set,
                "batch": base["batch"],
                **dict.fromkeys(ROW_RESULTS),
            }
        )
        runs.append({**base, "phase": "eager", "eval": True})
        if not args.no_compile and (mode == "gpu" or (args.cpu_compile and spec.job == CPU_COMPILE_JOB)):
            runs.append({**base, "phase": "compiled", "eval": False})
        if gpus >= 2:
            runs.append({**base, "phase": "ddp", "eval": False, "world_size": 2})
    runs.sort(key=lambda run: ("eager", "compiled", "ddp").index(run["phase"]))
    return rows, runs


def run_phases(run: dict[str, Any]) -> list[str]:
    """The row entries a child run fills."""
    return [run["phase"], "eval"] if run["eval"] else [run["phase"]]


def merge(row: dict[str, Any], run: dict[str, Any], records: list[dict], error: str | None) -> None:
    """Put a child's records into its row; phases it did not reach get its error."""
    for record in records:
        phase = record.pop("phase")
        if phase == "info":
            row.update(record)
        else:
            row[phase] = record
    for phase in run_phases(run):
        if row.get(phase) is None:
            row[phase] = {"error": error or "the run ended without a result"}


def finish(row: dict[str, Any], peak: float | None) -> None:
    """Derived columns: training FLOPs per image, achieved FLOP/s and MFU, the DDP ratio."""
    forward = row.get("forward_flops_per_image")
    row["train_flops_per_image"] = 3 * forward if forward else None
    for phase in ("eager", "compiled"):
        result = row.get(phase)
        if isinstance(result, dict) and result.get("images_per_s") and forward:
            result["achieved_tflops"] = 3 * forward * result["images_per_s"] / 1e12
            result["mfu"] = mfu(row["train_flops_per_image"], result["images_per_s"], peak)
    ddp, eager = row.get("ddp"), row.get("eager") or {}
    if isinstance(ddp, dict) and ddp.get("images_per_s") and eager.get("images_per_s"):
        ddp["ratio"] = ddp["images_per_s"] / eager["images_per_s"]


def finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such floats become null, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def skip_reasons(args: argparse.Namespace, mode: str, gpus: int) -> tuple[str | None, str | None]:
    """(why compiled runs are skipped, why DDP is not measured); None where they run."""
    compile_reason = None
    if args.no_compile:
        compile_reason = "skipped: --no-compile"
    elif mode == "cpu" and not args.cpu_compile:
        compile_reason = CPU_COMPILE_SKIPPED
    if mode == "cpu":
        return compile_reason, "CPU mode: DDP throughput is measured on GPUs only"
    if gpus < 2:
        return compile_reason, f"{gpus} CUDA device(s) visible; the DDP ratio needs 2"
    return compile_reason, None


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run every planned child within the budget; returns the report (also written to the JSON)."""
    import torch

    from densepred.io import atomic_write_text

    started = time.monotonic()
    mode = "cpu" if args.cpu or not torch.cuda.is_available() else "gpu"
    out = args.out or (CPU_OUT if mode == "cpu" else GPU_OUT)
    gpus = torch.cuda.device_count() if mode == "gpu" else 0
    name = device_name(mode)
    peak, peak_source = peak_flops(name, mode, args.peak_tflops)
    rows, runs = plan(args, mode, gpus)
    compile_reason, ddp_reason = skip_reasons(args, mode, gpus)
    compiled_jobs = {run["job"] for run in runs if run["phase"] == "compiled"}
    for row in rows:
        row["ddp_reason"] = ddp_reason
        if row["job"] not in compiled_jobs:
            row["compiled"] = {
                "skipped": compile_reason
                or f"skipped in CPU mode: --cpu-compile compiles {CPU_COMPILE_JOB} only"
            }
    report: dict[str, Any] = {
        "bench": "bench/gpu.py",
        "mode": mode,
        "device": name,
        "cuda_devices": gpus,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "peak": {"flops": peak, "source": peak_source},
        "settings": {
            "budget_s": args.budget_s,
            "threads": args.threads,
            "amp": "bf16" if mode == "gpu" else "none",
            "channels_last": mode == "gpu",
            "compiled": sorted(compiled_jobs),
        },
        "rows": rows,
        "elapsed_s": None,
    }

    def write() -> None:
        report["elapsed_s"] = time.monotonic() - started
        atomic_write_text(out, json.dumps(finite(report), indent=2, allow_nan=False) + "\n")

    by_job = {row["job"]: row for row in rows}
    deadline = started + args.budget_s
    for run in runs:
        row, label = by_job[run["job"]], f"{run['job']} {run['phase']}"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            skipped = f"not run: the time budget (--budget-s {args.budget_s:.0f}) was spent"
            row.update({phase: {"skipped": skipped} for phase in run_phases(run)})
            print(f"{label}: {skipped}", flush=True)
            continue
        start = time.monotonic()
        records, error = run_child(Path(__file__), run, timeout_s=remaining)
        if error and error.startswith("killed"):
            error += f": the time budget (--budget-s {args.budget_s:.0f}) ran out"
        merge(row, run, records, error)
        finish(row, peak)
        print(f"{label}: {time.monotonic() - start:.0f} s" + (f", {error}" if error else ""), flush=True)
        write()
    for row in rows:
        finish(row, peak)
    write()
    print(render_markdown(report), end="")
    print(f"wrote {out} ({report['elapsed_s']:.0f} s)")
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="CPU mode (automatic without CUDA)")
    parser.add_argument(
        "--jobs", nargs="+", default=[spec.job for spec in JOBS], choices=[s.job for s in JOBS]
    )
    parser.add_argument("--batch", type=int, help="training and evaluation batch of every model")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="input size of every model")
    parser.add_argument("--warmup", type=int, help="untimed training steps (GPU 3, CPU 1)")
    parser.add_argument("--steps", type=int, help="timed training steps (GPU 10, CPU 2)")
    parser.add_argument("--eval-batches", type=int, help="timed evaluation batches (GPU 3, CPU 2)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile runs")
    parser.add_argument("--cpu-compile", action="store_true", help=f"CPU mode: compile {CPU_COMPILE_JOB}")
    parser.add_argument("--budget-s", type=float, default=450.0, help="total time budget in seconds")
    parser.add_argument("--peak-tflops", type=float, help="device peak for the MFU, in TFLOP/s")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads per run")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"JSON path (GPU: {GPU_OUT.relative_to(ROOT)}, CPU: {CPU_OUT.relative_to(ROOT)})",
    )
    parser.add_argument("--markdown", type=Path, metavar="JSON", help="print the table of a written JSON")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        config = json.loads(args.one)
        (child_ddp if config["phase"] == "ddp" else child_train)(config)
        return 0
    if args.markdown:
        print(render_markdown(json.loads(args.markdown.read_text())), end="")
        return 0
    run_bench(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
