"""How far each smoke model gets above the trivial reference, over seeds (the margin table).

For every job that feeds table 2 (or `--jobs`), and every seed of `--seeds`, runs the job's chain
(pretrain -> finetune -> evaluate on NYUD-v2) exactly as the pipeline does (`StageRun`, `train_job`,
`evaluate_job`, with `--set seed=<k>`), in worker processes of one thread each, and scores the
trivial reference (engine/reference.py) on the same split. It prints, per job and task, the primary metric
(mIoU over all classes, depth RMS, normals mean angle, odsF) as mean and sample std over the seeds,
the reference's value, and the margin in standard deviations; then Delta_m's mean and 95 % t-interval
for the multi-task jobs (paired by seed with the single-task references, as table 2 does); then the
wall time of each stage.

    python bench/bench_learning.py --seeds 0 1 2                       # every table-2 job
    python bench/bench_learning.py --jobs stl_semseg --seeds 0 1 2 --set presets.mtl_finetune.iterations=200

It needs the prepared data of the profile (`snakemake --cores all data/smoke/prepared/nyud
data/smoke/prepared/taskonomy`) and writes its runs under `--work` (default a temporary folder).
MLflow tracking is off (DENSEPRED_TRACKING=off).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from densepred.launch import kernel_env

ROOT = Path(__file__).resolve().parents[1]

# task -> (metrics-JSON key, higher is better)
PRIMARY = {
    "semseg": ("semseg/miou_all", True),
    "depth": ("depth_eigen/rms", False),
    "normals": ("normals/mean", False),
    "edge": ("edge/odsf", True),
}


def _params(profile: str, sets: list[str], work: Path, seed: int | None = None) -> Any:
    from densepred.params_loading import load_params

    seed_set = [f"seed={seed}"] if seed is not None else []
    return load_params(profile, [*sets, f"paths.runs={work / 'runs'}", *seed_set])


def run_chain(profile: str, sets: list[str], work: Path, job: str, seed: int) -> dict[str, Any]:
    """One job's chain for one seed, in this process (one thread); returns its NYUD metrics and the
    wall time of each stage."""
    import torch

    torch.set_num_threads(1)
    from densepred import paths
    from densepred.engine.evaluate import evaluate_job
    from densepred.engine.train import train_job
    from densepred.stage_run import StageRun

    params = _params(profile, sets, work, seed)
    cfg = params.jobs[job]
    run_dir = work / "runs" / job / f"seed{seed}"
    last, times = None, {}
    for stage in ("pretrain", "finetune"):
        if getattr(cfg, stage) is None:
            continue
        folder = paths.stage_dir(run_dir, stage)
        start = time.perf_counter()
        train_job(StageRun.train(params, job, stage, folder, last))
        times[stage] = time.perf_counter() - start
        last = paths.final_checkpoint(folder)
    out = run_dir / "eval" / "nyud.json"
    start = time.perf_counter()
    result = evaluate_job(StageRun.evaluate(params, job, last, out, "nyud"))
    times["evaluate"] = time.perf_counter() - start
    return {
        "job": job,
        "seed": seed,
        "metrics": {k: v for k, v in result.items() if k != "meta"},
        "times": times,
    }


def reference(profile: str, sets: list[str], work: Path) -> dict[str, Any]:
    from densepred.engine.reference import evaluate_reference

    return evaluate_reference(_params(profile, sets, work), "nyud", work / "reference.json")


def margin_table(runs: list[dict[str, Any]], ref: dict[str, Any], jobs: dict[str, list[str]]) -> list[str]:
    from densepred.seeds import spread

    lines = [
        f"{'job':<18}{'task':<9}{'metric':<17}{'mean':>9}{'std':>8}{'reference':>11}{'margin (std)':>14}"
    ]
    for job, tasks in jobs.items():
        for task in tasks:
            key, higher = PRIMARY[task]
            values = [r["metrics"][key] for r in runs if r["job"] == job]
            s = spread(values)
            mean, std = s.mean, s.std
            gain = (mean - ref[key]) if higher else (ref[key] - mean)
            margin = gain / std if std and std > 0 else math.inf
            lines.append(
                f"{job:<18}{task:<9}{key:<17}{mean:>9.4f}{std:>8.4f}{ref[key]:>11.4f}{margin:>14.1f}"
            )
    return lines


def delta_m_lines(runs: list[dict[str, Any]], params: Any) -> list[str]:
    from densepred.metrics import multitask_delta_m
    from densepred.seeds import t_interval

    by = {(r["job"], r["seed"]): r["metrics"] for r in runs}
    lines = []
    for name, job in params.jobs.items():
        if not job.delta_m_refs:
            continue
        seeds = sorted(s for j, s in by if j == name)
        values = []
        for seed in seeds:
            refs = {t: by.get((ref, seed)) for t, ref in job.delta_m_refs.items()}
            if any(v is None for v in refs.values()):
                break
            values.append(multitask_delta_m(by[name, seed], refs, job.tasks))
        if len(values) == len(seeds) and values:
            low, high = t_interval(values)
            mean = sum(values) / len(values)
            half = (high - low) / 2
            lines.append(
                f"Delta_m {name}: mean {mean:.2f} %, 95% interval [{low:.2f}, {high:.2f}] (+-{half:.2f})"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default=str(ROOT / "params" / "smoke.yaml"))
    parser.add_argument("--jobs", nargs="*", help="jobs to run (default: every job feeding table 2)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workers", type=int, default=2, help="chains run at once (one thread each)")
    parser.add_argument("--work", help="folder for the runs (default: a temporary folder)")
    parser.add_argument("--json", help="write every run's metrics and times here")
    args = parser.parse_args()
    os.environ["DENSEPRED_TRACKING"] = "off"
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_learning_")).resolve()
    params = _params(args.params, args.set, work)
    names = args.jobs or [
        n for n, j in params.jobs.items() if "table2" in j.tables and j.finetune is not None
    ]
    unknown = [n for n in names if n not in params.jobs]
    if unknown:
        sys.exit(f"unknown jobs {unknown}; the profile has {list(params.jobs)}")
    # The kernel pins of `runtime.cpu_kernels` (launch.kernel_env), as the pipeline's stages get them:
    # set before the workers start, which are spawned so that they import torch afresh.
    os.environ.update(kernel_env(params.runtime))
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        ref_future = pool.submit(reference, args.params, args.set, work)
        futures = [
            pool.submit(run_chain, args.params, args.set, work, n, s) for s in args.seeds for n in names
        ]
        ref = ref_future.result()
        runs = [f.result() for f in futures]
    wall = time.perf_counter() - start
    print("\n".join(margin_table(runs, ref, {n: list(params.jobs[n].tasks) for n in names})))
    print("\n".join(delta_m_lines(runs, params)))
    stage_times: dict[str, list[float]] = {}
    for r in runs:
        for stage, t in r["times"].items():
            stage_times.setdefault(f"{r['job']}/{stage}", []).append(t)
    print(
        "stage wall times (s, median over seeds, one thread): "
        + ", ".join(f"{k} {sorted(v)[len(v) // 2]:.1f}" for k, v in stage_times.items())
    )
    print(f"total wall {wall:.0f} s with {args.workers} workers; runs under {work}")
    if args.json:
        Path(args.json).write_text(json.dumps({"reference": ref, "runs": runs, "wall_s": wall}, indent=1))


if __name__ == "__main__":
    main()
