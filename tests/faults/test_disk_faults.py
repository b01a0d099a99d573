"""A full disk during `prepare`, `train` (checkpoint) and `evaluate`: one line naming the output being
written and "no space left on device", exit status 2, never a crash, and nothing half-written left
to fill the disk. Real full disks are small tmpfs mounts (root only: skipped elsewhere); one fault
is an injected ENOSPC that runs anywhere."""

from __future__ import annotations

import errno
import io

import pytest

from conftest import SMOKE
from densepred.engine import checkpoint
from engine_fixtures import no_tracking, tiny_data  # noqa: F401 (fixtures)
from fault_helpers import (  # noqa: F401 (fixtures)
    FAULT_MARKS,
    JOB,
    assert_fault,
    finish,
    leftovers,
    prepare_args,
    raw_data,
    run_main,
    start_patched,
    tmpfs,
    train_args,
    trained,
)

pytestmark = FAULT_MARKS

# The file system claims plenty of room, so that prepare starts writing and meets the real ENOSPC.
ROOMY_DISK = """
import collections, shutil
shutil.disk_usage = lambda path: collections.namedtuple("usage", "total used free")(1 << 40, 0, 1 << 40)
"""
FULL = "no space left on device while writing"


@pytest.fixture
def setup(trained):  # noqa: F811
    return trained


def test_prepare_checks_free_space_before_writing(raw_data, tmp_path, capsys):  # noqa: F811
    with tmpfs(tmp_path / "small", "64k") as disk:
        out = disk / "prepared"
        outcome = run_main(prepare_args(SMOKE, "nyud", raw_data["nyud"], out), capsys)
        assert_fault(outcome, f"{FULL} {out}", "needs about", "MB free", "nothing was written")
        assert list(disk.iterdir()) == []


def test_disk_full_while_prepare_writes_is_an_error_not_a_crash(raw_data, tmp_path):  # noqa: F811
    with tmpfs(tmp_path / "small", "96k") as disk:
        out = disk / "prepared"
        args = prepare_args(SMOKE, "nyud", raw_data["nyud"], out, "datasets.nyud.shard_size=1")
        outcome = finish(start_patched(ROOMY_DISK, args, cwd=tmp_path))
        assert_fault(outcome, f"{FULL} {out}", ".h5")  # the shard file that did not fit, too
        assert list(disk.iterdir()) == []  # the temp folder went: the space is free again


def test_disk_full_while_writing_a_checkpoint(setup, tmp_path, capsys):
    with tmpfs(tmp_path / "small", "256k") as disk:
        out = disk / "run"
        outcome = run_main(train_args(setup["params"], out), capsys)
        last = out / "checkpoints" / "last.pt"
        assert_fault(outcome, f"{FULL} {last}")
        assert not (out / "final.pt").exists() and not last.exists() and leftovers(disk) == []


def test_disk_full_while_evaluate_writes(setup, tmp_path, capsys):
    with tmpfs(tmp_path / "small", "16k") as disk:
        out = disk / "eval" / "metrics.json"
        args = ["evaluate", "--params", setup["params"], "--job", JOB, "--ckpt", setup["final"], "--out", out]
        outcome = run_main(args, capsys)
        assert_fault(outcome, f"{FULL} {out.with_name('metrics_figures')}")
        assert not out.exists() and not out.with_name("metrics_figures").exists()
        assert leftovers(disk) == []


class _FullDisk(io.BytesIO):
    """A file that takes `room` bytes and then fails as a full disk does."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, data) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def test_injected_enospc_in_a_checkpoint_write_is_named(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(checkpoint, "open", lambda path, mode: _FullDisk(room=4096), raising=False)
    out = tmp_path / "run"
    outcome = run_main(train_args(setup["params"], out), capsys)
    assert_fault(outcome, f"{FULL} {out / 'checkpoints' / 'last.pt'}")
    assert not (out / "final.pt").exists() and leftovers(out) == []
    assert not (out / "checkpoints" / "last.pt").exists()
