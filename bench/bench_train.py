"""Training throughput (images/s) and peak memory per model, at smoke and paper input sizes.

One training step = forward (under the engine's autocast), criterion, backward, optimiser step, on a
synthetic batch of the job's tasks at the stage's crop size (no data loading: this measures the
model, loss and optimiser). Models are built exactly as `densepred train` builds them, from the
profile's job config, with random initialisation (pretrained files are dropped: nothing is
downloaded). Each configuration runs in a fresh subprocess so that peak memory is its own:

    CPU:  peak resident set size of the process (ru_maxrss) and its growth over the RSS after the
          imports (the model, optimiser state and activations)
    CUDA: torch.cuda.max_memory_allocated

Every configuration runs `--warmup` untimed steps, then `--steps` timed ones; images/s is the batch
size divided by the median step time; the 1-minute load average is recorded with each row, since
other work on the machine slows CPU figures. On CUDA each (bf16 autocast on/off) x
(channels_last on/off) variant is measured, plus torch.compile with `--compile`. Paper-size CPU runs
use batch 1 by default (a ConvNeXt-L/Swin-L step at 480x640 takes seconds per image on a CPU).

    .venv/bin/python bench/bench_train.py [--profiles smoke paper] [--jobs polymax_depth ...]
        [--steps 5] [--warmup 2] [--threads N] [--device cpu|cuda|auto] [--compile]

Results are printed as a table and written to bench/out/bench_train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

from harness import (
    PROFILES,
    ROOT,
    build_training,
    load_job,
    peak_memory_mb,
    peak_rss_mb,
    rss_mb,
    run_child,
    synthetic_batch,
    timed_steps,
    train_step,
)

DEFAULT_JOBS = ("polymax_semseg", "polymax_depth", "mqtransformer", "deeplab_depth", "mtl_baseline")
OUT = ROOT / "bench" / "out" / "bench_train.json"


# ------------------------------------------------------------------------------ one configuration


def measure(config: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in this process; returns its row."""
    import torch

    from densepred.config import RuntimeCfg
    from densepred.engine.distributed import DistEnv
    from densepred.engine.runtime import to_device

    torch.set_num_threads(config["threads"])
    job, stage, _ = load_job(PROFILES[config["profile"]], config["job"])
    device = torch.device(config["device"])
    runtime = RuntimeCfg(amp=config["amp"], channels_last=config["channels_last"], compile=config["compile"])
    size = tuple(stage.crop)
    baseline = rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    training = build_training(job, stage, runtime, DistEnv(device=device))
    batch = synthetic_batch(list(job.tasks), stage.dataset, config["batch"], size, device)
    batch = to_device(batch, device, config["channels_last"] and device.type == "cuda")
    _, times = timed_steps(lambda: train_step(training, batch), config["warmup"], config["steps"], device)
    median = statistics.median(times)
    row = {
        **config,
        "model": job.model.name,
        "backbone": job.model.backbone,
        "tasks": ",".join(job.tasks),
        "input": f"{size[0]}x{size[1]}",
        "params_m": round(sum(p.numel() for p in training.model.parameters()) / 1e6, 3),
        "step_s_median": round(median, 4),
        "step_s_all": [round(t, 4) for t in times],
        "images_per_s": round(config["batch"] / median, 3),
        "loadavg_1m": round(os.getloadavg()[0], 2),  # other work on the machine slows the figures
    }
    if device.type == "cuda":
        row["peak_mem_mb"] = round(peak_memory_mb(device, baseline), 1)
    else:
        row["peak_mem_mb"] = round(peak_rss_mb(), 1)
        row["peak_mem_growth_mb"] = round(peak_memory_mb(device, baseline), 1)
    return row


# ------------------------------------------------------------------------------------------ driver


def configurations(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (profile, job, variant) to measure."""
    import torch

    from densepred.params_loading import load_params

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    variants = [("none", False)]
    if device == "cuda":
        variants = [("none", False), ("none", True), ("bf16", False), ("bf16", True)]
    configs = []
    for profile in args.profiles:
        params = load_params(PROFILES[profile])
        for job in args.jobs:
            if job not in params.jobs:
                continue
            stage = params.jobs[job].finetune or params.jobs[job].pretrain
            batch = args.batch or (1 if profile == "paper" and device == "cpu" else stage.batch_size)
            for amp, channels_last in variants:
                for compiled in [False, True] if args.compile else [False]:
                    configs.append(
                        {
                            "profile": profile,
                            "job": job,
                            "device": device,
                            "amp": amp,
                            "channels_last": channels_last,
                            "compile": compiled,
                            "batch": batch,
                            "steps": args.steps if profile == "smoke" else args.paper_steps,
                            "warmup": args.warmup,
                            "threads": args.threads,
                        }
                    )
    return configs


def run_child_row(config: dict[str, Any]) -> dict[str, Any]:
    """Measure `config` in a fresh interpreter (its own peak memory); errors become a row too."""
    rows, error = run_child(Path(__file__), config)
    if error is not None or not rows:
        return {**config, "error": error or "no output"}
    return rows[-1]


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'profile':7} {'job':16} {'input':8} {'batch':>5} {'device':6} {'amp':5} {'c_last':6} "
    header += f"{'img/s':>9} {'step s':>8} {'peak MiB':>9} {'growth':>8} {'params M':>9} {'load':>6}"
    print(header)
    for r in rows:
        if "error" in r:
            print(f"{r['profile']:7} {r['job']:16} ERROR {r['error']}")
            continue
        growth = r.get("peak_mem_growth_mb", float("nan"))
        print(
            f"{r['profile']:7} {r['job']:16} {r['input']:8} {r['batch']:>5} {r['device']:6} {r['amp']:5} "
            f"{r['channels_last']!s:6} {r['images_per_s']:>9.2f} {r['step_s_median']:>8.3f} "
            f"{r['peak_mem_mb']:>9.0f} {growth:>8.0f} {r['params_m']:>9.2f} {r['loadavg_1m']:>6.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["smoke", "paper"], choices=sorted(PROFILES))
    parser.add_argument("--jobs", nargs="+", default=list(DEFAULT_JOBS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps (smoke sizes)")
    parser.add_argument("--paper-steps", type=int, default=3, help="timed steps (paper sizes)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=None, help="override the batch size")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(json.loads(args.one))), flush=True)
        return
    rows = []
    for config in configurations(args):
        rows.append(run_child_row(config))
        print(
            json.dumps({k: rows[-1].get(k) for k in ("profile", "job", "images_per_s", "error")}), flush=True
        )
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
