"""A run as the stages see it (`Run`) and its three kinds: written to the MLflow store (`MlflowRun`),
to the run folder's journal while the store cannot be reached (`OfflineRun`), or not at all
(`DisabledRun`: tracking off, or a DDP rank other than 0).

A tracking outage never costs a run: when the store fails, at the start or midway, the run prints
ONE warning naming the URI (`Fallback`) and goes on writing what it would have logged to its journal.

A resumed training continues its run and logs only metric steps after the last one that run already
holds (`skip_until`), so no step appears twice; non-finite values are never logged (MLflow stores
them poorly). Both rules are `kept_metrics`, for every kind of run and for the journal's upload.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from densepred.tracking.journal import Journal, now_ms, start_event
from densepred.tracking.provenance import DatasetRecord
from densepred.tracking.store import artifact_root, with_retry

BATCH_PARAMS = 100  # MLflow's limit on params per log_batch call
BATCH_METRICS = 1000
_T = TypeVar("_T")


class Run(Protocol):
    """One MLflow run of a stage execution; `run_id` is None when nothing is recorded."""

    run_id: str | None

    @property
    def journal_path(self) -> Path | None:
        """The journal the run is written to while its store is unreachable; None otherwise."""
        ...

    def log_params(self, params: Mapping[str, str]) -> None:
        """Record params (name -> value)."""
        ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record scalar metrics at `step`."""
        ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Record a file or a folder."""
        ...

    def log_input(self, dataset: DatasetRecord) -> None:
        """Record a dataset input."""
        ...

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags (name -> value)."""
        ...

    def set_terminated(self, status: str = "FINISHED") -> None:
        """End the run as FINISHED, FAILED or KILLED."""
        ...


class DisabledRun(Run):
    """A run that records nothing (tracking off, or a DDP rank other than 0): its methods are the
    protocol's own, which do nothing."""

    run_id: str | None = None
    journal_path: Path | None = None


def _finite(value: Any) -> bool:
    return (
        isinstance(value, int | float) and float(value) == float(value) and abs(float(value)) != float("inf")
    )


def kept_metrics(
    metrics: Mapping[str, float],
    step: int | None,
    skip_until: int | None = None,
    held: Mapping[str, set[int]] | None = None,
) -> dict[str, float]:
    """The values of `metrics` to record at `step`: the finite ones, none when the run already holds
    every step up to `skip_until` (a resumed training), and no key whose steps in `held` (the steps a
    continued run holds, per key) include `step`."""
    if step is not None and skip_until is not None and step <= skip_until:
        return {}
    return {
        k: float(v)
        for k, v in metrics.items()
        if _finite(v) and (held is None or int(step or 0) not in held.get(k, set()))
    }


def _existing_artifact(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"artifact to log not found: {path}")
    return path


class Fallback:
    """Where a run goes when its store cannot be reached: its `journal`, announced by ONE warning
    naming the URI, the cause and the journal (one per run, whether the start or a later call failed)."""

    def __init__(self, uri: str, journal: Journal) -> None:
        self.uri = uri
        self.journal = journal
        self.warned = False

    def warn(self, exc: BaseException) -> None:
        """Print the warning, unless this run printed it already."""
        if self.warned:
            return
        self.warned = True
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(
            f"densepred: warning: MLflow tracking at {self.uri} failed ({type(exc).__name__}: "
            f"{cause[:200]}); the run goes on and its record is kept in {self.journal.path}; upload it "
            f"with `densepred sync-tracking {self.journal.path.parent}` once the server is back",
            file=sys.stderr,
            flush=True,
        )


class OfflineRun:
    """A run written to its folder's journal while the store is unreachable (see `Journal`)."""

    def __init__(self, journal: Journal, run_id: str, skip_until: int | None = None) -> None:
        self.journal = journal
        self.run_id: str | None = run_id
        self.skip_until = skip_until

    @property
    def journal_path(self) -> Path | None:
        return self.journal.path

    def _write(self, op: str, **fields: Any) -> None:
        self.journal.append({"op": op, "run": self.run_id, "time": now_ms(), **fields})

    def log_params(self, params: Mapping[str, str]) -> None:
        self._write("params", params={k: str(v) for k, v in params.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        kept = kept_metrics(metrics, step, self.skip_until)
        if kept:
            self._write("metrics", metrics=kept, step=int(step or 0))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = _existing_artifact(path)
        self._write("artifact", path=str(path.resolve()), artifact_path=artifact_path)

    def log_input(self, dataset: DatasetRecord) -> None:
        self._write("input", **dataset.__dict__)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._write("tags", tags={k: str(v) for k, v in tags.items()})

    def set_terminated(self, status: str = "FINISHED") -> None:
        self._write("end", status=status)


class MlflowRun:
    """An open MLflow run, written through `MlflowClient` (no global "active run" state).

    Metric steps up to `skip_until` are not logged again (a resumed run already has them). With a
    `fallback`, a call the store refuses (after the retries) prints the run's warning and sends this
    and every later call of the run to the journal instead: the run goes on, its record is kept.
    """

    def __init__(
        self,
        client: Any,
        run_id: str,
        *,
        uri: str = "",
        artifact_uri: str = "",
        fallback: Fallback | None = None,
        skip_until: int | None = None,
    ) -> None:
        self.client = client
        self.run_id: str | None = run_id
        self.uri = uri
        self.artifact_uri = artifact_uri
        self.fallback = fallback
        self.skip_until = skip_until
        self.offline: OfflineRun | None = None
        self._rng = random.Random(run_id)  # backoff jitter; never touches the global RNG

    @property
    def journal_path(self) -> Path | None:
        return self.offline.journal.path if self.offline is not None else None

    def _call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        return with_retry(fn, *args, rng=self._rng, **kwargs)

    def _guarded(self, online: Callable[[], None], offline: Callable[[OfflineRun], None]) -> None:
        """Run `online`; when the store fails and a fallback exists, switch to it and run `offline`."""
        if self.offline is None:
            try:
                online()
                return
            except Exception as exc:
                if self.fallback is None:
                    raise
                self.fallback.warn(exc)
                journal = self.fallback.journal
                self.offline = OfflineRun(journal, self.run_id or "", self.skip_until)
                journal.append(start_event(self.run_id or "", self.uri, existing=True))
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
        """Log the `kept_metrics` of `metrics` at `step`, timed now."""
        kept = kept_metrics(metrics, step, self.skip_until)
        if kept:
            self._guarded(
                lambda: self.write_metrics(kept, int(step or 0), now_ms()),
                lambda run: run.log_metrics(kept, step),
            )

    def write_metrics(self, metrics: Mapping[str, float], step: int, time_ms: int) -> None:
        """Write `metrics` at `step` and time `time_ms` to the store, in batches of `BATCH_METRICS`."""
        from mlflow.entities import Metric

        items = [Metric(k, float(v), time_ms, step) for k, v in sorted(metrics.items())]
        for i in range(0, len(items), BATCH_METRICS):
            self._call(self.client.log_batch, self.run_id, metrics=items[i : i + BATCH_METRICS])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Copy a file or a folder into the run's artifacts."""
        path = _existing_artifact(path)
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
