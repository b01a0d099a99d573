"""Atomic outputs: complete or absent, and readable with the usual permissions."""

from __future__ import annotations

import os
import stat

import pytest

from densepred.io import atomic_dir, atomic_path, atomic_write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_file_has_umask_permissions_not_temp_file_ones(tmp_path, umask_022):
    out = tmp_path / "results" / "table.csv"
    atomic_write_text(out, "a,b\n")
    assert out.read_text() == "a,b\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_written_dir_has_umask_permissions(tmp_path, umask_022):
    out = tmp_path / "prepared"
    with atomic_dir(out) as tmp:
        (tmp / "x.txt").write_text("x")
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert (out / "x.txt").read_text() == "x"


def test_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "metrics.json"
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
