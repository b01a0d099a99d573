"""Whichever tool ran last, a table never disagrees with its params: the real `snakemake`, `dvc` and
`git` on the scratch project of project_fixtures.py (a git + DVC repository with the smoke profile
shrunk to PolyMaX depth and the single-task depth baseline, two training steps per stage).

Each test starts from a copy of one built baseline (`snakemake results/table2.csv`, then committed,
as a user commits results), changes the workspace with ordinary commands, and checks that the next
`snakemake` reruns exactly what the outputs' own records say is stale (records.py), that the table
it writes equals the baseline's bitwise, and that `snakemake -n` and `dvc status` then agree.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from project_fixtures import TARGET, make_project, run

pytestmark = pytest.mark.slow

FINETUNE = Path("runs/smoke/stl_depth/finetune/final.pt")
EVAL = Path("runs/smoke/stl_depth/eval/nyud.json")
SHORTER = "params/smoke.yaml:++jobs.stl_depth.finetune.iterations=3"  # the profile trains 2 steps


def _steps(root: Path) -> int:
    return int(torch.load(root / FINETUNE, map_location="cpu", weights_only=True)["step"])


def _planned(root: Path) -> tuple[set[str], str]:
    """The rules `snakemake -n` plans, and everything it printed."""
    plan = run(root, "snakemake", "-n", TARGET)
    text = plan.stdout + plan.stderr
    return set(re.findall(r"^rule (\w+):", text, flags=re.M)), text


def _agree(root: Path, table: bytes) -> None:
    """table2 is the baseline's, and neither tool plans anything."""
    assert (root / TARGET).read_bytes() == table
    planned, text = _planned(root)
    assert not planned and "Nothing to be done" in text, text[-3000:]
    status = run(root, "dvc", "status", "table2")
    assert "up to date" in status.stdout, status.stdout[-3000:]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("stale") / "baseline")
    run(root, "snakemake", "--cores", "2", TARGET)
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "baseline results")
    return root


@pytest.fixture
def project(baseline, tmp_path) -> Path:
    """A copy of the built baseline (modification times kept, as `cp -a`)."""
    root = tmp_path / "project"
    shutil.copytree(baseline, root, symlinks=True)
    return root


def test_a_built_tree_agrees_with_its_params(project):
    """Every stage that keeps a record wrote one, and every record agrees."""
    for record in ("data/smoke/prepared/nyud/densepred-record.json", "results/records/table2.json"):
        assert (project / record).is_file(), record
    check = run(project, "densepred", "check", "--params", "params/smoke.yaml")
    assert "every existing output agrees with params/smoke.yaml" in check.stdout


def test_a_checkpoint_dvc_trained_under_other_settings_reruns_after_git_checkout(project):
    table = (project / TARGET).read_bytes()
    run(project, "dvc", "exp", "run", "-S", SHORTER, "table2")
    assert _steps(project) == 3
    run(project, "git", "checkout", "--", "params/smoke.yaml", "dvc.lock", "results/")
    planned, text = _planned(project)
    assert planned == {"finetune_stl_depth", "evaluate_stl_depth_nyud", "table2"}, text[-3000:]
    assert (
        f"densepred: finetune_stl_depth is stale: {FINETUNE} was made with other settings "
        "(settings.iterations: output 3, params 2)"
    ) in text
    run(project, "snakemake", "--cores", "2", TARGET)
    assert _steps(project) == 2
    _agree(project, table)


def test_a_snakemake_config_run_reverted_by_dvc_repro(project):
    table = (project / TARGET).read_bytes()
    run(
        project,
        "snakemake",
        "--cores",
        "2",
        TARGET,
        "--config",
        "jobs={stl_depth: {finetune: {iterations: 3}}}",
    )
    assert _steps(project) == 3 and (project / TARGET).read_bytes() != table
    repro = run(project, "dvc", "repro", "table2")
    ran = set(re.findall(r"Running stage '([^']+)'", repro.stdout))
    assert ran >= {"finetune_stl_depth", "evaluate_nyud@stl_depth"}, repro.stdout[-3000:]
    assert _steps(project) == 2
    _agree(project, table)


def test_dvc_exp_apply_of_the_baseline_experiment(project):
    """Evaluation JSONs are DVC metrics kept out of its cache, so applying an experiment restores the
    checkpoints but leaves the other experiment's evaluation: both tools must say so, and one
    `snakemake` run puts it right."""
    table = (project / TARGET).read_bytes()
    run(project, "dvc", "exp", "run", "-n", "baseline", "table2")
    run(project, "dvc", "exp", "run", "-n", "shorter", "-S", SHORTER, "table2")
    assert _steps(project) == 3
    run(project, "dvc", "exp", "apply", "baseline")
    assert _steps(project) == 2
    assert "modified" in run(project, "dvc", "status", "table2").stdout
    planned, text = _planned(project)
    assert planned == {"evaluate_stl_depth_nyud", "table2"}, text[-3000:]
    assert f"{EVAL} was made from other weights than the current {FINETUNE}" in text
    run(project, "snakemake", "--cores", "2", TARGET)
    _agree(project, table)


def test_dvc_lock_never_records_an_output_that_disagrees(project):
    """A run that may not rerun the stale finetuning (`--allowed-rules`) records nothing in dvc.lock
    and says which stage and why; `densepred check` says the same."""
    run(project, "dvc", "exp", "run", "-S", SHORTER, "table2")
    run(project, "git", "checkout", "--", "params/smoke.yaml", "dvc.lock", "results/")
    lock = (project / "dvc.lock").read_bytes()
    rules = ("evaluate_stl_depth_nyud", "table2")
    done = run(project, "snakemake", "--cores", "2", "--allowed-rules", *rules, "--", TARGET, check=False)
    assert done.returncode != 0
    assert (
        f"densepred: dvc.lock not updated: stage finetune_stl_depth: {FINETUNE} was made with other "
        "settings (settings.iterations: output 3, params 2)"
    ) in done.stderr, done.stderr[-3000:]
    assert (project / "dvc.lock").read_bytes() == lock
    check = run(project, "densepred", "check", "--params", "params/smoke.yaml", check=False)
    assert check.returncode == 2 and f"finetune_stl_depth: {FINETUNE} was made" in check.stdout
