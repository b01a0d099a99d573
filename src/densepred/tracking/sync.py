"""Uploading a journal (journal.py) once its store is back: `densepred sync-tracking`
(`sync_journals`), or the next run of the same stage (start.py, through `sync_journal`).

Each journaled run is uploaded exactly once: a run created from a journal is tagged
`densepred.local_id`, so an interrupted upload is found and replaced, and metric steps already in a
continued run are skipped. A journal still being written (its process alive, a run not ended) is
left alone.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densepred.paths import find_tracking_journals
from densepred.tracking.journal import LOCAL_PREFIX, Journal, recorded_uri, writer_alive
from densepred.tracking.provenance import PARENT_TAG, DatasetRecord
from densepred.tracking.run import MlflowRun, kept_metrics
from densepred.tracking.store import experiment_of, open_client, store_uri, with_retry

LOCAL_ID_TAG = "densepred.local_id"  # on a run uploaded from a journal: the id it had there
DEFAULT_EXPERIMENT = "densepred"


def find_local(client: Any, exp_id: str, local_id: str) -> str | None:
    """The id of the run uploaded from the journaled run `local_id`, if any."""
    runs = with_retry(
        client.search_runs, [exp_id], filter_string=f"tags.`{LOCAL_ID_TAG}` = '{local_id}'", max_results=5
    )
    return runs[0].info.run_id if runs else None


def logged_steps(client: Any, run_id: str, keys: Mapping[str, Any]) -> dict[str, set[int]]:
    """The metric steps run `run_id` already holds, per metric key."""
    return {key: {m.step for m in with_retry(client.get_metric_history, run_id, key)} for key in keys}


@dataclass
class _Upload:
    """One journal's upload into experiment `exp_id` of the store `client` is open on."""

    path: Path
    client: Any
    exp_id: str
    uri: str
    ids: dict[str, str] = field(default_factory=dict)  # journaled run id -> the store's
    runs: dict[str, MlflowRun] = field(default_factory=dict)
    held: dict[str, dict[str, set[int]]] = field(default_factory=dict)  # continued runs: steps held

    def apply(self, event: Mapping[str, Any]) -> None:
        """Replay one journaled event in the store."""
        op, rid = event.get("op"), event.get("run", "")
        if op == "start":
            self.start(rid, event)
            return
        run = self.runs.get(rid)
        if run is None:
            return
        if op == "resume":
            with_retry(self.client.update_run, run.run_id, status="RUNNING")
        elif op == "params":
            run.log_params(event["params"])
        elif op == "tags":
            run.set_tags(self.resolved_tags(event["tags"]))
        elif op == "metrics":
            step = int(event.get("step", 0))
            kept = kept_metrics(event["metrics"], step, held=self.held.get(rid))
            run.write_metrics(kept, step, int(event["time"]))
        elif op == "artifact":
            self.artifact(run, event)
        elif op == "input":
            run.log_input(DatasetRecord(**{k: event[k] for k in ("name", "digest", "source", "context")}))
        elif op == "end":
            status = event.get("status", "FINISHED")
            with_retry(self.client.set_terminated, run.run_id, status, end_time=event["time"])

    def start(self, rid: str, event: Mapping[str, Any]) -> None:
        """The store's run for a journaled `start`: the existing run, or a new one (replacing the
        remains of an interrupted upload of the same journaled run)."""
        client = self.client
        if event.get("existing"):
            found = with_retry(client.get_run, event["run"])
            self.runs[rid] = MlflowRun(
                client, event["run"], uri=self.uri, artifact_uri=found.info.artifact_uri
            )
            self.ids[rid] = event["run"]
            self.held[rid] = logged_steps(client, self.ids[rid], found.data.metrics)
            return
        earlier = find_local(client, self.exp_id, event["run"])
        if earlier is not None:
            with_retry(client.delete_run, earlier)
        tags = self.resolved_tags({**event.get("tags", {}), LOCAL_ID_TAG: event["run"]})
        created = with_retry(
            client.create_run,
            self.exp_id,
            start_time=event["time"],
            tags=tags,
            run_name=event.get("run_name") or None,
        )
        self.runs[rid] = MlflowRun(
            client, created.info.run_id, uri=self.uri, artifact_uri=created.info.artifact_uri
        )
        self.ids[rid] = created.info.run_id

    def resolved_tags(self, tags: Mapping[str, str]) -> dict[str, str]:
        """`tags` with a journaled parent id (`local-...`) replaced by the store's id of that run."""
        out = dict(tags)
        parent = out.get(PARENT_TAG, "")
        if parent.startswith(LOCAL_PREFIX):
            resolved = self.ids.get(parent) or find_local(self.client, self.exp_id, parent)
            if resolved:
                out[PARENT_TAG] = resolved
        return out

    def artifact(self, run: MlflowRun, event: Mapping[str, Any]) -> None:
        """Upload a journaled artifact; one that is gone costs a warning."""
        artifact = Path(event["path"])
        if artifact.exists():
            run.log_artifact(artifact, event.get("artifact_path"))
        else:
            print(
                f"densepred: warning: {self.path}: artifact {artifact} is gone; not uploaded", file=sys.stderr
            )


def sync_journal(path: Path, *, client: Any = None, uri: str | None = None) -> dict[str, str]:
    """Upload the journal `path` to its store (`store_uri` of `uri`, else of the recorded URI) and
    remove it; returns {journaled run id: run id in the store}.

    Raises when the store cannot be reached, and `RuntimeError` for a journal still being written.
    """
    journal = Journal(path)
    events = journal.events()
    if not events:
        path.unlink(missing_ok=True)
        return {}
    starts = [e for e in events if e.get("op") == "start"]
    ended = {e.get("run") for e in events if e.get("op") == "end"}
    for start in starts:
        if start["run"] not in ended and writer_alive(start):
            raise RuntimeError(f"{path} is still being written by process {start.get('pid')}; sync it later")
    target = store_uri(uri or recorded_uri(events))
    experiment = next((s["experiment"] for s in starts if s.get("experiment")), DEFAULT_EXPERIMENT)
    if client is None:
        client, exp_id = open_client(target, experiment)
    else:
        exp_id = experiment_of(client, target, experiment)
    upload = _Upload(path, client, exp_id, target)
    for event in events:
        upload.apply(event)
    path.unlink(missing_ok=True)
    return upload.ids


def sync_journals(root: Path) -> tuple[int, list[tuple[Path, str]]]:
    """Upload every journal under `root` (parents first); returns (runs uploaded, [(journal, why not)]).

    Raises `ConnectionError` naming the URI when the store is still unreachable.
    """
    uploaded, left = 0, []
    for path in find_tracking_journals(root):
        try:
            uploaded += len(sync_journal(path))
        except RuntimeError as exc:
            left.append((path, str(exc)))
        except Exception as exc:
            uri = store_uri(recorded_uri(Journal(path).events()))
            cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConnectionError(
                f"cannot upload {path}: MLflow tracking at {uri} failed: {cause[:200]}"
            ) from exc
    return uploaded, left
