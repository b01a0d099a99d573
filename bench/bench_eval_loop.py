"""Share of the metric updates in the real evaluation loop, for trained checkpoints of a pipeline run.

Runs `engine.evaluate.run_metrics` (data loading, forward, metric updates: the loop `densepred
evaluate` runs) on the job's evaluation split and times the `MetricSuite.update` calls inside it.
Needs the checkpoints of a finished smoke run (`make table2`):

    .venv/bin/python bench/bench_eval_loop.py [--jobs mqtransformer polymax_semseg stl_edge]
        [--repeats 5] [--params params/smoke.yaml]

Prints, per job, the median loop time, the median time of each meter's updates, their sum (the
time inside metric updates) and its share of the loop. Run it with OMP_NUM_THREADS=1, as the pipeline runs its
jobs; on a shared machine alternate runs of the versions you compare.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from densepred import paths
from densepred.engine import distributed as dist_utils
from densepred.engine.build import build_eval_dataset
from densepred.engine.checkpoint import load_checkpoint
from densepred.engine.evaluate import eval_loader, model_from_checkpoint, run_metrics
from densepred.engine.runtime import job_settings
from densepred.metrics import MetricSuite
from densepred.params_loading import load_params
from densepred.stage_run import StageRun


def timed_loop(
    model, data, suite: MetricSuite, runtime, env, batch_size: int
) -> tuple[float, dict[str, float]]:
    """(loop seconds, seconds inside each meter's updates) of one pass over `data`."""
    inside = dict.fromkeys(suite.meters, 0.0)
    for name, meter in suite.meters.items():
        meter.update = _timed(meter.update, inside, name)
    start = time.perf_counter()
    with torch.no_grad():
        run_metrics(model, eval_loader(data, batch_size, env), suite, runtime, env)
    return time.perf_counter() - start, inside


def _timed(update, totals: dict[str, float], name: str):
    """`update`, adding its wall time to totals[name]."""

    def timed_update(*args, **kwargs) -> None:
        start = time.perf_counter()
        update(*args, **kwargs)
        totals[name] += time.perf_counter() - start

    return timed_update


def measure(params_path: Path, job: str, repeats: int) -> tuple[float, dict[str, float]]:
    """Median loop seconds and median seconds per meter over `repeats` passes for `job`'s checkpoint."""
    params = load_params(params_path)
    ckpt_path = paths.final_checkpoint(paths.stage_dir(paths.run_dir(params, job), "finetune"))
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"{ckpt_path}: run the pipeline first (make table2)")
    env = dist_utils.setup("cpu")
    stage_run = StageRun.evaluate(params, job, ckpt_path, Path(paths.eval_path(params, job, "nyud")))
    eval_cfg = stage_run.eval_settings
    with job_settings(stage_run.runtime, env.device, stage_run.seed):
        model, meta = model_from_checkpoint(load_checkpoint(ckpt_path), ckpt_path)
        model.eval()
        data = build_eval_dataset(stage_run, list(meta["tasks"]))
        runs = []
        for _ in range(repeats):
            suite = MetricSuite.build(
                meta["tasks"],
                eval_cfg.dataset,
                meta["num_classes"],
                eval_cfg.boundary_thresholds,
                eval_cfg.eigen_crop,
            )
            runs.append(timed_loop(model, data, suite, stage_run.runtime, env, eval_cfg.batch_size))
    meters = {name: statistics.median(run[1][name] for run in runs) for name in runs[0][1]}
    return statistics.median(run[0] for run in runs), meters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params/smoke.yaml"))
    parser.add_argument("--jobs", nargs="+", default=["mqtransformer", "polymax_semseg", "stl_edge"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{'job':20s} {'loop ms':>9s} {'updates ms':>11s} {'share':>7s}   per meter (ms)")
    for job in args.jobs:
        loop, meters = measure(args.params, job, args.repeats)
        inside = sum(meters.values())
        per_meter = ", ".join(f"{name} {1e3 * seconds:.0f}" for name, seconds in meters.items())
        print(f"{job:20s} {loop * 1e3:9.0f} {inside * 1e3:11.0f} {100 * inside / loop:6.1f}%   {per_meter}")


if __name__ == "__main__":
    main()
