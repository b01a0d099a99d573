"""Opening a stage execution's run (`start_run`): in the store, else in the run folder's journal, or
not at all with tracking off; and ending it with the status the block ends with."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from densepred.run_failure import ERROR_TAG, note_failed
from densepred.tracking.journal import LOCAL_PREFIX, Journal, max_step, new_local_id, now_ms, start_event
from densepred.tracking.provenance import Nesting, RunSubject, placed_run_tags, run_params
from densepred.tracking.run import DisabledRun, Fallback, MlflowRun, OfflineRun, Run
from densepred.tracking.store import not_found, open_client, tracking_enabled, tracking_uri, with_retry
from densepred.tracking.sync import find_local, logged_steps, sync_journal


@contextlib.contextmanager
def start_run(
    subject: RunSubject,
    kind: str,
    *,
    journal: Path | None = None,
    run_id: str | None = None,
    enabled: bool = True,
    run_name: str | None = None,
    nesting: Nesting | None = None,
) -> Iterator[Run]:
    """Open one MLflow run for a stage execution (`kind`: train, evaluate, sweep, trial).

    Tags and flattened params are logged at the start. `run_id` continues an earlier run (a resumed
    training) instead of creating one: its params are not logged again, and metric steps it already
    holds are skipped. The run ends FINISHED when the block completes, KILLED on
    KeyboardInterrupt/SystemExit and FAILED on any other exception; a run that fails under the CLI
    then gets its error line and log (run_failure.py). With `nesting` the run is a child of
    `nesting.parent_run_id` and carries its tags (a sweep trial's stages), else a top-level run.

    `journal` (a file in the run folder) is where the run is recorded when the store cannot be
    reached; a journal left there by an earlier attempt is uploaded first when the store is back.
    Without a journal a store failure raises. `enabled=False` (DDP ranks other than 0) or
    DENSEPRED_TRACKING=off yields a `DisabledRun`.
    """
    if not (enabled and tracking_enabled()):
        yield DisabledRun()
        return
    uri = tracking_uri(subject.tracking)
    tags = placed_run_tags(subject, kind, nesting)
    name = run_name or "-".join(x for x in (subject.job, subject.stage, kind) if x)
    fallback = Fallback(uri, Journal(journal)) if journal is not None else None
    run: Run
    try:
        run = _open_online(uri, subject, tags, name, run_id, fallback)
    except Exception as exc:
        if fallback is None:
            raise
        fallback.warn(exc)
        run = _open_offline(uri, subject, tags, name, run_id, fallback.journal)
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
    fallback: Fallback | None,
) -> MlflowRun:
    client, exp_id = open_client(uri, subject.tracking.experiment)
    if fallback is not None and fallback.journal.path.is_file():
        uploaded = sync_journal(fallback.journal.path, client=client, uri=uri)
        run_id = uploaded.get(run_id or "", run_id)
    if run_id and run_id.startswith(LOCAL_PREFIX):
        run_id = find_local(client, exp_id, run_id)
    if run_id:
        reopened = _reopen(client, run_id, uri, fallback)
        if reopened is not None:
            return reopened
    created = with_retry(client.create_run, exp_id, tags=tags, run_name=name)
    run = MlflowRun(
        client, created.info.run_id, uri=uri, artifact_uri=created.info.artifact_uri, fallback=fallback
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
        run = OfflineRun(journal, run_id or "", max_step(events))
        journal.append({"op": "resume", "run": run.run_id, "time": now_ms()})
        return run
    if run_id and not run_id.startswith(LOCAL_PREFIX):  # a run the store has: continue it when synced
        journal.append(start_event(run_id, uri, existing=True))
        return OfflineRun(journal, run_id)
    local = new_local_id()
    journal.append(
        start_event(
            local, uri, existing=False, experiment=subject.tracking.experiment, run_name=name, tags=tags
        )
    )
    run = OfflineRun(journal, local)
    run.log_params(run_params(subject))
    return run


def _reopen(client: Any, run_id: str, uri: str, fallback: Fallback | None) -> MlflowRun | None:
    """The run `run_id` set back to RUNNING, or None if this store does not have it."""
    try:
        found = with_retry(client.get_run, run_id)
    except Exception as exc:
        if not_found(exc):
            return None
        raise
    if found.info.lifecycle_stage == "deleted":
        return None
    with_retry(client.update_run, run_id, status="RUNNING")
    if ERROR_TAG in found.data.tags:  # the error of the attempt that failed no longer holds
        with_retry(client.delete_tag, run_id, ERROR_TAG)
    steps = logged_steps(client, run_id, found.data.metrics)
    last = max((max(s) for s in steps.values() if s), default=None)
    return MlflowRun(
        client, run_id, uri=uri, artifact_uri=found.info.artifact_uri, fallback=fallback, skip_until=last
    )
