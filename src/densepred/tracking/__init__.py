"""MLflow tracking: the one package that talks to MLflow.

One MLflow run per stage execution (a training stage, an evaluation, a sweep, a sweep trial), with
tags (git commit, profile, job, stage, model, tasks, backbone, kind, origin), flattened params,
per-step metrics, final metrics, artifacts and dataset inputs. What a run is about is a
`RunSubject`, taken from the stage's `StageRun` (or, for a sweep, from its job):

    with start_run(RunSubject.of_stage(stage_run), "train", journal=out / "tracking_pending.jsonl") as run:
        run.log_metrics({"depth/silog": 0.31, "lr": 5e-4}, step=10)
        run.log_artifact(out / "config.yaml")

The modules, each importing only those before it:

- `store.py`: which store (`tracking_uri`: MLFLOW_TRACKING_URI, else `tracking.uri` of the params,
  else the project's mlflow.db), its artifact location, opening a client, SQLite locking and retries;
- `provenance.py`: the git commit, a run's tags and params (`RunSubject`), where it sits in the runs
  table (`Nesting`), dataset inputs (`DatasetRecord`);
- `journal.py`: the offline journal a run writes while its store cannot be reached;
- `run.py`: the `Run` every caller types against, and its kinds (`MlflowRun`, `OfflineRun`,
  `DisabledRun`);
- `sync.py`: uploading journals once the store is back (`densepred sync-tracking`);
- `start.py`: `start_run`, which opens a stage's run in the store, else in its journal.

Experiments are tagged `mlflow.experimentKind` = `custom_model_development` (`EXPERIMENT_TAGS`, also
on experiments created before), so MLflow's UI opens them on the runs table. A run that fails under
the CLI gets its error line and log from run_failure.py.

Runs a user can compare:
- A resumed training continues its run (`run_id`) and logs only metric steps after the last one
  that run already holds, so no step appears twice.
- Sweep trials nest the runs of their stages: the trial passes `Nesting(trial_run_id, tags)` down
  to the `start_run` of each stage, which makes the run a child (`mlflow.parentRunId`) carrying the
  tags (sweep, variant); every run has `origin` = `pipeline` or `sweep`, so the top level of the runs
  table holds the pipeline's stage executions and one run per sweep.

`DENSEPRED_TRACKING=off` (or 0/false/no) turns tracking off: `start_run` then yields a `DisabledRun`
whose methods do nothing, and MLflow is not even imported.
"""

from __future__ import annotations

from densepred.tracking.journal import Journal
from densepred.tracking.provenance import (
    DatasetRecord,
    Nesting,
    RunSubject,
    flatten,
    git_commit,
    prepared_dataset,
    run_params,
    run_tags,
)
from densepred.tracking.run import DisabledRun, MlflowRun, OfflineRun, Run
from densepred.tracking.start import start_run
from densepred.tracking.store import (
    EXPERIMENT_TAGS,
    HTTP_DEFAULTS,
    artifact_location,
    artifact_root,
    missing_http_defaults,
    sqlite_path,
    tracking_enabled,
    tracking_uri,
)
from densepred.tracking.sync import sync_journal, sync_journals

__all__ = [
    "EXPERIMENT_TAGS",
    "HTTP_DEFAULTS",
    "DatasetRecord",
    "DisabledRun",
    "Journal",
    "MlflowRun",
    "Nesting",
    "OfflineRun",
    "Run",
    "RunSubject",
    "artifact_location",
    "artifact_root",
    "flatten",
    "git_commit",
    "missing_http_defaults",
    "prepared_dataset",
    "run_params",
    "run_tags",
    "sqlite_path",
    "start_run",
    "sync_journal",
    "sync_journals",
    "tracking_enabled",
    "tracking_uri",
]
