"""The offline journal: a run folder's JSON-lines record of what a run would have logged while its
store could not be reached (`paths.tracking_journal`, `paths.eval_tracking_journal`).

Written by the offline run (run.py's `OfflineRun`); uploaded and removed by `sync.sync_journal`
(`densepred sync-tracking`, or the next run of the same stage) once the store is back.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LOCAL_PREFIX = "local-"  # the id of a journaled run the store has not seen: local-<uuid>


def now_ms() -> int:
    """The time now, in milliseconds since the epoch (MLflow's timestamps)."""
    return int(time.time() * 1000)


def new_local_id() -> str:
    """A fresh id for a run that only the journal holds so far."""
    return LOCAL_PREFIX + uuid.uuid4().hex


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
        """Append one event (a line, under an exclusive lock: other writers never interleave)."""
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


def start_event(
    run_id: str,
    uri: str,
    *,
    existing: bool,
    experiment: str = "",
    run_name: str = "",
    tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The `start` event of a journaled run: a new one (`existing=False`, with its experiment, name
    and tags) or a run the store already holds, continued in the journal."""
    return {
        "op": "start",
        "run": run_id,
        "time": now_ms(),
        "uri": uri,
        "experiment": experiment,
        "run_name": run_name,
        "tags": dict(tags or {}),
        "existing": existing,
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }


def recorded_uri(events: list[dict[str, Any]]) -> str | None:
    """The store URI that the first journaled run recorded at its start, if any."""
    return next((e["uri"] for e in events if e.get("uri")), None)


def max_step(events: list[dict[str, Any]]) -> int | None:
    """The last metric step among `events`, or None."""
    steps = [int(e["step"]) for e in events if e.get("op") == "metrics"]
    return max(steps) if steps else None


def writer_alive(start: Mapping[str, Any]) -> bool:
    """True when the process that started a journaled run still runs on this host."""
    if start.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(start.get("pid", 0)), 0)
    except (OSError, ValueError):
        return False
    return int(start.get("pid", 0)) != os.getpid()
