"""Atomic output helpers: every stage output is written to a temp file and renamed into place.

An interrupted job therefore never leaves a half-written file that looks complete.
The renamed outputs get the usual permissions (0666 / 0777 less the umask), not the owner-only mode
of `tempfile`'s temp files, so results stay readable to the other users of a shared project folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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
    """Yield a temp path beside `path`; on success rename it onto `path`, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
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


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temp directory beside `path`; on success it replaces `path` whole, on error it goes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            _publish(tmp, path, 0o777)
            shutil.rmtree(old)
        else:
            _publish(tmp, path, 0o777)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
