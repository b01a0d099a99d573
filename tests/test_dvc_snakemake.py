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

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT
from densepred.config import load_params

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
JOBS = ("polymax_depth", "stl_depth")
TARGET = "results/table2.csv"


def _shrink(tree: dict) -> dict:
    """The smoke profile with two jobs, tiny data and two training steps per stage."""
    tree["synth"]["nyud"].update(num_images=10, num_test=4, height=64, width=64)
    tree["synth"]["taskonomy"].update(buildings=3, views_per_building=4, size=64)
    tree["datasets"]["taskonomy"]["max_bad_fraction"] = 0.5  # synth plants a few corrupt files
    for preset in tree["presets"].values():
        preset["batch_size"] = 2
        if "iterations" in preset:
            preset.update(iterations=2, crop=[64, 64], checkpoint_every=1, log_every=1)
    tree["presets"]["eval"].update(boundary_thresholds=3, num_qualitative=1)
    tree["jobs"] = {name: tree["jobs"][name] for name in JOBS}
    for job in tree["jobs"].values():
        job["tables"] = ["table2"]
    del tree["figure7"], tree["sweeps"]
    return tree


def _project(root: Path) -> Path:
    """A git repository with DVC, the code, the workflow and the shrunk profile (and its dvc.yaml)."""
    root.mkdir(parents=True)
    for name in ("Snakefile", "pyproject.toml", ".dvcignore", ".gitignore"):
        shutil.copy2(ROOT / name, root / name)
    for name in ("src", "workflow", "params"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / ".dvc").mkdir()
    shutil.copy2(ROOT / ".dvc" / "config", root / ".dvc" / "config")
    shutil.copy2(ROOT / ".dvc" / ".gitignore", root / ".dvc" / ".gitignore")
    params = root / "params" / "smoke.yaml"
    params.write_text(yaml.safe_dump(_shrink(yaml.safe_load(params.read_text())), sort_keys=False))
    _run(root, "densepred", "dvc", "--params", "params/smoke.yaml")
    _run(root, "git", "init", "-q")
    _run(root, "git", "add", "-A")
    _run(root, "git", "commit", "-qm", "scratch project")
    return root


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}:{env['PATH']}",
        DENSEPRED_ROOT=str(root),
        DENSEPRED_TRACKING="off",
        GIT_AUTHOR_NAME="densepred",
        GIT_AUTHOR_EMAIL="densepred@localhost",
        GIT_COMMITTER_NAME="densepred",
        GIT_COMMITTER_EMAIL="densepred@localhost",
    )
    return env


def _run(root: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True, check=False)
    if check:
        assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def _nothing_planned(root: Path, *args: str) -> None:
    plan = _run(root, "snakemake", "-n", *args, TARGET)
    assert "Nothing to be done" in plan.stdout + plan.stderr, (plan.stdout + plan.stderr)[-3000:]


def _dvc_clean(root: Path) -> None:
    status = _run(root, "dvc", "status", "table2")
    assert "up to date" in status.stdout, status.stdout[-3000:]


def _steps(root: Path, job: str, stage: str) -> int:
    path = root / "runs" / "smoke" / job / stage / "final.pt"
    return int(torch.load(path, map_location="cpu", weights_only=False)["step"])


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A scratch project after `snakemake --cores 2 results/table2.csv`."""
    root = _project(tmp_path_factory.mktemp("agree") / "project")
    _run(root, "snakemake", "--cores", "2", TARGET)
    return root


def test_snakemake_then_dvc_agree(built):
    _dvc_clean(built)
    before = {p: p.stat().st_mtime_ns for p in (built / "runs").rglob("final.pt")}
    repro = _run(built, "dvc", "repro", "table2")
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
    override = "params/smoke.yaml:++jobs.polymax_depth.finetune.iterations=3"
    result = _run(built, "dvc", "exp", "run", "-S", override, "evaluate_polymax_depth_nyud")
    ran = {line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"finetune_polymax_depth", "evaluate_polymax_depth_nyud"}, result.stdout[-3000:]
    assert _steps(built, "polymax_depth", "finetune") == 3
    assert _steps(built, "stl_depth", "finetune") == 2
    assert (built / "runs/smoke/polymax_depth/pretrain/final.pt").stat().st_mtime_ns == pretrain_mtime
    assert (built / "runs/smoke/stl_depth/finetune/final.pt").stat().st_mtime_ns == other
    after = load_params(params_file)  # DVC rewrote the file: still loadable, same meaning elsewhere
    assert after.jobs["polymax_depth"].finetune.iterations == 3
    assert after.jobs["stl_depth"] == before.jobs["stl_depth"]
    assert after.presets == before.presets
    diff = _run(built, "dvc", "params", "diff")
    assert "jobs.polymax_depth.finetune.iterations" in diff.stdout and "3" in diff.stdout, diff.stdout


def test_dvc_then_snakemake_agree(tmp_path):
    root = _project(tmp_path / "project")
    _run(root, "dvc", "repro", "table2")
    _nothing_planned(root)
