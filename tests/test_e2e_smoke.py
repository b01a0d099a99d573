"""End to end: `snakemake --cores 2 results/table2.csv` on the smoke profile, in a scratch copy.

Checks that the produced table reproduces the committed `results/table2.csv` and `table2_runs.csv`
within the tolerances of densepred/table_check.py (printing every cell beyond them), that its
trivial-reference rows agree with trivial predictors computed here from the same prepared data, that
every model beats its reference by a margin, that a second run does nothing, and that editing one
job's params reruns only that job's chain.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import ROOT
from densepred.params_loading import load_params
from densepred.table_check import REFERENCE_MARGINS, check_report, margin_failures

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A scratch project: code linked, params copied (the tests edit them), nothing else."""
    work = tmp_path_factory.mktemp("e2e")
    for name in ("Snakefile", "workflow", "src", "pyproject.toml"):
        (work / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / "params", work / "params")
    return work


def _snakemake(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}:{env['PATH']}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    env["DENSEPRED_ROOT"] = str(work)
    return subprocess.run(
        [str(BIN / "snakemake"), *args], cwd=work, env=env, capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def table2(workdir: Path) -> pd.DataFrame:
    result = _snakemake(workdir, "--cores", "2", "results/table2.csv")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    return pd.read_csv(workdir / "results" / "table2.csv")


def _planned_jobs(output: str) -> dict[str, int]:
    """Rule -> count from a dry run's job table."""
    counts = {}
    for line in output.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def _samples(work: Path, dataset: str, split: str):
    from densepred.data.shards import ShardDataset

    params = load_params(work / "params" / "smoke.yaml")
    return ShardDataset(work / params.datasets[dataset].prepared, split)


def _trivial_depth_rms(work: Path) -> float:
    """Eigen-protocol RMS of predicting the training-set mean depth everywhere."""
    from densepred.metrics import DepthMeter

    train = [s["depth"] for s in _samples(work, "nyud", "train")]
    mean_depth = float(torch.cat([d[d > 0] for d in train]).mean())
    meter = DepthMeter("eigen")
    for s in _samples(work, "nyud", "test"):
        target = s["depth"][None]
        meter.update(torch.full_like(target, mean_depth), target)
    return meter.compute()["rms"]


def _best_constant_normal_error(work: Path) -> float:
    """Mean angular error (degrees) of the best single normal over a dense grid of directions."""
    normals = []
    for s in _samples(work, "nyud", "test"):
        n = s["normals"].reshape(3, -1)
        normals.append(n[:, n.norm(dim=0) > 0.5])
    gt = torch.cat(normals, dim=1)
    gt = gt / gt.norm(dim=0, keepdim=True)
    k = 4000  # Fibonacci sphere, plus the normalised mean direction
    i = torch.arange(k, dtype=torch.float64) + 0.5
    phi, theta = torch.acos(1 - 2 * i / k), math.pi * (1 + 5**0.5) * i
    dirs = torch.stack(
        [torch.cos(theta) * torch.sin(phi), torch.sin(theta) * torch.sin(phi), torch.cos(phi)], 1
    )
    mean = gt.double().mean(dim=1)
    dirs = torch.cat([dirs, (mean / mean.norm())[None]]).float()
    sub = gt[:, :: max(1, gt.shape[1] // 200_000)]
    angles = torch.rad2deg(torch.acos((dirs @ sub).clamp(-1, 1)))
    return float(angles.mean(dim=1).min())


def _majority_miou(work: Path) -> dict[str, float]:
    """mIoU (percent) of always predicting the training majority class on the test split: `miou`
    over the classes that occur, `miou_all` over all 40 (absent ones 0), as the table's
    `miou_present_pct` and `miou_pct` columns."""
    from densepred.metrics import SemsegMeter

    counts = np.zeros(40, dtype=np.int64)
    for s in _samples(work, "nyud", "train"):
        labels = s["semseg"][s["semseg"] != 255]
        counts += np.bincount(labels.numpy(), minlength=40)[:40]
    majority = int(counts.argmax())
    meter = SemsegMeter(40)
    for s in _samples(work, "nyud", "test"):
        meter.update(torch.full_like(s["semseg"], majority)[None], s["semseg"][None])
    result = meter.compute()
    return {"miou": result["miou"], "miou_all": result["miou_all"]}


def _row(table: pd.DataFrame, job: str) -> pd.Series:
    rows = table[table["job"] == job]
    assert len(rows) == 1, f"table2 has {len(rows)} rows for {job}"
    return rows.iloc[0]


def test_table2_rows_and_columns(table2):
    expected = {
        "polymax_semseg",
        "polymax_depth",
        "polymax_normals",
        "mqtransformer",
        "deeplab_semseg",
        "deeplab_depth",
        "deeplab_normals",
        "stl_semseg",
        "stl_depth",
        "stl_normals",
        "stl_edge",
        "mtl_baseline",
    }
    references = {f"reference_{t}" for t in ("semseg", "depth", "normals", "edge")}
    assert set(table2["job"]) == expected | references
    assert list(table2["job"][-4:]) == [f"reference_{t}" for t in ("semseg", "depth", "normals", "edge")]
    for column in (
        "miou_pct",
        "miou_present_pct",
        "depth_rms",
        "depth_abs_rel",
        "depth_log10",
        "depth_delta1",
        "depth_rms_mtl",
        "normals_mean",
        "normals_median",
        "normals_rms",
        "normals_a11_25_pct",
        "edge_odsf_pct",
        "delta_m_pct",
        "params_m",
        "gmacs",
        "gflops_2_per_mac",
    ):
        assert column in table2.columns
    assert math.isnan(_row(table2, "polymax_depth")["miou_pct"])  # empty where a model has no such task
    # Same IoU sum over 40 classes against over the classes that occur: never larger.
    semseg = table2.dropna(subset=["miou_pct"])
    assert len(semseg) == 6 and (semseg["miou_pct"] <= semseg["miou_present_pct"]).all()
    models = table2[table2["model"] != "reference"]
    assert np.allclose(models["gflops_2_per_mac"], 2 * models["gmacs"], atol=2e-4)  # 4 decimals
    assert math.isfinite(_row(table2, "mqtransformer")["delta_m_pct"])


@pytest.fixture(scope="module")
def floors(table2, workdir) -> dict[str, float]:
    """Trivial predictors on the same test split, keyed by the table column each one bounds: mean
    depth (Eigen RMS, as `depth_rms`), best constant normal, majority class (both mIoU conventions)."""
    majority = _majority_miou(workdir)
    return {
        "depth_rms": _trivial_depth_rms(workdir),
        "normals_mean": _best_constant_normal_error(workdir),
        "miou_pct": majority["miou_all"],
        "miou_present_pct": majority["miou"],
    }


def test_reference_rows_are_the_trivial_predictors(table2, floors):
    """The table's reference rows agree with the trivial predictors computed here independently."""
    assert _row(table2, "reference_semseg")["miou_pct"] == pytest.approx(floors["miou_pct"], abs=1e-4)
    assert _row(table2, "reference_semseg")["miou_present_pct"] == pytest.approx(
        floors["miou_present_pct"], abs=1e-4
    )
    assert _row(table2, "reference_depth")["depth_rms"] == pytest.approx(floors["depth_rms"], abs=1e-4)
    # the mean normal is no better than the best constant normal found by search
    assert _row(table2, "reference_normals")["normals_mean"] >= floors["normals_mean"] - 1e-3
    assert _row(table2, "reference_edge")["edge_odsf_pct"] == 0.0


def test_every_model_beats_the_trivial_reference_by_the_margin(table2):
    references = table2[table2["model"] == "reference"]
    failures = margin_failures(table2[table2["model"] != "reference"], references)
    assert not failures, f"margins {REFERENCE_MARGINS}: " + "; ".join(failures)


@pytest.mark.parametrize("name", ["table2.csv", "table2_runs.csv"])
def test_the_committed_table_is_reproduced(table2, workdir, name):
    """The table built here against the committed one: cell for cell equal when the profile pins its
    CPU kernels (the smoke default, bitwise on any x86-64 CPU with AVX2), else within table_check's
    tolerances. CI runs on whatever machine it gets, so over time this checks other CPU models; a
    failure lists every differing cell (README, "Reproducibility")."""
    exact = load_params(workdir / "params" / "smoke.yaml").runtime.cpu_kernels == "portable"
    reproduced, report = check_report(workdir / "results" / name, ROOT / "results" / name, exact)
    print(report)
    assert reproduced, report


def test_second_run_does_nothing_and_one_job_edit_reruns_its_chain(table2, workdir):
    again = _snakemake(workdir, "-n", "results/table2.csv")
    assert again.returncode == 0, again.stderr[-4000:]
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]

    params_file = workdir / "params" / "smoke.yaml"
    original = params_file.read_text()
    tree = yaml.safe_load(original)
    iterations = load_params(params_file).jobs["polymax_depth"].finetune.iterations
    tree["jobs"]["polymax_depth"]["finetune"]["iterations"] = iterations + 1  # this job only
    params_file.write_text(yaml.safe_dump(tree, sort_keys=False))
    try:
        plan = _snakemake(workdir, "-n", "results/table2.csv")
        assert plan.returncode == 0, plan.stderr[-4000:]
        jobs = _planned_jobs(plan.stdout + plan.stderr)
        assert jobs == {"finetune_polymax_depth": 1, "evaluate_polymax_depth_nyud": 1, "table2": 1}, jobs
    finally:
        params_file.write_text(original)


def test_synthetic_nyud_edit_keeps_taskonomy_and_pretraining(table2, workdir):
    params_file = workdir / "params" / "smoke.yaml"
    original = params_file.read_text()
    tree = yaml.safe_load(original)
    tree["synth"]["nyud"] = {**tree["synth"]["nyud"], "num_images": tree["synth"]["nyud"]["num_images"] + 1}
    params_file.write_text(yaml.safe_dump(tree, sort_keys=False))
    try:
        plan = _snakemake(workdir, "-n", "results/table2.csv")
        assert plan.returncode == 0, plan.stderr[-4000:]
        jobs = _planned_jobs(plan.stdout + plan.stderr)
        params = load_params(params_file)
        finetuned = {name for name, job in params.jobs.items() if job.finetune and "table2" in job.tables}
        assert jobs["synth_nyud"] == jobs["prepare_nyud"] == 1, jobs
        assert {rule for rule in jobs if rule.startswith("finetune_")} == {f"finetune_{n}" for n in finetuned}
        assert not [rule for rule in jobs if rule.startswith("pretrain_") or "taskonomy" in rule], jobs
    finally:
        params_file.write_text(original)
