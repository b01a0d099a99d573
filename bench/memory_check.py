"""Measured vs estimated peak memory of training steps on CPU (fp32), for `densepred plan`'s method.

    python bench/memory_check.py --params params/paper.yaml --job polymax_semseg --batch 1 2

For each batch size, in a fresh interpreter: the RSS before the model is built, then two training
steps of the job's stage (finetune, else pretrain; `--stage` picks) at its crop, built as
`densepred train` builds them (bench/harness.py), and the growth of the peak RSS over that baseline;
beside it the estimate of engine/memory.py (fp32: CPU runs without autocast). Prints one JSON line
per batch size and, with two or more, the measured and estimated growth per image (the slope, free of
the allocator's and the interpreter's fixed overheads).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness


def child(args: argparse.Namespace) -> None:
    import torch

    from densepred.engine.distributed import DistEnv
    from densepred.engine.memory import trace_cost

    overrides = ["runtime.device=cpu", "runtime.amp=none"]
    job_cfg, stage, runtime = harness.load_job(Path(args.params), args.job, overrides)
    if args.stage:
        stage = getattr(job_cfg, args.stage)
    torch.set_num_threads(max(1, runtime.threads))
    batch = harness.synthetic_batch(list(job_cfg.tasks), stage.dataset, args.batch[0], stage.crop, "cpu")
    baseline = harness.rss_mb()
    training = harness.build_training(job_cfg, stage, runtime, DistEnv())
    for _ in range(2):
        harness.train_step(training, batch)
    measured = harness.peak_rss_mb() - baseline
    cost = trace_cost(job_cfg.model, list(job_cfg.tasks), stage.dataset, stage.crop, amp=False)
    estimate = cost.peak_bytes(args.batch[0], stage.optimizer.name) / 2**20
    record = {"job": args.job, "crop": list(stage.crop), "batch": args.batch[0], "params": cost.params}
    record.update(measured_mb=round(measured), estimated_mb=round(estimate))
    record["estimated_mb_per_image"] = round(cost.activation_bytes_per_image / 2**20, 1)
    print(json.dumps(record), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--stage", choices=["pretrain", "finetune"])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        child(args)
        return
    rows = []
    for batch in args.batch:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            "--params",
            args.params,
            "--job",
            args.job,
            "--batch",
            str(batch),
        ]
        cmd += ["--stage", args.stage] if args.stage else []
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) >= 2:
        span = rows[-1]["batch"] - rows[0]["batch"]
        slope = {k: (rows[-1][k] - rows[0][k]) / span for k in ("measured_mb", "estimated_mb")}
        print(json.dumps({"per_image_mb": {k.split("_")[0]: round(v, 1) for k, v in slope.items()}}))


if __name__ == "__main__":
    main()
