"""Atomic output helpers: every stage output is written to a temp file and renamed into place.

An interrupted job therefore never leaves a half-written file that looks complete.
The renamed outputs get the usual permissions (0666 / 0777 less the umask), not the owner-only mode
of `tempfile`'s temp files, so results stay readable to the other users of a shared project folder.

Temp names are `.<name>.<host>.<pid>.<random>.tmp` beside the output. A process killed with
SIGKILL cannot remove its temp file or folder, so the next write of the same output removes the
temps whose owner is gone: same host and no process with that PID any more (a concurrent writer's
temp is kept), or, for the older `.<name>.<random>.tmp` names without an owner, older than the
current process. A disk that fills up while an output is written raises `DiskFullError`, which names
the output (and the file inside a temp folder) in one line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_STARTED = time.time()


class DiskFullError(OSError):
    """No space (or quota) left for `filename`; str() is one line naming it, the cause and `detail`."""

    def __init__(self, path: Path | str, detail: str = "", code: int = errno.ENOSPC) -> None:
        super().__init__(code, os.strerror(code), str(path))
        self.detail = detail

    def __str__(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"no space left on device while writing {self.filename}{detail}"


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError that means the file system (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS


@contextlib.contextmanager
def naming_disk_full(path: Path) -> Iterator[None]:
    """Turn a disk-full OSError raised in the block into a `DiskFullError` naming `path`.

    Many writers (torch, h5py, csv) report ENOSPC without the file name; the user needs to know
    which output, and so which file system, ran out of space.
    """
    try:
        yield
    except OSError as exc:
        if not is_disk_full(exc) or str(exc.filename) == str(path):
            raise
        parts = [
            f"at {exc.filename}" if exc.filename else "",
            getattr(exc, "detail", ""),  # an inner DiskFullError's
            "disk quota exceeded" if exc.errno == errno.EDQUOT else "",
        ]
        raise DiskFullError(path, "; ".join(p for p in parts if p), exc.errno) from exc


def check_free_space(path: Path, needed: int) -> None:
    """Raise `DiskFullError` before writing when the file system of `path` has under `needed` bytes free."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed:
        detail = f"needs about {needed / 1e6:.1f} MB, {free / 1e6:.1f} MB free in {folder}"
        raise DiskFullError(path, f"{detail}; nothing was written")


def host_tag() -> str:
    """This machine's name as it appears in temp names (letters, digits and '-' only)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{host_tag()}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


# The part of a temp name between `.<name>.` and `.tmp`: host.pid.random, or random alone (older
# names). `tempfile` draws 8 characters from [a-z0-9_]; anything else belongs to another output.
_OWNED = re.compile(r"(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[a-z0-9_]{8}")
_UNOWNED = re.compile(r"[a-z0-9_]{8}")


def _is_stale(temp: Path, owner: str) -> bool:
    """Whether `temp` (with `owner`, the middle part of its name) was abandoned by its writer."""
    match = _OWNED.fullmatch(owner)
    if match:
        pid = int(match["pid"])
        return match["host"] == host_tag() and pid != os.getpid() and not _pid_alive(pid)
    if not _UNOWNED.fullmatch(owner):
        return False  # e.g. a temp of `<name>.json` when `path` is `<name>`
    try:
        return temp.lstat().st_mtime < _STARTED
    except FileNotFoundError:
        return False


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temp files and folders of `path` left by writers that are gone; return them."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    head, tail = f".{path.name}.", ".tmp"
    removed = []
    for temp in path.parent.iterdir():
        name = temp.name
        if not (name.startswith(head) and name.endswith(tail)):
            continue
        if not _is_stale(temp, name[len(head) : -len(tail)]):
            continue
        with contextlib.suppress(FileNotFoundError):  # a concurrent run may remove it first
            if temp.is_dir() and not temp.is_symlink():
                shutil.rmtree(temp)
            else:
                temp.unlink()
        removed.append(temp)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: Path, path: Path, mode: int) -> None:
    """Give `tmp` the umask-respecting `mode` and rename it onto `path`."""
    os.chmod(tmp, mode & ~_umask())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it onto `path`, on error remove it.

    Abandoned temps of `path` (see the module docstring) are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with naming_disk_full(path):
            yield tmp_path
        _publish(tmp_path, path, 0o666)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: Path, data: Any) -> None:
    """Write `data` as sorted, indented JSON atomically (byte-stable for DVC and git diffs)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def _replace_dir(tmp: Path, path: Path) -> None:
    """Publish folder `tmp` onto the existing folder `path`; the old one goes through a temp of its own.

    The old folder's temp is unique to this writer (so concurrent writers of `path` do not collide)
    and, if this process is killed before removing it, abandoned like any other temp.
    """
    legacy = path.with_name(f".{path.name}.old")  # the fixed name of earlier versions
    if legacy.exists():
        shutil.rmtree(legacy)
    old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        os.replace(path, old)  # onto the empty folder `old`
        _publish(tmp, path, 0o777)
    finally:
        shutil.rmtree(old, ignore_errors=True)


# A concurrent writer of the same folder can publish it between this writer's check and its rename.
_RACED = (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT)
_PUBLISH_TRIES = 10


def _publish_dir(tmp: Path, path: Path) -> None:
    """Publish folder `tmp` as `path`, replacing what is there; retried when another writer of
    `path` published in between (both outputs are complete, the last one wins)."""
    for attempt in range(_PUBLISH_TRIES):
        try:
            if path.exists():
                _replace_dir(tmp, path)
            else:
                _publish(tmp, path, 0o777)
            return
        except OSError as exc:
            if exc.errno not in _RACED or attempt == _PUBLISH_TRIES - 1:
                raise


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temp directory beside `path`; on success it replaces `path` whole, on error it goes.

    Abandoned temps of `path` (see the module docstring) are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        with naming_disk_full(path):
            yield tmp
        _publish_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
