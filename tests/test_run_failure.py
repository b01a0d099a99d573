"""Why a run failed, when the tracking store is down: the error line and the log wait in the run's
journal (the log copied beside it) and reach the store with the journal's upload. The online path
is tested through the CLI in tests/faults/test_failed_runs.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SMOKE
from densepred import run_failure, tracking
from densepred.params_loading import load_params
from densepred.stage_run import StageRun

DOWN = "http://127.0.0.1:9"  # the discard port: nothing listens there
LINE = "densepred train: error: corrupt shard x.h5: contents differ from the digest"


def test_failure_while_the_store_is_down_is_uploaded_with_the_journal(tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    monkeypatch.setenv("DENSEPRED_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", DOWN)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    params = load_params(SMOKE, ["tracking.experiment=offline-failure"])
    subject = tracking.RunSubject.of_stage(StageRun.train(params, "stl_depth", "finetune", Path("unused")))
    journal = tmp_path / "run" / "tracking_pending.jsonl"
    with run_failure.watch() as watch:
        with pytest.raises(ValueError, match="boom"), tracking.start_run(subject, "train", journal=journal):
            print("[stl_depth/finetune] step 1/6")
            raise ValueError("boom")
        print(LINE)
        watch.failed(LINE)
    assert "[stl_depth/finetune] step 1/6" in capsys.readouterr().out  # still shown while captured
    events = tracking.Journal(journal).events()
    assert {"densepred.error": LINE} in [e.get("tags") for e in events]
    (kept,) = [Path(e["path"]) for e in events if e["op"] == "artifact"]
    assert kept.name == run_failure.LOG_ARTIFACT and kept.parent.parent == journal.parent
    assert kept.read_text().splitlines()[-2:] == ["[stl_depth/finetune] step 1/6", LINE]

    store = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.chdir(tmp_path)  # artifacts resolve against the db's folder
    (run_id,) = tracking.sync_journal(journal).values()
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["densepred.error"] == LINE
    assert [a.path for a in client.list_artifacts(run_id)] == [run_failure.LOG_ARTIFACT]
