"""Data layer: smoke-dataset generation time and read throughput, raw files vs prepared shards.

Setting (params/smoke.yaml, synth): NYUD-v2 120 frames at 120x160 (official .mat layout, 40 test)
and Taskonomy 4 buildings x 100 views at 128x128 (with the two injected defects). Generation is
timed end to end (render + write) `--gen-runs` times; reading iterates every sample of every split
with all four tasks, in file order and in a random order, `--read-runs` times, for the raw reader
(`NYUDv2`, `Taskonomy`) and for `ShardDataset` over the prepared dataset. Figures are medians.

    .venv/bin/python bench/bench_data.py [--gen-runs 3] [--read-runs 5] [--workdir DIR]

Results are printed and written to bench/out/bench_data.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from densepred.data.nyud import NYUDv2
from densepred.data.prepare import DATASET_SPLITS, prepare_dataset
from densepred.data.shards import ShardDataset
from densepred.data.synthetic import synthesize_nyud, synthesize_taskonomy
from densepred.data.taskonomy import Taskonomy

NYUD = {"num_images": 120, "num_test": 40, "height": 120, "width": 160, "layout": "official"}
TASKONOMY = {"buildings": 4, "views_per_building": 100, "size": 128}


def generate(root: Path) -> dict[str, float]:
    """Seconds to write each smoke dataset (fresh directories)."""
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    synthesize_nyud(root / "nyud", seed=0, **NYUD)
    middle = time.perf_counter()
    synthesize_taskonomy(root / "taskonomy", seed=1, **TASKONOMY)
    end = time.perf_counter()
    return {"nyud": middle - start, "taskonomy": end - middle, "total": end - start}


def raw_readers(dataset: str, root: Path) -> list:
    if dataset == "nyud":
        return [NYUDv2(root, split) for split in DATASET_SPLITS["nyud"]]
    return [Taskonomy(root, split) for split in DATASET_SPLITS["taskonomy"]]


def read_all(datasets: list, order: str, seed: int) -> float:
    """Samples per second over every readable sample of `datasets`."""
    count, start = 0, time.perf_counter()
    for dataset in datasets:
        indices = np.arange(len(dataset))
        if order == "random":
            indices = np.random.default_rng(seed).permutation(indices)
        for i in indices:
            try:
                dataset[int(i)]
            except ValueError:  # the injected corrupt PNG (raw Taskonomy only)
                continue
            count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gen-runs", type=int, default=3)
    parser.add_argument("--read-runs", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "bench_data.json")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_data_"))
    warnings.simplefilter("ignore", UserWarning)

    gen = [generate(work / "raw") for _ in range(args.gen_runs)]
    results: dict = {"generation_s": {k: statistics.median(g[k] for g in gen) for k in gen[0]}}
    results["generation_s_runs"] = gen
    results["prepare_s"] = {}
    for dataset in ("nyud", "taskonomy"):
        start = time.perf_counter()
        prepare_dataset(dataset, work / "raw" / dataset, work / "prepared" / dataset)
        results["prepare_s"][dataset] = time.perf_counter() - start

    results["read_samples_per_s"] = {}
    for dataset in ("nyud", "taskonomy"):
        sources = {
            "raw": raw_readers(dataset, work / "raw" / dataset),
            "shards": [ShardDataset(work / "prepared" / dataset, s) for s in DATASET_SPLITS[dataset]],
        }
        for source, datasets in sources.items():
            for order in ("sequential", "random"):
                runs = [read_all(datasets, order, seed) for seed in range(args.read_runs)]
                results["read_samples_per_s"][f"{dataset}/{source}/{order}"] = statistics.median(runs)

    print(
        f"generation (median of {args.gen_runs}): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in results["generation_s"].items())
    )
    print("prepare: " + ", ".join(f"{k} {v:.1f} s" for k, v in results["prepare_s"].items()))
    print(f"read throughput, samples/s (median of {args.read_runs}):")
    for key, value in results["read_samples_per_s"].items():
        print(f"  {key:32s} {value:8.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
