"""The MLflow store: which one (the URI, resolved here only), its sqlite file and artifact location,
opening a client on it, and retrying writes that SQLite refuses while another process writes.

Where runs go (`store_uri`): MLFLOW_TRACKING_URI, else the configured URI (`tracking.uri` of the
params, or the URI a journal recorded), else `sqlite:///<project root>/mlflow.db`; a relative sqlite
path is made absolute against the project root, so a process that changed directory (a Ray Tune
trial) still writes into the same database.

Artifacts of a sqlite store: experiments created here record the artifact location
`mlartifacts/<name>` *relative to the database's folder* (MLflow itself would store an absolute path,
so a copied project would keep writing into the original's folder). The runs resolve it against the
database's folder when they write (`artifact_root`); `mlflow ui` resolves it against its working
directory, so start the UI in the folder that holds mlflow.db (the project root).

Parallel writers on SQLite (MLflow issues 4123 and 10334, hydraflow 245): a fresh database is
initialised and the experiment created under an exclusive file lock (`<db>.lock`), so concurrent
processes never race on schema migrations or on creating the same experiment; MLflow's sessions
already set a 20 s busy timeout, and every write is retried with backoff (`with_retry`) when SQLite
still reports "database is locked".

Calls to a server: MLflow reads its HTTP timeout and retries from the process environment at every
request and offers no other way to set them, so the bounds (`HTTP_DEFAULTS`) are put there by the
command-line entry point (`densepred.cli.main`, through `missing_http_defaults`) and handed to a
sweep's Ray workers (tune.py), not by this package: Python code that calls `start_run` directly
against a server sets them itself, or gets MLflow's much longer defaults.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from densepred.config import TrackingCfg
from densepred.paths import project_root

ENV_SWITCH = "DENSEPRED_TRACKING"
ENV_URI = "MLFLOW_TRACKING_URI"
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
SQLITE_PREFIX = "sqlite:///"
RETRIES = 10
# MLflow's UI opens an experiment on its runs table ("Model training") rather than its GenAI overview
# (traces, token usage) when the experiment carries this tag.
EXPERIMENT_TAGS = MappingProxyType({"mlflow.experimentKind": "custom_model_development"})
# MLflow's own defaults retry an unreachable server for minutes (7 retries, backoff factor 2, 120 s
# timeout); these bound a failed call to about 30 s. A variable the user set wins.
HTTP_DEFAULTS = MappingProxyType(
    {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    }
)
_T = TypeVar("_T")


def tracking_enabled() -> bool:
    """False when DENSEPRED_TRACKING is off/0/false/no."""
    return os.environ.get(ENV_SWITCH, "on").strip().lower() not in ("off", "0", "false", "no")


def missing_http_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """The entries of `HTTP_DEFAULTS` that `environ` does not set (the user's settings win)."""
    return {key: value for key, value in HTTP_DEFAULTS.items() if key not in environ}


def store_uri(configured: str | None) -> str:
    """The store to write to: MLFLOW_TRACKING_URI, else `configured`, else the project's sqlite db.

    Relative sqlite paths (`sqlite:///mlflow.db`) are resolved against the project root.
    """
    uri = os.environ.get(ENV_URI) or configured
    if not uri:
        return f"{SQLITE_PREFIX}{(project_root() / DB_NAME).resolve()}"
    if not uri.startswith(SQLITE_PREFIX):
        return uri
    path, sep, query = uri[len(SQLITE_PREFIX) :].partition("?")
    if path and path != ":memory:" and not Path(path).is_absolute():
        path = str((project_root() / path).resolve())
    return SQLITE_PREFIX + path + (sep + query if sep else "")


def tracking_uri(tracking_cfg: TrackingCfg) -> str:
    """The store of runs configured by `tracking_cfg` (`store_uri` of its `uri`)."""
    return store_uri(tracking_cfg.uri)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, else None."""
    if not uri.startswith(SQLITE_PREFIX):
        return None
    path = uri[len(SQLITE_PREFIX) :].partition("?")[0]
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


def with_retry(fn: Callable[..., _T], *args: Any, rng: random.Random | None = None, **kwargs: Any) -> _T:
    """Call `fn`, retrying with exponential backoff while SQLite reports a lock or a busy database."""
    rng = rng or random.Random(0)
    for attempt in range(RETRIES):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt == RETRIES - 1 or not is_transient(exc):
                raise
            time.sleep(min(5.0, 0.05 * 2**attempt) * (0.5 + rng.random()))
    raise AssertionError("unreachable")


def is_transient(exc: BaseException) -> bool:
    """True for the errors of a store busy with another writer (worth retrying)."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(
        s in text for s in ("database is locked", "database table is locked", "temporarily_unavailable")
    )


def not_found(exc: BaseException) -> bool:
    """True when the store refused a lookup because it does not hold the run."""
    return "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower()


@contextlib.contextmanager
def db_lock(uri: str) -> Iterator[None]:
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
    """An `MlflowClient` for `uri` and the id of `experiment`, created once (for sqlite with the
    artifact location relative to the database's folder)."""
    from mlflow import MlflowClient

    with db_lock(uri):
        client = MlflowClient(tracking_uri=uri)  # opens the store: creates/migrates a fresh database
        found = with_retry(client.get_experiment_by_name, experiment)
        if found is not None:
            return client, _with_kind(client, found)
        try:
            exp_id = with_retry(client.create_experiment, experiment, tags=dict(EXPERIMENT_TAGS))
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


def experiment_of(client: Any, uri: str, experiment: str) -> str:
    """The id of `experiment` in the store `client` is open on, created if it does not exist yet."""
    found = with_retry(client.get_experiment_by_name, experiment)
    return found.experiment_id if found is not None else open_client(uri, experiment)[1]


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
