"""MLflow runs of real train and evaluate jobs: tags, per-step metrics, artifacts, final metrics; a
stage resumed after a failure continues its run."""

from __future__ import annotations

import json
import time

import pytest

from densepred.engine.train import NonFiniteLossError
from densepred.params_loading import load_params
from engine_fixtures import PoisonAt, evaluate, tiny_data, tiny_params_file, train  # noqa: F401 (fixtures)

JOB = "stl_depth"


def run_exp(client, params) -> str:
    return client.get_experiment_by_name(params.tracking.experiment).experiment_id


def test_train_and_evaluate_runs(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    from mlflow import MlflowClient

    import densepred.engine.train as train_module

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)  # artifacts resolve against the db's folder (as `mlflow ui` run there)
    monkeypatch.setenv("DENSEPRED_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    overrides = [f"jobs.{JOB}.finetune.{k}={v}" for k, v in (("iterations", 3), ("log_every", 1))]
    params = load_params(
        tiny_params_file(tiny_data, tmp_path), [*overrides, f"jobs.{JOB}.finetune.checkpoint_every=1"]
    )
    out = tmp_path / "run"

    real = train_module.build_criterion
    monkeypatch.setattr(train_module, "build_criterion", lambda *a: PoisonAt(real(*a), 2, "total"))
    with pytest.raises(NonFiniteLossError, match="step 2"):
        train(params, JOB, "finetune", out)
    run_id = json.loads((out / "tracking.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run_id).info.status == "FAILED"

    monkeypatch.setattr(train_module, "build_criterion", real)
    train(params, JOB, "finetune", out)  # resumes from step 1 and continues the same run
    assert len(client.search_runs([run_exp(client, params)])) == 1
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert json.loads((out / "tracking.json").read_text())["run_id"] == run_id
    tags = run.data.tags
    assert (tags["job"], tags["stage"], tags["kind"], tags["model"]) == (
        JOB,
        "finetune",
        "train",
        "stl_baseline",
    )
    assert tags["tasks"] == "depth" and tags["backbone"] == "test_convnext" and tags["profile"] == "smoke"
    assert run.data.params["job.finetune.iterations"] == "3"
    for key in ("total", "lr", "images_per_s", "grad_norm"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == [1, 2, 3], key
    assert {a.path for a in client.list_artifacts(run_id)} == {"config.yaml", "train_log.csv"}
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "nyud" and len(dataset_input.dataset.digest) == 32
    assert run.data.tags["weights_digest"] and run.data.tags["origin"] == "pipeline"

    before_ms = time.time() * 1000
    result = evaluate(params, JOB, out / "final.pt", tmp_path / "eval" / "metrics.json")
    after_ms = time.time() * 1000
    runs = client.search_runs([run_exp(client, params)], "tags.kind = 'evaluate'")
    assert len(runs) == 1
    evaluation = runs[0]
    tags = evaluation.data.tags
    assert tags["dataset"] == "nyud" and tags["stage"] == "evaluate" and tags["train_stage"] == "finetune"
    assert tags["checkpoint_weights_digest"] == run.data.tags["weights_digest"]
    assert tags["checkpoint_settings_hash"] == run.data.tags["settings_hash"]
    assert evaluation.inputs.dataset_inputs[0].dataset.digest == dataset_input.dataset.digest
    # opened before the work and closed after it: the run spans the writing of the metrics JSON
    written_ms = (tmp_path / "eval" / "metrics.json").stat().st_mtime * 1000
    assert (
        before_ms - 5 <= evaluation.info.start_time <= written_ms <= evaluation.info.end_time <= after_ms + 5
    )
    assert evaluation.data.metrics["depth_eigen/rms"] == pytest.approx(result["depth_eigen/rms"])
    assert evaluation.data.metrics["depth_mtl/rms"] == pytest.approx(result["depth_mtl/rms"])
    artifacts = {a.path for a in client.list_artifacts(evaluation.info.run_id)}
    assert artifacts == {"metrics.json", "metrics_figures"}
    figures = {a.path for a in client.list_artifacts(evaluation.info.run_id, "metrics_figures")}
    assert figures == {"metrics_figures/prediction_000.png", "metrics_figures/prediction_001.png"}

    # A retrain after a settings change is a new run with its own history; the old one is kept.
    longer = load_params(
        tiny_params_file(tiny_data, tmp_path), [*overrides, f"jobs.{JOB}.finetune.iterations=4"]
    )
    train(longer, JOB, "finetune", out)
    new_id = json.loads((out / "tracking.json").read_text())["run_id"]
    assert new_id != run_id
    assert len(client.search_runs([run_exp(client, params)], "tags.kind = 'train'")) == 2
    assert sorted(m.step for m in client.get_metric_history(new_id, "total")) == [1, 2, 3, 4]
    assert sorted(m.step for m in client.get_metric_history(run_id, "total")) == [1, 2, 3]
