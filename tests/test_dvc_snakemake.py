"""Snakemake and DVC drive the same DAG and agree, tested with the real `snakemake`, `dvc` and `git`.

A scratch project holds a copy of the code, the workflow and the smoke profile shrunk to two jobs
(PolyMaX depth with Taskonomy pretraining, the single-task depth baseline), tiny data and a few steps;
it is a git repository with DVC initialised, as a user's clone is.

- Snakemake -> DVC -> Snakemake: after `snakemake results/table2.csv` (whose onsuccess hook runs
  `dvc commit`), `dvc status` is clean, `dvc repro` runs nothing and `snakemake -n` plans nothing,
  also with the default profile named explicitly and from a moved copy of the project.
- `dvc exp run -S` on one job's finetuning iterations trains exactly that job's chain with the new
  value, leaves every other job's settings as they were, keeps the params file loadable, and
  `dvc params diff` shows the change.
- DVC -> Snakemake: after `dvc repro` of a fresh project, `snakemake -n` plans nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from densepred.dvc_stages import dvc_names
from densepred.params_loading import load_params
from densepred.pipeline import build_stages
from project_fixtures import TARGET, make_project, run

pytestmark = pytest.mark.slow


def _nothing_planned(root: Path, *args: str) -> None:
    plan = run(root, "snakemake", "-n", *args, TARGET)
    assert "Nothing to be done" in plan.stdout + plan.stderr, (plan.stdout + plan.stderr)[-3000:]


def _dvc_clean(root: Path) -> None:
    status = run(root, "dvc", "status", "table2")
    assert "up to date" in status.stdout, status.stdout[-3000:]


def _steps(root: Path, job: str, stage: str) -> int:
    path = root / "runs" / "smoke" / job / stage / "final.pt"
    return int(torch.load(path, map_location="cpu", weights_only=False)["step"])


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A scratch project after `snakemake --cores 2 results/table2.csv`."""
    root = make_project(tmp_path_factory.mktemp("agree") / "project")
    run(root, "snakemake", "--cores", "2", TARGET)
    return root


def test_snakemake_then_dvc_agree(built):
    _dvc_clean(built)
    before = {p: p.stat().st_mtime_ns for p in (built / "runs").rglob("final.pt")}
    repro = run(built, "dvc", "repro", "table2")
    assert "Running stage" not in repro.stdout, repro.stdout[-3000:]
    assert before == {p: p.stat().st_mtime_ns for p in (built / "runs").rglob("final.pt")}
    _nothing_planned(built)


def test_nothing_planned_with_the_profile_named_or_from_a_moved_copy(built):
    _nothing_planned(built, f"--configfile={built / 'params' / 'smoke.yaml'}")
    moved = built.parent / "moved"
    shutil.copytree(built, moved, symlinks=True)  # copy2 keeps the modification times, like `mv`
    try:
        _nothing_planned(moved)
    finally:
        shutil.rmtree(moved)


def test_dvc_exp_run_set_changes_one_job_chain(built):
    params_file = built / "params" / "smoke.yaml"
    before = load_params(params_file)
    pretrain_mtime = (built / "runs/smoke/polymax_depth/pretrain/final.pt").stat().st_mtime_ns
    other = (built / "runs/smoke/stl_depth/finetune/final.pt").stat().st_mtime_ns
    names = dvc_names(build_stages(before, params_file), params_file)
    override = "params/smoke.yaml:++jobs.polymax_depth.finetune.iterations=3"
    result = run(built, "dvc", "exp", "run", "-S", override, names["evaluate_polymax_depth_nyud"])
    ran = {line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")}
    expected = {names["finetune_polymax_depth"], names["evaluate_polymax_depth_nyud"]}
    assert ran == expected, result.stdout[-3000:]
    assert _steps(built, "polymax_depth", "finetune") == 3
    assert _steps(built, "stl_depth", "finetune") == 2
    assert (built / "runs/smoke/polymax_depth/pretrain/final.pt").stat().st_mtime_ns == pretrain_mtime
    assert (built / "runs/smoke/stl_depth/finetune/final.pt").stat().st_mtime_ns == other
    after = load_params(params_file)  # DVC rewrote the file: still loadable, same meaning elsewhere
    assert after.jobs["polymax_depth"].finetune.iterations == 3
    assert after.jobs["stl_depth"] == before.jobs["stl_depth"]
    assert after.presets == before.presets
    diff = run(built, "dvc", "params", "diff")
    assert "jobs.polymax_depth.finetune.iterations" in diff.stdout and "3" in diff.stdout, diff.stdout


def test_dvc_then_snakemake_agree(tmp_path):
    root = make_project(tmp_path / "project")
    run(root, "dvc", "repro", "table2")
    _nothing_planned(root)
