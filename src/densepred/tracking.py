"""MLflow tracking: the one module that talks to MLflow.

One MLflow run per train or evaluate job, with tags (git commit, profile, job, stage, model, tasks,
backbone, kind), flattened params, per-step metrics, final metrics and artifacts. What a run is
about is a `RunSubject`, taken from the stage's `StageRun` (or, for a sweep, from its job):

    with start_run(RunSubject.of_stage(stage_run), "train") as run:
        run.log_metrics({"depth/silog": 0.31, "lr": 5e-4}, step=10)
        run.log_artifact(out / "config.yaml")

Where runs go (`tracking_uri`): MLFLOW_TRACKING_URI, else `tracking.uri` of the params, else
`sqlite:///<project root>/mlflow.db`; a relative sqlite path is made absolute against the project
root, so a process that changed directory (a Ray Tune trial) still writes into the same database.
Experiments created here get an absolute artifact location next to the database
(`<db folder>/mlartifacts/<experiment>`), for the same reason: with a sqlite URI and no artifact
root, MLflow puts artifacts under `./mlruns` of the current directory.

Parallel writers on SQLite (MLflow issues 4123 and 10334, hydraflow 245): a fresh database is initialised
and the experiment created under an exclusive file lock (`<db>.lock`), so concurrent processes never race
on schema migrations or on creating the same experiment; MLflow's sessions already set a 20 s busy
timeout, and every write is retried with backoff when SQLite still reports "database is locked".

`DENSEPRED_TRACKING=off` (or 0/false/no) turns tracking off: `start_run` then yields a `NullRun`
whose methods do nothing, and MLflow is not even imported.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from densepred.config import JobCfg, Params, RuntimeCfg, TrackingCfg, project_root
from densepred.stage_run import StageRun

ENV_SWITCH = "DENSEPRED_TRACKING"
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
BATCH_PARAMS = 100  # MLflow's limit on params per log_batch call
BATCH_METRICS = 1000
RETRIES = 10
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
    """Absolute artifact root for a new experiment: `<db folder>/mlartifacts/<experiment>` for sqlite.

    For a tracking server (http, postgresql, ...) the server decides: None.
    """
    db = sqlite_path(uri)
    if db is None:
        return None
    return (db.parent / ARTIFACTS_DIR / experiment).resolve().as_uri()


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


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {"a.b.c": "value"}; lists and scalars become strings (MLflow params)."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
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
    def of_stage(cls, run: StageRun, stage: str | None = None) -> RunSubject:
        """A stage run's subject; `stage` replaces the run's own stage name in the tags (an
        evaluation is tagged with the training stage of the checkpoint it evaluates)."""
        return cls(
            profile=run.profile,
            seed=run.seed,
            job=run.job,
            job_cfg=run.job_cfg,
            runtime=run.runtime,
            tracking=run.tracking,
            stage=stage or run.stage,
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

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Do nothing."""

    def set_terminated(self, status: str = "FINISHED") -> None:
        """Do nothing."""


class MlflowRun(NullRun):
    """An open MLflow run, written through `MlflowClient` (no global "active run" state)."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self._rng = random.Random(run_id)  # backoff jitter; never touches the global RNG

    def _call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        return with_retry(fn, *args, rng=self._rng, **kwargs)

    def log_params(self, params: Mapping[str, str]) -> None:
        """Log params in batches of 100 (MLflow's limit)."""
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), BATCH_PARAMS):
            self._call(self.client.log_batch, self.run_id, params=items[i : i + BATCH_PARAMS])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log scalar metrics at `step` (non-finite values are skipped: MLflow stores them poorly)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, int(step or 0))
            for k, v in sorted(metrics.items())
            if isinstance(v, int | float) and float(v) == float(v) and abs(float(v)) != float("inf")
        ]
        for i in range(0, len(items), BATCH_METRICS):
            self._call(self.client.log_batch, self.run_id, metrics=items[i : i + BATCH_METRICS])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Copy a file or a folder into the run's artifacts."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"artifact to log not found: {path}")
        if path.is_dir():
            self._call(self.client.log_artifacts, self.run_id, str(path), artifact_path or path.name)
        else:
            self._call(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self._call(
            self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in sorted(tags.items())]
        )

    def set_terminated(self, status: str = "FINISHED") -> None:
        """Close the run as FINISHED, FAILED or KILLED."""
        self._call(self.client.set_terminated, self.run_id, status)


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


def open_client(uri: str, experiment: str) -> tuple[Any, str]:
    """An `MlflowClient` for `uri` and the id of `experiment`, created once with an absolute artifact root."""
    from mlflow import MlflowClient

    with _db_lock(uri):
        client = MlflowClient(tracking_uri=uri)  # opens the store: creates/migrates a fresh database
        found = with_retry(client.get_experiment_by_name, experiment)
        if found is not None:
            return client, found.experiment_id
        try:
            exp_id = with_retry(
                client.create_experiment, experiment, artifact_location=artifact_location(uri, experiment)
            )
        except Exception:
            # Another writer outside the lock (a tracking server's other clients) won the race.
            found = with_retry(client.get_experiment_by_name, experiment)
            if found is None:
                raise
            exp_id = found.experiment_id
    return client, exp_id


@contextlib.contextmanager
def start_run(
    subject: RunSubject,
    kind: str,
    *,
    run_id: str | None = None,
    enabled: bool = True,
    run_name: str | None = None,
) -> Iterator[NullRun]:
    """Open one MLflow run for a train (`kind="train"`) or evaluate (`kind="evaluate"`) job.

    Tags and flattened params are logged at the start. `run_id` reopens an earlier run (a resumed
    training) instead of creating one; its params are not logged again. The run ends FINISHED when
    the block completes, KILLED on KeyboardInterrupt/SystemExit and FAILED on any other exception.
    `enabled=False` (DDP ranks other than 0) or DENSEPRED_TRACKING=off yields a `NullRun`.
    """
    if not (enabled and tracking_enabled()):
        yield NullRun()
        return
    uri = tracking_uri(subject.tracking)
    client, exp_id = open_client(uri, subject.tracking.experiment)
    run = _reopen(client, run_id) if run_id else None
    if run is None:
        tags = run_tags(subject, kind)
        name = run_name or "-".join(x for x in (subject.job, subject.stage, kind) if x)
        created = with_retry(client.create_run, exp_id, tags=tags, run_name=name)
        run = MlflowRun(client, created.info.run_id)
        run.log_params(run_params(subject))
    try:
        yield run
    except (KeyboardInterrupt, SystemExit):
        run.set_terminated("KILLED")
        raise
    except BaseException:
        run.set_terminated("FAILED")
        raise
    run.set_terminated("FINISHED")


def _reopen(client: Any, run_id: str) -> MlflowRun | None:
    """The run `run_id` set back to RUNNING, or None if this store does not have it."""
    try:
        with_retry(client.get_run, run_id)
    except Exception as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
            return None
        raise
    with_retry(client.update_run, run_id, status="RUNNING")
    return MlflowRun(client, run_id)


__all__ = [
    "MlflowRun",
    "NullRun",
    "RunSubject",
    "flatten",
    "git_commit",
    "start_run",
    "tracking_enabled",
    "tracking_uri",
]
