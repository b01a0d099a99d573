"""Why a run failed, in MLflow: the command's one-line error as a tag and its log as an artifact.

A command that fails prints one line (`densepred train: error: corrupt shard ...`, see
`densepred.cli.main`). The MLflow runs it opened and that ended FAILED or KILLED in this process get
that exact line as the tag `densepred.error` (a bug: the last line of its traceback) and the
command's log as the artifact `stage.log`, so a reader of the runs table sees the cause, not just
the status. A resumed run that then finishes loses the tag again (`tracking.start._reopen`).

The log: when the command's stderr is a regular file, as under Snakemake (`> {log} 2>&1`), SLURM or
a user's redirection, that file is the log (found through /proc/self/fd/2, Linux);
it is uploaded after the error line is printed, so it ends with it. Otherwise (a terminal, a pipe)
the log is what the command wrote through `sys.stdout` and `sys.stderr`, captured while it ran
(`watch`); output of child processes and of C code is not in it. Either way at most the last
`MAX_LOG_BYTES` are kept.

Checks that can refuse a command before its work (params, the prepared data's index and shard
sizes, checkpoints) run before its run opens, so such a refusal leaves no run at all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

ERROR_TAG = "densepred.error"
LOG_ARTIFACT = "stage.log"
MAX_LOG_BYTES = 8 << 20

_WATCH: Watch | None = None  # the command being watched (one at a time: the CLI's main)


def note_failed(run: Any) -> None:
    """Remember `run` (a `tracking` run that just ended FAILED or KILLED) for `Watch.failed`."""
    if _WATCH is not None and getattr(run, "run_id", None):
        _WATCH.runs.append(run)


def redirected_log() -> Path | None:
    """The regular file this process's stderr (where its errors and progress go) is redirected to,
    or None (a terminal, a pipe, a deleted file, or no /proc)."""
    try:
        info = os.fstat(2)
        path = Path(os.readlink("/proc/self/fd/2"))
        if stat.S_ISREG(info.st_mode) and path.is_file() and path.stat().st_ino == info.st_ino:
            return path
    except OSError:
        pass
    return None


class _Tee:
    """A text stream that writes through to `inner` and keeps a copy in `sink` (the newest
    MAX_LOG_BYTES characters); anything else is `inner`'s."""

    def __init__(self, inner: TextIO, sink: list[str]) -> None:
        self.inner = inner
        self.sink = sink

    def write(self, text: str) -> int:
        self.sink.append(text)
        if len(self.sink) > 4096:  # bound the memory of a long run: keep the newest text
            self.sink[:] = ["".join(self.sink)[-MAX_LOG_BYTES:]]
        return self.inner.write(text)

    def flush(self) -> None:
        self.inner.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Watch:
    """One command's failed runs and its log (see the module docstring)."""

    def __init__(self) -> None:
        self.runs: list[Any] = []
        self.log = redirected_log()
        self.captured: list[str] = []

    def failed(self, line: str) -> None:
        """Record `line` (what the command printed) and the log on every run that failed in it. A
        store that refuses costs a warning, never the command's own error or exit status."""
        if not self.runs:
            return
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        with tempfile.TemporaryDirectory(prefix="densepred-log-") as tmp:
            log = Path(tmp) / LOG_ARTIFACT
            self._snapshot(log)
            for run in self.runs:
                try:
                    run.set_tags({ERROR_TAG: line})
                    run.log_artifact(_kept_copy(run, log))
                except Exception as exc:
                    print(
                        f"densepred: warning: could not record the failure in MLflow run {run.run_id}: "
                        f"{type(exc).__name__}: {str(exc).strip()[:200]}",
                        file=sys.stderr,
                    )
        self.runs.clear()

    def _snapshot(self, dest: Path) -> None:
        """Write the last MAX_LOG_BYTES of the log to `dest`."""
        if self.log is not None and self.log.is_file():
            with open(self.log, "rb") as src, open(dest, "wb") as out:
                src.seek(max(0, self.log.stat().st_size - MAX_LOG_BYTES))
                shutil.copyfileobj(src, out)
            return
        dest.write_text("".join(self.captured)[-MAX_LOG_BYTES:], encoding="utf-8", errors="replace")


def _kept_copy(run: Any, log: Path) -> Path:
    """`log` itself for a run written to the store now; for a run kept in its journal (the store is
    unreachable) a copy in a folder beside the journal, which the journal's later upload reads."""
    # A `tracking.Run` names its journal while it writes one. No import of tracking, which imports
    # this module.
    journal = run.journal_path
    if journal is None:
        return log
    keep = journal.parent / f".{journal.stem}-{run.run_id}" / LOG_ARTIFACT
    keep.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(log, keep)
    return keep


@contextlib.contextmanager
def watch() -> Iterator[Watch]:
    """Watch one command: runs that fail in it are noted, and without a log file its output through
    sys.stdout/sys.stderr is captured (restored on the way out)."""
    global _WATCH
    current = Watch()
    previous, _WATCH = _WATCH, current
    streams = (sys.stdout, sys.stderr)
    capture = current.log is None and None not in streams
    if capture:
        sys.stdout, sys.stderr = (_Tee(s, current.captured) for s in streams)
    try:
        yield current
    finally:
        _WATCH = previous
        if capture:
            sys.stdout, sys.stderr = streams
