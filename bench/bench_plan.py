"""What planning costs on a built tree: `snakemake -n` and `dvc status`, median over repeated runs.

    python bench/bench_plan.py [--root .] [--target results/table2.csv] [--repeat 5]

Run it on a project where `make table2` (or the target) has been built, so both tools find nothing
to do and the figure is their fixed cost: Snakefile parse (params, stage list, the outputs' records
of records.py), DAG, and DVC's hashing of the lock. Prints one line per command and writes
bench/out/plan.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path


def timed(cmd: list[str], root: Path, repeat: int) -> dict[str, object]:
    """Run `cmd` in `root` `repeat` times after one warm-up; wall seconds and what it said last."""
    subprocess.run(cmd, cwd=root, capture_output=True, check=False)
    walls, out = [], ""
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
        walls.append(time.perf_counter() - start)
        out = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
    return {"cmd": " ".join(cmd), "median_s": statistics.median(walls), "runs_s": walls, "last_line": out[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=".")
    parser.add_argument("--target", default="results/table2.csv")
    parser.add_argument("--dvc-stage", default="table2")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    root = Path(args.root).resolve()
    results = [
        timed(["snakemake", "-n", args.target], root, args.repeat),
        timed(["dvc", "status", args.dvc_stage], root, args.repeat),
    ]
    for r in results:
        print(f"{r['cmd']:<40} median {r['median_s']:.2f} s over {args.repeat}  ({r['last_line']})")
    out = Path(__file__).parent / "out" / "plan.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
