"""Ray Tune overhead of a sweep: Ray start and stop, and a whole sweep of trials that do nothing.

Setting: a local Ray instance started the way `densepred.ray_cluster.ray_session` starts it
(`--cpus` CPUs, no dashboard, small object store), and a sweep of `--trials` settings of the smoke
`polymax_depth` job whose trial function returns at once, 1 CPU per trial, MLflow off. The sweep
figure is therefore what Ray Tune adds to the trials' own work (actor start per trial, scheduling,
experiment state, result files). Figures are medians over `--runs` runs.

    .venv/bin/python bench/bench_tune.py [--runs 3] [--trials 4] [--cpus 2] [--workdir DIR]

Results are printed and written to bench/out/bench_tune.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from densepred.params_loading import validate
from densepred.ray_cluster import ray_session
from densepred.tune import run_sweep

ROOT = Path(__file__).resolve().parents[1]


def time_ray(cpus: int) -> dict[str, float]:
    """Seconds to start a local Ray instance and to shut it down."""
    import ray

    start = time.perf_counter()
    with ray_session(cpus, {"RAY_CHDIR_TO_TRIAL_DIR": "0"}):
        started = time.perf_counter()
        ray.get(ray.remote(lambda: 1).remote())  # the first task: a worker is really up
        ready = time.perf_counter()
    return {
        "init_s": started - start,
        "first_task_s": ready - started,
        "shutdown_s": time.perf_counter() - ready,
    }


def _noop_trial(params, job, out, nesting):
    return {"depth_eigen/rms": 1.0}


def time_sweep(trials: int, cpus: int, workdir: Path, run: int) -> float:
    """Seconds for `run_sweep` over `trials` no-op trials (Ray start and stop included)."""
    tree = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    tree["sweeps"] = {
        "bench": {
            "job": "polymax_depth",
            "table": "ablation_k",
            "grid": {"model.num_clusters": list(range(1, trials + 1))},
        }
    }
    params = validate(tree, "bench")
    start = time.perf_counter()
    run_sweep(params, "bench", workdir / f"run{run}", trial_fn=_noop_trial, num_cpus=cpus)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("DENSEPRED_TRACKING", "off")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_tune_"))

    ray_runs = [time_ray(args.cpus) for _ in range(args.runs)]
    sweeps = [time_sweep(args.trials, args.cpus, workdir, i) for i in range(args.runs)]
    result = {
        "setting": {
            "runs": args.runs,
            "trials": args.trials,
            "cpus": args.cpus,
            "load_avg_1m": os.getloadavg()[0],
        },
        "ray_init_s": statistics.median(r["init_s"] for r in ray_runs),
        "ray_first_task_s": statistics.median(r["first_task_s"] for r in ray_runs),
        "ray_shutdown_s": statistics.median(r["shutdown_s"] for r in ray_runs),
        "sweep_noop_s": statistics.median(sweeps),
        "sweep_noop_per_trial_s": statistics.median(sweeps) / args.trials,
        "raw": {"ray": ray_runs, "sweep_s": sweeps},
    }
    print(json.dumps(result, indent=2))
    out = ROOT / "bench" / "out" / "bench_tune.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
