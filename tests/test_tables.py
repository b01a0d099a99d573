"""Results table 2 from evaluation files: the mIoU conventions and delta_m, on fake evaluation results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import PAPER
from densepred.config import Params
from densepred.params_loading import validate
from densepred.paths import eval_path, reference_path
from densepred.tables import table2, write_tables

# Per task: the flat metrics `densepred evaluate` writes (a subset), as functions of a job's number n,
# so every job and every metric has its own value.
TASK_METRICS = {
    "semseg": lambda n: {"semseg/miou": 40.0 + n, "semseg/miou_all": 30.0 + n},
    "depth": lambda n: {"depth_eigen/rms": 0.5 + n / 100, "depth_mtl/rms": 0.6 + n / 100},
    "normals": lambda n: {"normals/mean": 20.0 + n},
    "edge": lambda n: {"edge/odsf": 70.0 + n},
}


# What the trivial reference (densepred reference) writes: every task, worse than any fake job.
REFERENCE_METRICS = {
    "semseg/miou": 2.0,
    "semseg/miou_all": 1.5,
    "depth_eigen/rms": 1.1,
    "depth_mtl/rms": 1.2,
    "normals/mean": 45.0,
    "edge/odsf": 0.0,
    "meta": {"job": "reference", "tasks": ["semseg", "depth", "normals", "edge"]},
}


def write_reference(params: Params) -> None:
    """The trivial reference's NYUD-v2 evaluation file, which table 2 shows below the jobs."""
    path = Path(reference_path(params, "nyud"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(REFERENCE_METRICS))


def _with_runs(params: Params, runs: Path) -> Params:
    return params.model_copy(update={"paths": params.paths.model_copy(update={"runs": str(runs)})})


def _write_results(params: Params) -> dict[str, dict[str, float]]:
    """A fake NYUD-v2 evaluation file for every finetuned job and seed; returns job -> metrics."""
    written = {}
    for n, (name, job) in enumerate(params.jobs.items()):
        if job.finetune is None:
            continue
        metrics: dict = {"meta": {"params_m": 1.0 + n, "gflops": 2.0}}
        for task in job.tasks:
            metrics.update(TASK_METRICS[task](n))
        for seed in params.job_seeds(
            name
        ):  # the same results for every seed (tests/test_seeds.py varies them)
            path = Path(eval_path(params, name, "nyud", seed))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(metrics))
        written[name] = metrics
    write_reference(params)
    return written


@pytest.fixture
def smoke(smoke_tree, tmp_path) -> Params:
    return _with_runs(validate(smoke_tree, "smoke"), tmp_path / "runs")


def _row(frame: pd.DataFrame, job: str) -> pd.Series:
    rows = frame[frame["job"] == job]
    assert len(rows) == 1, job
    return rows.iloc[0]


def test_miou_pct_is_the_all_classes_mean_and_the_present_mean_has_its_own_column(smoke):
    results = _write_results(smoke)
    frame = table2(smoke)
    columns = list(frame.columns)
    i = columns.index("miou_pct")
    assert columns[i : i + 4] == ["miou_pct", "miou_pct_std", "miou_pct_n", "miou_present_pct"]
    for job in ("polymax_semseg", "mqtransformer", "stl_semseg"):
        assert _row(frame, job)["miou_pct"] == results[job]["semseg/miou_all"]
        assert _row(frame, job)["miou_present_pct"] == results[job]["semseg/miou"]
    depth_only = _row(frame, "polymax_depth")
    assert math.isnan(depth_only["miou_pct"]) and math.isnan(depth_only["miou_present_pct"])


def test_delta_m_uses_the_published_metrics_of_each_reference(smoke):
    results = _write_results(smoke)
    frame = table2(smoke)
    multi = results["mqtransformer"]
    refs = smoke.jobs["mqtransformer"].delta_m_refs
    single = {task: results[job] for task, job in refs.items()}
    terms = []
    for task, (key, sign) in {
        "semseg": ("semseg/miou_all", 1),
        "depth": ("depth_mtl/rms", -1),
        "normals": ("normals/mean", -1),
        "edge": ("edge/odsf", 1),
    }.items():
        terms.append(sign * (multi[key] - single[task][key]) / single[task][key])
    expected = 100.0 * sum(terms) / 4
    assert _row(frame, "mqtransformer")["delta_m_pct"] == pytest.approx(expected, rel=1e-12)
    for job in set(refs.values()):
        assert _row(frame, job)["delta_m_pct"] == 0.0  # the single-task baselines
    assert math.isnan(_row(frame, "polymax_semseg")["delta_m_pct"])  # no references: empty cell


def test_delta_m_needs_a_reference_for_every_task(smoke_tree, tmp_path):
    del smoke_tree["jobs"]["mqtransformer"]["delta_m_refs"]["edge"]
    params = _with_runs(validate(smoke_tree, "smoke"), tmp_path / "runs")
    _write_results(params)
    with pytest.raises(ValueError, match=r"jobs.mqtransformer: .*no single-task reference.*'edge'"):
        table2(params)


def test_table2_csv_is_byte_stable(smoke, tmp_path):
    _write_results(smoke)
    path, runs = write_tables(smoke, tmp_path / "results", only="table2")
    assert runs.name == "table2_runs.csv"
    first, first_runs = path.read_bytes(), runs.read_bytes()
    write_tables(smoke, tmp_path / "results", only="table2")
    assert path.read_bytes() == first and runs.read_bytes() == first_runs
    header = first.decode().splitlines()[0]
    assert header.startswith(
        "model,backbone,pretraining,tasks,profile,dataset,job,seeds,miou_pct,miou_pct_std,miou_pct_n,"
        "miou_present_pct"
    )


def test_paper_profile_compares_the_papers_miou_with_the_all_classes_mean(tmp_path):
    params = _with_runs(validate(yaml.safe_load(PAPER.read_text()), "paper"), tmp_path / "runs")
    results = _write_results(params)
    frame = table2(params)
    columns = list(frame.columns)
    assert columns[columns.index("miou_pct") + 1 : columns.index("miou_pct") + 6] == [
        "miou_pct_paper",
        "miou_pct_diff",
        "miou_pct_std",
        "miou_pct_n",
        "miou_present_pct",
    ]
    assert "miou_present_pct_paper" not in columns
    semseg = frame[frame["model"] == "polymax"].dropna(subset=["miou_pct", "miou_pct_paper"])
    assert len(semseg) >= 1  # the PolyMaX semseg job(s)
    for _, row in semseg.iterrows():
        assert row["miou_pct_diff"] == pytest.approx(
            results[row["job"]]["semseg/miou_all"] - row["miou_pct_paper"], rel=1e-12
        )


def test_table2_ends_with_one_reference_row_per_task(smoke):
    results = _write_results(smoke)
    frame = table2(smoke)
    refs = frame[frame["model"] == "reference"]
    assert list(refs["job"]) == ["reference_semseg", "reference_depth", "reference_normals", "reference_edge"]
    assert list(refs.index) == list(range(len(frame) - 4, len(frame)))  # below every job
    semseg = _row(frame, "reference_semseg")
    assert semseg["miou_pct"] == REFERENCE_METRICS["semseg/miou_all"] and semseg["miou_pct_n"] == 1
    assert math.isnan(semseg["depth_rms"]) and pd.isna(semseg["depth_rms_n"])  # its own task only
    assert _row(frame, "reference_depth")["depth_rms"] == REFERENCE_METRICS["depth_eigen/rms"]
    assert _row(frame, "reference_edge")["edge_odsf_pct"] == 0.0
    assert all(math.isnan(v) for v in refs["delta_m_pct"])
    # every fake job beats the reference on its own primary metric
    assert _row(frame, "stl_depth")["depth_rms"] < _row(frame, "reference_depth")["depth_rms"]
    assert results["stl_semseg"]["semseg/miou_all"] > semseg["miou_pct"]


def test_table2_needs_the_reference(smoke):
    _write_results(smoke)
    Path(reference_path(smoke, "nyud")).unlink()
    with pytest.raises(FileNotFoundError, match="reference"):
        table2(smoke)
