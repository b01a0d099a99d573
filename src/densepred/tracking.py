"""MLflow tracking: the one module that talks to MLflow.

One MLflow run per stage execution (a training stage, an evaluation, a sweep, a sweep trial), with
tags (git commit, profile, job, stage, model, tasks, backbone, kind, origin), flattened params,
per-step metrics, final metrics, artifacts and dataset inputs. What a run is about is a
`RunSubject`, taken from the stage's `StageRun` (or, for a sweep, from its job):

    with start_run(RunSubject.of_stage(stage_run), "train", journal=out / "tracking_pending.jsonl") as run:
        run.log_metrics({"depth/silog": 0.31, "lr": 5e-4}, step=10)
        run.log_artifact(out / "config.yaml")

Where runs go (`tracking_uri`): MLFLOW_TRACKING_URI, else `tracking.uri` of the params, else
`sqlite:///<project root>/mlflow.db`; a relative sqlite path is made absolute against the project
root, so a process that changed directory (a Ray Tune trial) still writes into the same database.

Artifacts of a sqlite store: experiments created here record the artifact location `mlartifacts/<name>`
*relative to the database's folder* (MLflow itself would store an absolute path, so a copied
project would keep writing into the original's folder). This module resolves it against the
database's folder when it writes; `mlflow ui` resolves it against its working directory, so start
the UI in the folder that holds mlflow.db (the project root).

A tracking outage never costs a run. Calls to a server use short HTTP timeouts and few retries
(`HTTP_DEFAULTS`, unless the MLFLOW_HTTP_REQUEST_* variables are set). When the store cannot be
reached, at the start or midway, the run prints ONE warning naming the URI and goes on writing what
it would have logged (tags, params, metrics with their steps and times, artifact paths, dataset
inputs, its end status) to its *journal*, a JSON-lines file in its run folder
(`paths.tracking_journal`, `paths.eval_tracking_journal`). `sync_journals` (`densepred
sync-tracking`), or the next run of the same stage, uploads a journal once the server is back and
removes it: each journaled run is uploaded exactly once (a run created from a journal is tagged
`densepred.local_id`, so an interrupted upload is found and replaced, and metric steps already in
a continued run are skipped).

Experiments are tagged `mlflow.experimentKind` = `custom_model_development` (`EXPERIMENT_TAGS`, also
on experiments created before), so MLflow's UI opens them on the runs table. A run that fails under
the CLI gets its error line and log from run_failure.py.

Runs a user can compare:
- A resumed training continues its run (`run_id`) and logs only metric steps after the last one
  that run already holds, so no step appears twice.
- Sweep trials nest the runs of their stages: `nested_under(trial_run_id, tags)` makes every run
  started inside it a child (`mlflow.parentRunId`) carrying the tags (sweep, variant); every run
  has `origin` = `pipeline` or `sweep`, so the top level of the runs table holds the pipeline's
  stage executions and one run per sweep.

Parallel writers on SQLite (MLflow issues 4123 and 10334, hydraflow 245): a fresh database is initialised
and the experiment created under an exclusive file lock (`<db>.lock`), so concurrent processes never race
on schema migrations or on creating the same experiment; MLflow's sessions already set a 20 s busy
timeout, and every write is retried with backoff when SQLite still reports "database is locked".

`DENSEPRED_TRACKING=off` (or 0/false/no) turns tracking off: `start_run` then yields a `NullRun`
whose methods do nothing, and MLflow is not even imported.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import hashlib
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from densepred.config import JobCfg, Params, RuntimeCfg, TrackingCfg
from densepred.params_loading import flatten_keys
from densepred.paths import project_root
from densepred.run_failure import ERROR_TAG, note_failed
from densepred.stage_run import StageRun

ENV_SWITCH = "DENSEPRED_TRACKING"
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
BATCH_PARAMS = 100  # MLflow's limit on params per log_batch call
BATCH_METRICS = 1000
RETRIES = 10
LOCAL_ID_TAG = "densepred.local_id"  # on a run uploaded from a journal: the id it had there
LOCAL_PREFIX = "local-"
# MLflow's UI opens an experiment on its runs table ("Model training") rather than its GenAI overview
# (traces, token usage) when the experiment carries this tag.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
# MLflow's own defaults retry an unreachable server for minutes (7 retries, backoff factor 2, 120 s
# timeout); these bound a failed call to about 30 s. A variable the user set wins.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
_T = TypeVar("_T")


def tracking_enabled() -> bool:
    """False when DENSEPRED_TRACKING is off/0/false/no."""
    return os.environ.get(ENV_SWITCH, "on").strip().lower() not in ("off", "0", "false", "no")


def tracking_uri(tracking_cfg: TrackingCfg) -> str:
    """The tracking URI: MLFLOW_TRACKING_URI, else `tracking_cfg.uri`, else the project's sqlite db.

    Relative sqlite paths (`sqlite:///mlflow.db`) are resolved against the project root.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_cfg.uri
    if not uri:
        return f"sqlite:///{(project_root() / DB_NAME).resolve()}"
    return _absolute_sqlite(uri)


def _absolute_sqlite(uri: str) -> str:
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path, sep, query = uri[len(prefix) :].partition("?")
    if path and path != ":memory:" and not Path(path).is_absolute():
        path = str((project_root() / path).resolve())
    return prefix + path + (sep + query if sep else "")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, else None."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = uri[len(prefix) :].partition("?")[0]
    return None if path in ("", ":memory:") else Path(path)


def artifact_location(uri: str, experiment: str) -> str | None:
    """The artifact location recorded for a new experiment of a sqlite store: `mlartifacts/<experiment>`,
    relative to the database's folder (see the module docstring). For a server: None (it decides)."""
    if sqlite_path(uri) is None:
        return None
    return f"{ARTIFACTS_DIR}/{experiment}"


def artifact_root(uri: str, artifact_uri: str) -> str:
    """Where a run's artifacts are written: a relative location (ours, see `artifact_location`)
    resolved against the sqlite database's folder; anything else as MLflow recorded it."""
    db = sqlite_path(uri)
    if (
        db is None
        or "://" in artifact_uri
        or artifact_uri.startswith("file:")
        or Path(artifact_uri).is_absolute()
    ):
        return artifact_uri
    return str((db.parent / artifact_uri).resolve())


def git_commit(root: Path | None = None) -> str:
    """The current git commit of the project (suffixed `-dirty` with uncommitted changes), or 'unknown'."""
    cwd = str(root or project_root())
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "") if sha else "unknown"


def flatten(tree: Mapping[str, Any]) -> dict[str, str]:
    """Nested mapping -> {"a.b.c": "value"}; lists and scalars become strings (MLflow params)."""
    flat: dict[str, str] = {}
    for name, value in flatten_keys(dict(tree)).items():
        text = str(value)
        if len(text) > MAX_PARAM_LENGTH:
            raise ValueError(
                f"param {name!r} is {len(text)} characters; MLflow keeps at most {MAX_PARAM_LENGTH}"
            )
        flat[name] = text
    return flat


@dataclass(frozen=True)
class RunSubject:
    """What an MLflow run is about: its tags and params are built from this, its store from `tracking`."""

    profile: str
    seed: int
    job: str
    job_cfg: JobCfg
    runtime: RuntimeCfg
    tracking: TrackingCfg
    stage: str | None = None

    @classmethod
    def of_stage(cls, run: StageRun) -> RunSubject:
        """A stage run's subject, tagged with its stage (`pretrain`, `finetune` or `evaluate`)."""
        return cls(
            profile=run.profile,
            seed=run.seed,
            job=run.job,
            job_cfg=run.job_cfg,
            runtime=run.runtime,
            tracking=run.tracking,
            stage=run.stage,
        )

    @classmethod
    def of_job(cls, params: Params, job: str) -> RunSubject:
        """A whole job's subject, no stage (a sweep and its trials)."""
        return cls(
            profile=params.profile,
            seed=params.seed,
            job=job,
            job_cfg=params.job(job),
            runtime=params.runtime,
            tracking=params.tracking,
        )


def run_tags(subject: RunSubject, kind: str) -> dict[str, str]:
    """The tags of a run: git commit, profile, job, stage, model, tasks, backbone, kind, seed."""
    cfg = subject.job_cfg
    return {
        "git_commit": git_commit(),
        "profile": subject.profile,
        "job": subject.job,
        "stage": subject.stage or "",
        "kind": kind,
        "model": cfg.model.name,
        "tasks": ",".join(cfg.tasks),
        "backbone": cfg.model.backbone,
        "seed": str(subject.seed),
    }


def run_params(subject: RunSubject) -> dict[str, str]:
    """Flattened params of a run: the job's config plus profile-wide settings."""
    tree = {
        "profile": subject.profile,
        "seed": subject.seed,
        "job": subject.job_cfg.model_dump(mode="json", exclude={"description"}),
        "runtime": subject.runtime.model_dump(mode="json"),
    }
    return flatten(tree)


@dataclass(frozen=True)
class DatasetRecord:
    """A prepared dataset as an MLflow dataset input: its digest is that of its shards (index.json)."""

    name: str
    digest: str
    source: str
    context: str  # "train" or "evaluation"


def prepared_dataset(name: str, root: Path, context: str) -> DatasetRecord:
    """The prepared dataset at `root`; its digest (32 hex digits) hashes every shard's digest listed in
    its index.json, so two runs on the same shards show the same dataset in MLflow."""
    index = json.loads((Path(root) / "index.json").read_text())
    entries = sorted(
        f"{split}/{shard['file']}:{shard['digest']}"
        for split, info in index.get("splits", {}).items()
        for shard in info.get("shards", [])
    )
    digest = hashlib.blake2b("\n".join(entries).encode(), digest_size=16).hexdigest()
    return DatasetRecord(name=name, digest=digest, source=str(Path(root).resolve()), context=context)


# --------------------------------------------------------------------------------------------- nesting

_NESTING: contextvars.ContextVar[tuple[str | None, dict[str, str]]] = contextvars.ContextVar(
    "densepred_tracking_nesting", default=(None, {})
)


@contextlib.contextmanager
def nested_under(parent_run_id: str | None, tags: Mapping[str, str]) -> Iterator[None]:
    """Runs started inside this block are children of `parent_run_id` and carry `tags` (a sweep
    trial's stages: sweep, variant), so they stay off the top level of the runs table."""
    token = _NESTING.set((parent_run_id, {"origin": "sweep", **tags}))
    try:
        yield
    finally:
        _NESTING.reset(token)


# ------------------------------------------------------------------------------------------------ runs


class NullRun:
    """A run that records nothing (tracking off, or a DDP rank other than 0)."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, str]) -> None:
        """Do nothing."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Do nothing."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Do nothing."""

    def log_input(self, dataset: DatasetRecord) -> None:
        """Do nothing."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Do nothing."""

    def set_terminated(self, status: str = "FINISHED") -> None:
        """Do nothing."""


def _finite(value: Any) -> bool:
    return (
        isinstance(value, int | float) and float(value) == float(value) and abs(float(value)) != float("inf")
    )


class Journal:
    """A run folder's JSON-lines record of tracking calls that could not reach the store.

    Each line is one event of one run (`run` = its id: `local-<uuid>` for a run the store has not
    seen, else the store's id): `start` (uri, experiment, name, tags, start time, pid, host),
    `resume`, `params`, `metrics` (with step and time), `tags`, `artifact` (absolute path),
    `input` (a dataset), `end` (status, end time). Appending a line is the only write.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, event: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.write(json.dumps(event, sort_keys=True) + "\n")
            handle.flush()

    def events(self) -> list[dict[str, Any]]:
        """The events, in order; a torn last line (a kill mid-write) is ignored."""
        if not self.path.is_file():
            return []
        events = []
        for line in self.path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events


class OfflineRun(NullRun):
    """A run written to its folder's journal while the store is unreachable (see `Journal`)."""

    def __init__(self, journal: Journal, run_id: str, skip_until: int | None = None) -> None:
        self.journal = journal
        self.run_id = run_id
        self.skip_until = skip_until

    def _write(self, op: str, **fields: Any) -> None:
        self.journal.append({"op": op, "run": self.run_id, "time": _now_ms(), **fields})

    def log_params(self, params: Mapping[str, str]) -> None:
        self._write("params", params={k: str(v) for k, v in params.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is not None and self.skip_until is not None and step <= self.skip_until:
            return
        kept = {k: float(v) for k, v in metrics.items() if _finite(v)}
        if kept:
            self._write("metrics", metrics=kept, step=int(step or 0))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"artifact to log not found: {path}")
        self._write("artifact", path=str(path.resolve()), artifact_path=artifact_path)

    def log_input(self, dataset: DatasetRecord) -> None:
        self._write("input", **dataset.__dict__)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._write("tags", tags={k: str(v) for k, v in tags.items()})

    def set_terminated(self, status: str = "FINISHED") -> None:
        self._write("end", status=status)


class MlflowRun(NullRun):
    """An open MLflow run, written through `MlflowClient` (no global "active run" state).

    Metric steps up to `skip_until` are not logged again (a resumed run already has them). With a
    `journal`, a call the store refuses (after the retries) prints one warning and sends this and
    every later call of the run to the journal instead: the run goes on, its record is kept.
    """

    def __init__(
        self,
        client: Any,
        run_id: str,
        *,
        uri: str = "",
        artifact_uri: str = "",
        journal: Journal | None = None,
        skip_until: int | None = None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.uri = uri
        self.artifact_uri = artifact_uri
        self.journal = journal
        self.skip_until = skip_until
        self.offline: OfflineRun | None = None
        self._rng = random.Random(run_id)  # backoff jitter; never touches the global RNG

    def _call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        return with_retry(fn, *args, rng=self._rng, **kwargs)

    def _guarded(self, online: Callable[[], None], offline: Callable[[OfflineRun], None]) -> None:
        """Run `online`; when the store fails and a journal exists, switch to it and run `offline`."""
        if self.offline is None:
            try:
                online()
                return
            except Exception as exc:
                if self.journal is None:
                    raise
                warn_offline(self.uri, exc, self.journal.path)
                self.offline = OfflineRun(self.journal, self.run_id, self.skip_until)
                self.journal.append(_start_event(self.run_id, self.uri, existing=True))
        offline(self.offline)

    def log_params(self, params: Mapping[str, str]) -> None:
        """Log params in batches of 100 (MLflow's limit)."""
        self._guarded(lambda: self._log_params(params), lambda run: run.log_params(params))

    def _log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), BATCH_PARAMS):
            self._call(self.client.log_batch, self.run_id, params=items[i : i + BATCH_PARAMS])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log scalar metrics at `step` (non-finite values are skipped: MLflow stores them poorly)."""
        if step is not None and self.skip_until is not None and step <= self.skip_until:
            return
        self._guarded(lambda: self._log_metrics(metrics, step), lambda run: run.log_metrics(metrics, step))

    def _log_metrics(self, metrics: Mapping[str, float], step: int | None) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        items = [Metric(k, float(v), now, int(step or 0)) for k, v in sorted(metrics.items()) if _finite(v)]
        for i in range(0, len(items), BATCH_METRICS):
            self._call(self.client.log_batch, self.run_id, metrics=items[i : i + BATCH_METRICS])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Copy a file or a folder into the run's artifacts."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"artifact to log not found: {path}")
        self._guarded(
            lambda: self._log_artifact(path, artifact_path), lambda run: run.log_artifact(path, artifact_path)
        )

    def _log_artifact(self, path: Path, artifact_path: str | None) -> None:
        root = artifact_root(self.uri, self.artifact_uri) if self.artifact_uri else ""
        if root and root != self.artifact_uri:  # our relative location: write there directly
            from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

            repo = LocalArtifactRepository(root)
            if path.is_dir():
                repo.log_artifacts(str(path), artifact_path or path.name)
            else:
                repo.log_artifact(str(path), artifact_path)
        elif path.is_dir():
            self._call(self.client.log_artifacts, self.run_id, str(path), artifact_path or path.name)
        else:
            self._call(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_input(self, dataset: DatasetRecord) -> None:
        """Record a dataset input (name, digest, source; context tag `train` or `evaluation`)."""
        self._guarded(lambda: self._log_input(dataset), lambda run: run.log_input(dataset))

    def _log_input(self, dataset: DatasetRecord) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        entity = Dataset(
            name=dataset.name,
            digest=dataset.digest,
            source_type="local",
            source=json.dumps({"uri": dataset.source}),
        )
        tags = [InputTag("mlflow.data.context", dataset.context)]
        self._call(self.client.log_inputs, self.run_id, datasets=[DatasetInput(entity, tags)])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._guarded(lambda: self._set_tags(tags), lambda run: run.set_tags(tags))

    def _set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self._call(
            self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in sorted(tags.items())]
        )

    def set_terminated(self, status: str = "FINISHED") -> None:
        """Close the run as FINISHED, FAILED or KILLED."""
        self._guarded(
            lambda: self._call(self.client.set_terminated, self.run_id, status),
            lambda run: run.set_terminated(status),
        )


def with_retry(fn: Callable[..., _T], *args: Any, rng: random.Random | None = None, **kwargs: Any) -> _T:
    """Call `fn`, retrying with exponential backoff while SQLite reports a lock or a busy database."""
    rng = rng or random.Random(0)
    for attempt in range(RETRIES):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt == RETRIES - 1 or not _is_transient(exc):
                raise
            time.sleep(min(5.0, 0.05 * 2**attempt) * (0.5 + rng.random()))
    raise AssertionError("unreachable")


def _is_transient(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(
        s in text for s in ("database is locked", "database table is locked", "temporarily_unavailable")
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextlib.contextmanager
def _db_lock(uri: str) -> Iterator[None]:
    """Exclusive lock on `<db>.lock` for sqlite URIs (no-op otherwise)."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _short_http_timeouts() -> None:
    """Bound how long one call to an unreachable server takes (`HTTP_DEFAULTS`); user settings win."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def open_client(uri: str, experiment: str) -> tuple[Any, str]:
    """An `MlflowClient` for `uri` and the id of `experiment`, created once (for sqlite with the
    artifact location relative to the database's folder)."""
    _short_http_timeouts()
    from mlflow import MlflowClient

    with _db_lock(uri):
        client = MlflowClient(tracking_uri=uri)  # opens the store: creates/migrates a fresh database
        found = with_retry(client.get_experiment_by_name, experiment)
        if found is not None:
            return client, _with_kind(client, found)
        try:
            exp_id = with_retry(client.create_experiment, experiment, tags=EXPERIMENT_TAGS)
        except Exception:
            # Another writer outside the lock (a tracking server's other clients) won the race.
            found = with_retry(client.get_experiment_by_name, experiment)
            if found is None:
                raise
            return client, _with_kind(client, found)
        location = artifact_location(uri, experiment)
        db = sqlite_path(uri)
        if location and db is not None:
            _set_relative_artifact_location(db, exp_id, location)
    return client, exp_id


def _with_kind(client: Any, experiment: Any) -> str:
    """The id of `experiment`, tagged first with `EXPERIMENT_TAGS` if it lacks them (an experiment
    created before they were set)."""
    for key, value in EXPERIMENT_TAGS.items():
        if experiment.tags.get(key) != value:
            with_retry(client.set_experiment_tag, experiment.experiment_id, key, value)
    return experiment.experiment_id


def _set_relative_artifact_location(db: Path, experiment_id: str, location: str) -> None:
    """Record `location` (relative) as the experiment's artifact location; MLflow's API would make it
    absolute. Runs created afterwards take their artifact URI from it."""
    with contextlib.closing(sqlite3.connect(db, timeout=20)) as conn, conn:
        conn.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
            (location, int(experiment_id)),
        )


_WARNED: set[str] = set()


def warn_offline(uri: str, exc: BaseException, journal: Path) -> None:
    """The one warning of a run whose store cannot be reached: the URI, the cause, the journal."""
    cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    key = f"{uri}|{journal}"
    if key in _WARNED:
        return
    _WARNED.add(key)
    print(
        f"densepred: warning: MLflow tracking at {uri} failed ({type(exc).__name__}: {cause[:200]}); "
        f"the run goes on and its record is kept in {journal}; upload it with "
        f"`densepred sync-tracking {journal.parent}` once the server is back",
        file=sys.stderr,
        flush=True,
    )


def _start_event(
    run_id: str,
    uri: str,
    *,
    existing: bool,
    experiment: str = "",
    run_name: str = "",
    tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "op": "start",
        "run": run_id,
        "time": _now_ms(),
        "uri": uri,
        "experiment": experiment,
        "run_name": run_name,
        "tags": dict(tags or {}),
        "existing": existing,
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }


@contextlib.contextmanager
def start_run(
    subject: RunSubject,
    kind: str,
    *,
    journal: Path | None = None,
    run_id: str | None = None,
    enabled: bool = True,
    run_name: str | None = None,
) -> Iterator[NullRun]:
    """Open one MLflow run for a stage execution (`kind`: train, evaluate, sweep, trial).

    Tags and flattened params are logged at the start. `run_id` continues an earlier run (a resumed
    training) instead of creating one: its params are not logged again, and metric steps it already
    holds are skipped. The run ends FINISHED when the block completes, KILLED on
    KeyboardInterrupt/SystemExit and FAILED on any other exception; a run that fails under the CLI
    then gets its error line and log (run_failure.py). Inside `nested_under` the run is a child of
    the block's run and carries its tags.

    `journal` (a file in the run folder) is where the run is recorded when the store cannot be
    reached; a journal left there by an earlier attempt is uploaded first when the store is back.
    Without a journal a store failure raises. `enabled=False` (DDP ranks other than 0) or
    DENSEPRED_TRACKING=off yields a `NullRun`.
    """
    if not (enabled and tracking_enabled()):
        yield NullRun()
        return
    uri = tracking_uri(subject.tracking)
    parent, nest_tags = _NESTING.get()
    tags = {**run_tags(subject, kind), "origin": "pipeline", **nest_tags}
    if parent:
        tags["mlflow.parentRunId"] = parent
    name = run_name or "-".join(x for x in (subject.job, subject.stage, kind) if x)
    book = Journal(journal) if journal is not None else None
    try:
        run = _open_online(uri, subject, tags, name, run_id, book)
    except Exception as exc:
        if book is None:
            raise
        warn_offline(uri, exc, book.path)
        run = _open_offline(uri, subject, tags, name, run_id, book)
    try:
        yield run
    except (KeyboardInterrupt, SystemExit):
        run.set_terminated("KILLED")
        note_failed(run)
        raise
    except BaseException:
        run.set_terminated("FAILED")
        note_failed(run)  # the CLI adds why (its error line) and the stage log: run_failure.py
        raise
    run.set_terminated("FINISHED")


def _open_online(
    uri: str,
    subject: RunSubject,
    tags: dict[str, str],
    name: str,
    run_id: str | None,
    journal: Journal | None,
) -> MlflowRun:
    client, exp_id = open_client(uri, subject.tracking.experiment)
    if journal is not None and journal.path.is_file():
        uploaded = sync_journal(journal.path, client=client, uri=uri)
        run_id = uploaded.get(run_id or "", run_id)
    if run_id and run_id.startswith(LOCAL_PREFIX):
        run_id = _find_local(client, exp_id, run_id)
    if run_id:
        reopened = _reopen(client, run_id, uri, journal)
        if reopened is not None:
            return reopened
    created = with_retry(client.create_run, exp_id, tags=tags, run_name=name)
    run = MlflowRun(
        client, created.info.run_id, uri=uri, artifact_uri=created.info.artifact_uri, journal=journal
    )
    run.log_params(run_params(subject))
    return run


def _open_offline(
    uri: str,
    subject: RunSubject,
    tags: dict[str, str],
    name: str,
    run_id: str | None,
    journal: Journal,
) -> OfflineRun:
    events = [e for e in journal.events() if run_id and e.get("run") == run_id]
    if events:  # continue the journaled run of an earlier attempt
        run = OfflineRun(journal, run_id or "", _max_step(events))
        journal.append({"op": "resume", "run": run.run_id, "time": _now_ms()})
        return run
    if run_id and not run_id.startswith(LOCAL_PREFIX):  # a run the store has: continue it when synced
        journal.append(_start_event(run_id, uri, existing=True))
        return OfflineRun(journal, run_id)
    local = LOCAL_PREFIX + uuid.uuid4().hex
    journal.append(
        _start_event(
            local, uri, existing=False, experiment=subject.tracking.experiment, run_name=name, tags=tags
        )
    )
    run = OfflineRun(journal, local)
    run.log_params(run_params(subject))
    return run


def _max_step(events: list[dict[str, Any]]) -> int | None:
    steps = [int(e["step"]) for e in events if e.get("op") == "metrics"]
    return max(steps) if steps else None


def _reopen(client: Any, run_id: str, uri: str, journal: Journal | None) -> MlflowRun | None:
    """The run `run_id` set back to RUNNING, or None if this store does not have it."""
    try:
        found = with_retry(client.get_run, run_id)
    except Exception as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
            return None
        raise
    if found.info.lifecycle_stage == "deleted":
        return None
    with_retry(client.update_run, run_id, status="RUNNING")
    if ERROR_TAG in found.data.tags:  # the error of the attempt that failed no longer holds
        with_retry(client.delete_tag, run_id, ERROR_TAG)
    steps = _logged_steps(client, run_id, found.data.metrics)
    last = max((max(s) for s in steps.values() if s), default=None)
    return MlflowRun(
        client, run_id, uri=uri, artifact_uri=found.info.artifact_uri, journal=journal, skip_until=last
    )


def _logged_steps(client: Any, run_id: str, keys: Mapping[str, Any]) -> dict[str, set[int]]:
    """The metric steps run `run_id` already holds, per metric key."""
    return {key: {m.step for m in with_retry(client.get_metric_history, run_id, key)} for key in keys}


def _find_local(client: Any, exp_id: str, local_id: str) -> str | None:
    """The id of the run uploaded from the journaled run `local_id`, if any."""
    runs = with_retry(
        client.search_runs, [exp_id], filter_string=f"tags.`{LOCAL_ID_TAG}` = '{local_id}'", max_results=5
    )
    return runs[0].info.run_id if runs else None


# ------------------------------------------------------------------------------------------------ sync


def _writer_alive(start: Mapping[str, Any]) -> bool:
    """True when the process that started a journaled run still runs on this host."""
    if start.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(start.get("pid", 0)), 0)
    except (OSError, ValueError):
        return False
    return int(start.get("pid", 0)) != os.getpid()


def sync_journal(path: Path, *, client: Any = None, uri: str | None = None) -> dict[str, str]:
    """Upload the journal `path` to its store (MLFLOW_TRACKING_URI wins over the recorded URI) and
    remove it; returns {journaled run id: run id in the store}.

    Each journaled run is uploaded once: a run created from a journal carries its local id as the
    tag `densepred.local_id`, and an earlier, interrupted upload of it is deleted and done again;
    metric steps that a continued run already holds are skipped. A journal still being written (its
    process alive, a run not ended) is left alone. Raises when the store cannot be reached.
    """
    journal = Journal(path)
    events = journal.events()
    if not events:
        path.unlink(missing_ok=True)
        return {}
    starts = [e for e in events if e.get("op") == "start"]
    ended = {e.get("run") for e in events if e.get("op") == "end"}
    for start in starts:
        if start["run"] not in ended and _writer_alive(start):
            raise RuntimeError(f"{path} is still being written by process {start.get('pid')}; sync it later")
    target = (
        os.environ.get("MLFLOW_TRACKING_URI") or uri or next((s["uri"] for s in starts if s.get("uri")), "")
    )
    target = _absolute_sqlite(target)
    experiments = {s.get("experiment") for s in starts if s.get("experiment")}
    experiment = next(iter(experiments), "densepred")
    if client is None:
        client, exp_id = open_client(target, experiment)
    else:
        exp_id = with_retry(client.get_experiment_by_name, experiment)
        exp_id = exp_id.experiment_id if exp_id is not None else open_client(target, experiment)[1]
    ids: dict[str, str] = {}
    runs: dict[str, MlflowRun] = {}
    done: dict[str, dict[str, set[int]]] = {}  # continued runs: steps already in the store
    for event in events:
        op, rid = event.get("op"), event.get("run", "")
        if op == "start":
            runs[rid] = _upload_start(client, exp_id, target, event, ids)
            ids[rid] = runs[rid].run_id or rid
            if event.get("existing"):
                found = with_retry(client.get_run, ids[rid])
                done[rid] = _logged_steps(client, ids[rid], found.data.metrics)
            continue
        run = runs.get(rid)
        if run is None:
            continue
        if op == "resume":
            with_retry(client.update_run, run.run_id, status="RUNNING")
        elif op == "params":
            run.log_params(event["params"])
        elif op == "tags":
            run.set_tags(_resolved_tags(client, exp_id, event["tags"], ids))
        elif op == "metrics":
            _upload_metrics(client, run, event, done.get(rid))
        elif op == "artifact":
            artifact = Path(event["path"])
            if artifact.exists():
                run.log_artifact(artifact, event.get("artifact_path"))
            else:
                print(
                    f"densepred: warning: {path}: artifact {artifact} is gone; not uploaded", file=sys.stderr
                )
        elif op == "input":
            fields = {k: event[k] for k in ("name", "digest", "source", "context")}
            run.log_input(DatasetRecord(**fields))
        elif op == "end":
            with_retry(
                client.set_terminated, run.run_id, event.get("status", "FINISHED"), end_time=event["time"]
            )
    path.unlink(missing_ok=True)
    return ids


def _upload_start(
    client: Any, exp_id: str, uri: str, event: Mapping[str, Any], ids: Mapping[str, str]
) -> MlflowRun:
    """The store's run for a journaled `start`: the existing run, or a new one (replacing the remains
    of an interrupted upload of the same journaled run)."""
    if event.get("existing"):
        found = with_retry(client.get_run, event["run"])
        return MlflowRun(client, event["run"], uri=uri, artifact_uri=found.info.artifact_uri)
    earlier = _find_local(client, exp_id, event["run"])
    if earlier is not None:
        with_retry(client.delete_run, earlier)
    tags = _resolved_tags(client, exp_id, {**event.get("tags", {}), LOCAL_ID_TAG: event["run"]}, ids)
    created = with_retry(
        client.create_run, exp_id, start_time=event["time"], tags=tags, run_name=event.get("run_name") or None
    )
    return MlflowRun(client, created.info.run_id, uri=uri, artifact_uri=created.info.artifact_uri)


def _resolved_tags(
    client: Any, exp_id: str, tags: Mapping[str, str], ids: Mapping[str, str]
) -> dict[str, str]:
    """`tags` with a journaled parent id (`local-...`) replaced by the store's id of that run."""
    out = dict(tags)
    parent = out.get("mlflow.parentRunId", "")
    if parent.startswith(LOCAL_PREFIX):
        resolved = ids.get(parent) or _find_local(client, exp_id, parent)
        if resolved:
            out["mlflow.parentRunId"] = resolved
    return out


def _upload_metrics(
    client: Any, run: MlflowRun, event: Mapping[str, Any], done: dict[str, set[int]] | None
) -> None:
    from mlflow.entities import Metric

    step = int(event.get("step", 0))
    items = [
        Metric(k, float(v), int(event["time"]), step)
        for k, v in sorted(event["metrics"].items())
        if done is None or step not in done.get(k, set())
    ]
    for i in range(0, len(items), BATCH_METRICS):
        with_retry(client.log_batch, run.run_id, metrics=items[i : i + BATCH_METRICS])


def sync_journals(root: Path) -> tuple[int, list[tuple[Path, str]]]:
    """Upload every journal under `root` (parents first); returns (runs uploaded, [(journal, why not)]).

    Raises `ConnectionError` naming the URI when the store is still unreachable.
    """
    from densepred.paths import find_tracking_journals

    uploaded, left = 0, []
    for path in find_tracking_journals(root):
        try:
            uploaded += len(sync_journal(path))
        except RuntimeError as exc:
            left.append((path, str(exc)))
        except Exception as exc:
            events = Journal(path).events()
            uri = os.environ.get("MLFLOW_TRACKING_URI") or next(
                (e["uri"] for e in events if e.get("uri")), "?"
            )
            cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConnectionError(
                f"cannot upload {path}: MLflow tracking at {uri} failed: {cause[:200]}"
            ) from exc
    return uploaded, left


__all__ = [
    "DatasetRecord",
    "MlflowRun",
    "NullRun",
    "OfflineRun",
    "RunSubject",
    "flatten",
    "git_commit",
    "nested_under",
    "prepared_dataset",
    "start_run",
    "sync_journals",
    "tracking_enabled",
    "tracking_uri",
]
