"""MLflow tracking: URI resolution, runs with tags/params/metrics/artifacts, the off switch, and
four processes logging into one fresh SQLite database at once without losing anything."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import pytest

from conftest import SMOKE
from densepred import tracking
from densepred.params_loading import load_params
from densepred.stage_run import StageRun

JOB = "polymax_depth"


def params_for(uri: str | None = None, experiment: str = "densepred-smoke"):
    overrides = [f"tracking.experiment={experiment}"] + ([f"tracking.uri={uri}"] if uri else [])
    return load_params(SMOKE, overrides)


def subject(params, stage: str) -> tracking.RunSubject:
    """What a training stage of JOB tracks (the output folder plays no part)."""
    return tracking.RunSubject.of_stage(StageRun.train(params, JOB, stage, Path("unused")))


@pytest.fixture(scope="module")
def shared_uri(tmp_path_factory) -> str:
    """One database for the single-process tests (creating a fresh one runs MLflow's migrations)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/shared.db"


def client_for(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DENSEPRED_ROOT", str(tmp_path))
    assert tracking.tracking_uri(params_for().tracking) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    relative = params_for("sqlite:///sub/x.db").tracking
    assert tracking.tracking_uri(relative) == f"sqlite:///{tmp_path.resolve()}/sub/x.db"
    assert tracking.tracking_uri(params_for("http://127.0.0.1:5000").tracking) == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////abs/env.db")
    assert tracking.tracking_uri(relative) == "sqlite:////abs/env.db"


def test_artifact_location_is_relative_to_the_db(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    assert tracking.artifact_location(uri, "exp") == "mlartifacts/exp"
    assert tracking.artifact_location("http://host:5000", "exp") is None
    assert tracking.artifact_root(uri, "mlartifacts/exp/1/artifacts") == str(
        tmp_path / "mlartifacts/exp/1/artifacts"
    )
    assert tracking.artifact_root(uri, "file:///elsewhere/a") == "file:///elsewhere/a"


def test_flatten():
    flat = tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": {}})
    assert flat == {"a.b": "1", "a.c": "[1, 2]", "d": "None", "e": "{}"}


def test_off_switch_imports_nothing_and_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("DENSEPRED_TRACKING", "off")
    uri = f"sqlite:///{tmp_path}/off.db"
    with tracking.start_run(subject(params_for(uri), "finetune"), "train") as run:
        assert isinstance(run, tracking.DisabledRun) and run.run_id is None
        run.log_metrics({"x": 1.0}, step=1)
    assert not (tmp_path / "off.db").exists()


def test_run_records_tags_params_metrics_artifacts_and_status(monkeypatch, tmp_path, shared_uri):
    monkeypatch.setenv("DENSEPRED_TRACKING", "on")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = shared_uri
    params = params_for(uri, "records")
    (tmp_path / "config.yaml").write_text("a: 1\n")
    with tracking.start_run(subject(params, "finetune"), "train") as run:
        for step in (10, 20):
            run.log_metrics({"depth/silog": 0.5 / step, "lr": 1e-3, "nan": float("nan")}, step=step)
        run.log_artifact(tmp_path / "config.yaml")
    client = client_for(uri)
    info = client.get_run(run.run_id)
    assert info.info.status == "FINISHED"
    tags = info.data.tags
    assert tags["job"] == JOB and tags["stage"] == "finetune" and tags["model"] == "polymax"
    assert tags["tasks"] == "depth" and tags["backbone"] == "test_convnext" and tags["profile"] == "smoke"
    assert tags["git_commit"] and tags["seed"] == "0"
    assert info.data.params["job.model.num_clusters"] == "16" and info.data.params["seed"] == "0"
    history = client.get_metric_history(run.run_id, "depth/silog")
    assert [(m.step, m.value) for m in history] == [(10, 0.05), (20, 0.025)]
    assert "nan" not in info.data.metrics
    db_dir = tracking.sqlite_path(uri).parent
    monkeypatch.chdir(db_dir)  # relative artifact locations resolve against the db's folder (mlflow ui's cwd)
    artifacts = [a.path for a in client.list_artifacts(run.run_id)]
    assert artifacts == ["config.yaml"]
    location = client.get_experiment_by_name(params.tracking.experiment).artifact_location
    assert location == "mlartifacts/records"
    assert (db_dir / "mlartifacts" / "records" / run.run_id / "artifacts" / "config.yaml").is_file()


def test_failure_marks_run_failed_and_reopen_continues_it(monkeypatch, shared_uri):
    monkeypatch.setenv("DENSEPRED_TRACKING", "on")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = shared_uri
    params = params_for(uri, "reopen")
    with (
        pytest.raises(RuntimeError, match="boom"),
        tracking.start_run(subject(params, "pretrain"), "train") as run,
    ):
        run.log_metrics({"loss": 1.0}, step=1)
        raise RuntimeError("boom")
    client = client_for(uri)
    assert client.get_run(run.run_id).info.status == "FAILED"
    with tracking.start_run(subject(params, "pretrain"), "train", run_id=run.run_id) as again:
        again.log_metrics({"loss": 0.9}, step=1)  # a step the run holds already: not logged twice
        again.log_metrics({"loss": 0.5}, step=2)
    assert again.run_id == run.run_id
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.run_id, "loss")] == [1, 2]
    assert len(client.search_runs([client.get_experiment_by_name("reopen").experiment_id])) == 1


def test_nesting_places_a_run_under_its_parent(monkeypatch, shared_uri):
    """A run started with `nesting` (a sweep trial's stage) is a child of the trial's run carrying the
    trial's tags; one started without is a top-level pipeline run."""
    monkeypatch.setenv("DENSEPRED_TRACKING", "on")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = params_for(shared_uri, "nesting")
    with tracking.start_run(subject(params, "finetune"), "train") as parent:
        pass
    nesting = tracking.Nesting(parent.run_id, {"sweep": "k", "variant": "v"})
    with tracking.start_run(subject(params, "finetune"), "train", nesting=nesting) as child:
        pass
    client = client_for(shared_uri)
    top, nested = (client.get_run(r.run_id).data.tags for r in (parent, child))
    assert top["origin"] == "pipeline" and "mlflow.parentRunId" not in top
    assert nested["origin"] == "sweep" and nested["mlflow.parentRunId"] == parent.run_id
    assert nested["sweep"] == "k" and nested["variant"] == "v" and nested["kind"] == "train"


def test_experiments_open_on_the_runs_table(monkeypatch, shared_uri):
    """MLflow's UI opens an experiment tagged `mlflow.experimentKind` = custom_model_development on
    its runs table: experiments the suite creates carry the tag, and one created earlier without it
    gets it when the suite next uses it."""
    monkeypatch.setenv("DENSEPRED_TRACKING", "on")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = client_for(shared_uri)
    client.create_experiment("made-before")  # as an older version of the suite left it
    assert "mlflow.experimentKind" not in client.get_experiment_by_name("made-before").tags
    for experiment in ("made-here", "made-before"):
        with tracking.start_run(subject(params_for(shared_uri, experiment), "finetune"), "train"):
            pass
        tags = client_for(shared_uri).get_experiment_by_name(experiment).tags
        assert tags["mlflow.experimentKind"] == "custom_model_development", experiment


# ------------------------------------------------------------------------------------- concurrency

STEPS = 25


def _writer(uri: str, index: int, artifact_dir: str, barrier) -> str:
    os.chdir(Path(uri.removeprefix("sqlite:///")).parent)
    os.environ["DENSEPRED_TRACKING"] = "on"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    params = params_for(uri)
    artifact = Path(artifact_dir) / f"artifact_{index}.txt"
    artifact.write_text(f"writer {index}\n")
    barrier.wait()  # every process opens the fresh database at the same moment
    with tracking.start_run(subject(params, "finetune"), "train", run_name=f"writer-{index}") as run:
        for step in range(STEPS):
            run.log_metrics({"loss": float(index * 1000 + step), "lr": 0.1}, step=step)
        run.log_artifact(artifact)
    return run.run_id


@pytest.mark.slow
def test_four_parallel_writers_lose_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/parallel.db"
    ctx = mp.get_context("spawn")
    barrier = ctx.Manager().Barrier(4)
    with ctx.Pool(4) as pool:
        run_ids = pool.starmap(_writer, [(uri, i, str(tmp_path), barrier) for i in range(4)])
    assert len(set(run_ids)) == 4
    client = client_for(uri)
    exp = client.get_experiment_by_name("densepred-smoke")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids)
    for run in runs:
        index = int(run.info.run_name.split("-")[1])
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [
            (s, float(index * 1000 + s)) for s in range(STEPS)
        ]
        assert len(client.get_metric_history(run.info.run_id, "lr")) == STEPS
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == [f"artifact_{index}.txt"]
        local = Path(
            client.download_artifacts(run.info.run_id, f"artifact_{index}.txt", str(tmp_path / "dl"))
        )
        assert local.read_text() == f"writer {index}\n"
