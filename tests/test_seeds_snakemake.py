"""Two seeds through the real `snakemake`, on the scratch project of project_fixtures.py (the smoke
profile shrunk to PolyMaX depth and the single-task depth baseline, two training steps per stage).

`snakemake --config 'seeds=[0, 1]' results/table2.csv` trains and evaluates each job once per seed,
in per-seed folders; the two seeds give different results; table2.csv holds their mean, sample
standard deviation (ddof=1) and count, table2_runs.csv one row per (job, seed); and the same command
again plans nothing.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from project_fixtures import JOBS, TARGET, make_project, run

pytestmark = pytest.mark.slow

SEEDS = ("--config", "seeds=[0, 1]")
COLUMNS = {
    "depth_rms": "depth_eigen/rms",
    "depth_rms_mtl": "depth_mtl/rms",
    "depth_abs_rel": "depth_eigen/abs_rel",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A scratch project after a two-seed `snakemake --cores 2 results/table2.csv`."""
    root = make_project(tmp_path_factory.mktemp("seeds") / "project")
    start = time.monotonic()
    run(root, "snakemake", "--cores", "2", TARGET, *SEEDS)
    print(f"two-seed run: {time.monotonic() - start:.1f} s")
    return root


def _eval(root: Path, job: str, seed: int) -> dict:
    return json.loads((root / "runs" / "smoke" / job / f"seed{seed}" / "eval" / "nyud.json").read_text())


def test_each_seed_has_its_own_chain_and_results(built):
    for job in JOBS:
        ckpt = built / "runs" / "smoke" / job / "seed1" / "finetune" / "final.pt"
        assert torch.load(ckpt, map_location="cpu", weights_only=False)["meta"]["seed"] == 1
        seed0, seed1 = _eval(built, job, 0), _eval(built, job, 1)
        assert seed0["depth_eigen/rms"] != seed1["depth_eigen/rms"], job
    assert not (built / "runs" / "smoke" / "stl_depth" / "finetune").exists()  # no unsuffixed chain


def test_table_is_the_mean_and_sample_std_of_the_per_seed_results(built):
    table = pd.read_csv(built / "results" / "table2.csv").set_index("job")
    for job in JOBS:
        for column, key in COLUMNS.items():
            values = [_eval(built, job, seed)[key] for seed in (0, 1)]
            assert table.loc[job, column] == pytest.approx(statistics.mean(values), abs=5e-5)
            assert table.loc[job, f"{column}_std"] == pytest.approx(statistics.stdev(values), abs=5e-5)
            assert table.loc[job, f"{column}_n"] == 2
        assert table.loc[job, "seeds"] == "0+1"
    runs = pd.read_csv(built / "results" / "table2_runs.csv")
    assert sorted(zip(runs["job"], runs["seed"])) == sorted((j, s) for j in JOBS for s in (0, 1))


def test_rerun_with_the_same_seeds_plans_nothing(built):
    plan = run(built, "snakemake", "-n", TARGET, *SEEDS)
    assert "Nothing to be done" in plan.stdout + plan.stderr, (plan.stdout + plan.stderr)[-3000:]
