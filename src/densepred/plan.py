"""`densepred plan`: what the training stages of a target cost, and whether they fit, before launch.

For every training stage a target needs (`results/table2.csv`, `results/all`, any stage output; the
pipeline's DAG of pipeline.py, so every seed, the Fig. 7 fraction chains and, for the ablation
tables, each sweep trial's chain are included), one row:

* FLOPs per training image, counted (engine/memory.py: FlopCounterMode on a fake-tensor forward at
  the stage's crop, x3 for forward + backward);
* images processed: iterations x global batch (the paper's `batch_size`);
* the batch split under the profile's runtime (processes, accumulation, micro-batch) and the peak
  memory per process at that micro-batch (engine/memory.py: weights, gradients and optimiser state,
  plus the saved activations traced under the profile's autocast);
* for GPUs of `--gpu-mem-gb`: the largest micro-batch that fits, the accumulation that reaches the
  global batch with it on the profile's GPUs, and the fewest GPUs that need no accumulation;
* GPU-hours = images x FLOPs per image / (MFU x peak FLOP/s). The MFU and peak come from
  results/bench_gpu.json (a GPU run of bench/gpu.py: the job's own MFU, else the bench's median) when
  present, else `DEFAULT_MFU` of an H100 SXM's dense bf16 peak; the output names its source.

Totals: per target and over everything listed (every seed's chain is its own set of stages), and the
same per seed. Evaluations and data preparation are left out (minutes, against days of training).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from densepred import paths
from densepred.config import Params
from densepred.engine.accumulation import plan_batch
from densepred.engine.memory import GB, trace_cost
from densepred.params_loading import ParamsFiles, load_params
from densepred.pipeline import build_stages
from densepred.stage import Stage, upstream
from densepred.stage_run import chain_runs
from densepred.sweeps import expand_trials, trial_params

DEFAULT_MFU = 0.35  # a typical eager bf16 training MFU for convolutional/windowed models at this size
DEFAULT_GPU = ("H100 SXM dense bf16", 989.4e12)
BENCH = Path("results/bench_gpu.json")


@dataclass(frozen=True)
class Throughput:
    """The MFU per job (`default` for the others), the peak FLOP/s, and where both come from."""

    mfu: dict[str, float]
    peak_flops: float
    source: str

    def of(self, job: str) -> float:
        return self.mfu.get(job, self.mfu["default"])


def throughput(bench: Path = BENCH, mfu: float | None = None) -> Throughput:
    """From a GPU run of bench/gpu.py when present (or `mfu` given), else the named defaults."""
    if mfu is not None:
        return Throughput({"default": mfu}, DEFAULT_GPU[1], f"--mfu {mfu} of {DEFAULT_GPU[0]}")
    if bench.is_file():
        report = json.loads(bench.read_text())
        peak = (report.get("peak") or {}).get("flops")
        per_job = {
            row["job"]: max(v for v in (_mfu(row, "eager"), _mfu(row, "compiled")) if v is not None)
            for row in report.get("rows", [])
            if _mfu(row, "eager") is not None or _mfu(row, "compiled") is not None
        }
        if report.get("mode") == "gpu" and peak and per_job:
            per_job["default"] = statistics.median(per_job.values())
            return Throughput(per_job, float(peak), f"{bench} ({report.get('device')})")
    source = f"default MFU {DEFAULT_MFU} of {DEFAULT_GPU[0]} {DEFAULT_GPU[1] / 1e12:.0f} TFLOP/s (no {bench})"
    return Throughput({"default": DEFAULT_MFU}, DEFAULT_GPU[1], source)


def _mfu(row: dict[str, Any], phase: str) -> float | None:
    value = (row.get(phase) or {}).get("mfu") if isinstance(row.get(phase), dict) else None
    return float(value) if value else None


@dataclass
class StagePlan:
    """One training stage (or one sweep trial's stage) of the plan."""

    stage: str
    job: str
    kind: str
    seed: int
    iterations: int
    global_batch: int
    processes: int
    accumulation: int
    micro_batch: int
    images: int
    params_m: float
    train_gflops_per_image: float
    memory_gb: float
    static_gb: float
    activation_gb_per_image: float
    fit_micro_batch: int
    fit_accumulation: int | None
    fit_gpus: int | None
    gpu_hours: float


def stage_plan(
    params: Params, name: str, job: str, stage: str, gpu_mem_gb: float, speed: Throughput, processes: int
) -> StagePlan:
    """The row of `job`'s `stage` under `params` (its seed and overrides applied)."""
    cfg = params.job(job)
    settings = getattr(cfg, stage)
    runtime = params.runtime
    batch = plan_batch(settings.batch_size, processes, runtime.accumulation_steps, runtime.max_micro_batch)
    cost = trace_cost(cfg.model, list(cfg.tasks), settings.dataset, settings.crop, runtime.amp == "bf16")
    optimizer = settings.optimizer.name
    fit = cost.max_micro_batch(gpu_mem_gb * GB, optimizer)
    fit_acc = plan_batch(settings.batch_size, processes, None, fit).accumulation if fit else None
    images = settings.iterations * settings.batch_size
    hours = images * cost.train_flops_per_image / (speed.of(job) * speed.peak_flops) / 3600
    return StagePlan(
        stage=name,
        job=job,
        kind=stage,
        seed=params.seed,
        iterations=settings.iterations,
        global_batch=settings.batch_size,
        processes=processes,
        accumulation=batch.accumulation,
        micro_batch=batch.micro_batch,
        images=images,
        params_m=cost.params / 1e6,
        train_gflops_per_image=cost.train_flops_per_image / 1e9,
        memory_gb=cost.peak_bytes(batch.micro_batch, optimizer) / GB,
        static_gb=cost.static_bytes(optimizer) / GB,
        activation_gb_per_image=cost.activation_bytes_per_image / GB,
        fit_micro_batch=fit,
        fit_accumulation=fit_acc,
        fit_gpus=fewest_processes(settings.batch_size, fit),
        gpu_hours=hours,
    )


def fewest_processes(global_batch: int, micro_batch: int) -> int | None:
    """The fewest processes that hold `global_batch` at most `micro_batch` each, without
    accumulation (None when not even one image fits)."""
    if micro_batch < 1:
        return None
    return next(
        w for w in range(1, global_batch + 1) if global_batch % w == 0 and global_batch // w <= micro_batch
    )


def needed_stages(stages: Sequence[Stage], target: str) -> list[Stage]:
    """The stages `target` needs (itself included): a stage output, a table name or `results/all`."""
    if target in ("all", "results/all") or target.endswith("/all"):
        roots = [s for s in stages if s.kind == "tables"]
    else:
        roots = [s for s in stages if target in s.outs or s.name == target or s.name == Path(target).stem]
    if not roots:
        tables = sorted(o for s in stages if s.kind == "tables" for o in s.outs)
        raise ValueError(f"no stage makes {target!r}; targets: results/all, {', '.join(tables)}")
    return upstream(stages, roots)


def rows_of(stage: Stage, params: Params, gpu_mem_gb: float, speed: Throughput) -> list[StagePlan]:
    """The plan rows of one pipeline stage (`params`: the profile with the stage's overrides): a
    training stage, or every trial chain of a sweep."""
    if stage.kind == "train":
        assert stage.job is not None and stage.train_stage is not None
        processes = params.runtime.world_size
        return [stage_plan(params, stage.name, stage.job, stage.train_stage, gpu_mem_gb, speed, processes)]
    if stage.kind != "tune" or stage.sweep is None:
        return []
    sweep = params.sweeps[stage.sweep]
    rows = []
    trials_dir = paths.sweep_trials_dir(paths.sweep_dir(params, stage.sweep))
    for trial in expand_trials(sweep, stage.sweep):
        tp = trial_params(params, sweep.job, trial)
        for run in chain_runs(tp, sweep.job, trials_dir / trial.variant):  # one process each (tune.py)
            label = f"{stage.name}/{trial.variant}/{run.stage}"
            rows.append(stage_plan(tp, label, sweep.job, run.stage, gpu_mem_gb, speed, 1))
    return rows


def totals(rows: Sequence[StagePlan], seeds: int) -> dict[str, float]:
    gpu_hours = sum(r.gpu_hours for r in rows)
    return {
        "stages": len(rows),
        "images": sum(r.images for r in rows),
        "gpu_hours": gpu_hours,
        "gpu_hours_per_seed": gpu_hours / max(1, seeds),
        "max_memory_gb": max((r.memory_gb for r in rows), default=0.0),
    }


def make_plan(
    files: ParamsFiles,
    targets: Sequence[str],
    overrides: Sequence[str] = (),
    gpu_mem_gb: float = 80.0,
    mfu: float | None = None,
) -> dict[str, Any]:
    """The plan of `targets` of the profile `files` (the JSON `densepred plan --out` writes)."""
    params = load_params(files, list(overrides))
    stages = build_stages(params, files, list(overrides))
    speed = throughput(mfu=mfu)
    cache: dict[str, list[StagePlan]] = {}
    loaded: dict[tuple[str, ...], Params] = {}  # the profile under each stage's overrides, read once
    out: dict[str, Any] = {"profile": params.profile, "gpu_mem_gb": gpu_mem_gb, "throughput": speed.source}
    out["memory_method"] = "engine/memory.py: fp32 weights+grads+optimiser state + traced saved activations"
    seeds = max(len(params.job_seeds(j)) for j in params.jobs)
    union: dict[str, StagePlan] = {}
    out["targets"] = {}
    for target in targets:
        rows = []
        for stage in needed_stages(stages, target):
            if stage.name not in cache:
                if stage.overrides not in loaded:
                    loaded[stage.overrides] = load_params(files, list(stage.overrides))
                cache[stage.name] = rows_of(stage, loaded[stage.overrides], gpu_mem_gb, speed)
            rows += cache[stage.name]
        union.update({r.stage: r for r in rows})
        out["targets"][target] = {"totals": totals(rows, seeds), "stages": [r.stage for r in rows]}
    out["stages"] = [asdict(r) for r in union.values()]
    out["totals"] = totals(list(union.values()), seeds)
    return out


COLUMNS = (
    ("stage", "stage"),
    ("params_m", "params M"),
    ("train_gflops_per_image", "GFLOP/img"),
    ("images", "images"),
    ("processes", "procs"),
    ("accumulation", "accum"),
    ("micro_batch", "micro"),
    ("memory_gb", "mem GB"),
    ("fit_micro_batch", "fit micro"),
    ("fit_accumulation", "fit accum"),
    ("fit_gpus", "fit GPUs"),
    ("gpu_hours", "GPU-h"),
)


def _cell(value: Any) -> str:
    """Integers with thousands separators; floats to 3 significant digits below 100, else whole."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render(plan: dict[str, Any]) -> str:
    """The plan as a plain-text table, then the totals."""
    cells = [[title for _, title in COLUMNS]]
    cells += [[_cell(row[key]) for key, _ in COLUMNS] for row in plan["stages"]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(_pad(c, w, i) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.append("")
    lines.append(f"profile {plan['profile']}; fit for {plan['gpu_mem_gb']:g} GB GPUs; {plan['throughput']}")
    lines.append(f"memory: {plan['memory_method']}")
    for target, info in plan["targets"].items():
        lines.append(_total_line(target, info["totals"]))
    lines.append(_total_line("everything above", plan["totals"]))
    return "\n".join(lines)


def _pad(cell: str, width: int, column: int) -> str:
    return cell.ljust(width) if column == 0 else cell.rjust(width)


def _total_line(label: str, t: dict[str, float]) -> str:
    return (
        f"{label}: {t['stages']} training stages, {t['images']:,} images, {_cell(t['gpu_hours'])} GPU-hours "
        f"({_cell(t['gpu_hours_per_seed'])} per seed), peak {_cell(t['max_memory_gb'])} GB per process"
    )
