"""stage_run.chain_runs: a job chain's stage runs are the pipeline's stages (settings, folders,
checkpoints), for a main chain, for Fig. 7's 0% point (no pretraining) and for a sweep trial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SMOKE
from densepred import paths
from densepred.params_loading import load_params
from densepred.pipeline import build_stages
from densepred.stage_run import chain_runs


@pytest.fixture(scope="module")
def smoke():
    return load_params(SMOKE)


@pytest.fixture(scope="module")
def stages(smoke):
    return {s.name: s for s in build_stages(smoke, "params/smoke.yaml")}


def _same_as_stages(runs, stages, names):
    """Each run is the pipeline stage of that name: its settings, its output and its --init."""
    assert [r.stage for r in runs] == [stages[n].train_stage or "evaluate" for n in names]
    for run, name in zip(runs, names, strict=True):
        stage = stages[name]
        assert json.dumps(run.identity(), sort_keys=True) == stage.settings, name
        assert (str(run.init) if run.init else None) == stage.init, name
        out = paths.final_checkpoint(run.out) if run.stage != "evaluate" else run.out
        assert str(out) == stage.outs[0], name


def test_main_chain_is_the_pipelines(smoke, stages):
    job = "polymax_depth"
    out = Path(paths.eval_path(smoke, job, "nyud"))
    runs = chain_runs(smoke, job, paths.run_dir(smoke, job), eval_out=out)
    names = [f"pretrain_{job}", f"finetune_{job}", f"evaluate_{job}_nyud"]
    _same_as_stages(runs, stages, names)
    assert runs[1].init == paths.final_checkpoint(runs[0].out)
    assert runs[2].init == paths.final_checkpoint(runs[1].out)


def test_figure7_zero_point_skips_the_pretraining(smoke, stages):
    job = "polymax_depth"
    run_dir = paths.figure7_run_dir(smoke, job, 0.0)
    out = Path(paths.figure7_eval_path(smoke, job, 0.0))
    runs = chain_runs(smoke, job, run_dir, skip_pretrain=True, eval_out=out, eval_dataset="nyud")
    _same_as_stages(runs, stages, [f"finetune_{job}_frac0", f"evaluate_{job}_frac0_nyud"])
    assert runs[0].init is None


def test_training_only_and_a_job_without_pretraining(smoke, stages, tmp_path):
    job = "polymax_depth"
    runs = chain_runs(smoke, job, paths.run_dir(smoke, job))  # no eval_out: no evaluation
    _same_as_stages(runs, stages, [f"pretrain_{job}", f"finetune_{job}"])
    trial = chain_runs(smoke, "stl_depth", tmp_path, eval_out=paths.trial_metrics(tmp_path))
    assert [(r.stage, r.out, r.init) for r in trial] == [
        ("finetune", tmp_path / "finetune", None),
        ("evaluate", tmp_path / "metrics.json", tmp_path / "finetune" / "final.pt"),
    ]
    assert trial[1].dataset == smoke.jobs["stl_depth"].evaluate.dataset


def test_a_chain_without_training_stages_is_empty(smoke, tmp_path):
    job = "polymax_depth"
    bare = smoke.model_copy(
        update={
            "jobs": {
                **smoke.jobs,
                job: smoke.jobs[job].model_copy(update={"pretrain": None, "finetune": None}),
            }
        }
    )
    assert chain_runs(bare, job, tmp_path, eval_out=tmp_path / "m.json") == []
