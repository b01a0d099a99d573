"""Signals and concurrent writers: SIGTERM, SIGINT and kill -9 during `train` and `prepare`, then the
same command again; two writers of one output at once. Nothing is lost (training resumes from its
checkpoint), nothing half-written stays (temps of dead writers are removed by the next run), and a
live writer's temp is never touched."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SMOKE
from densepred.data.shards import ShardDataset
from densepred.engine.checkpoint import load_checkpoint
from densepred.io import host_tag
from engine_fixtures import no_tracking, tiny_data, tiny_params_file  # noqa: F401 (fixtures)
from fault_helpers import (  # noqa: F401 (fixtures)
    FAULT_MARKS,
    SIGNAL_EXIT,
    SLOW_SHARDS,
    assert_fault,
    dead_pid,
    finish,
    interrupt,
    leftovers,
    prepare_args,
    raw_data,
    run_main,
    start,
    start_patched,
    train_args,
    wait_for,
    wait_for_temp,
)

pytestmark = FAULT_MARKS

# long enough to be interrupted after the first checkpoint (every 2 steps) and before the last step
# on a fast CPU (the tiny model trains at about 100 img/s, so 40 steps ended within a second)
ITERATIONS = 200


@pytest.fixture(scope="module")
def params(tiny_data, tmp_path_factory) -> Path:  # noqa: F811
    return tiny_params_file(tiny_data, tmp_path_factory.mktemp("signal_faults"), iterations=ITERATIONS)


def assert_resumes_to_the_end(params: Path, out: Path, capsys) -> None:
    """The same command again finishes the stage from the checkpoint and leaves no temps."""
    before = load_checkpoint(out / "checkpoints" / "last.pt")["step"]
    assert 2 <= before < ITERATIONS
    outcome = run_main(train_args(params, out), capsys)
    assert outcome.code == 0, outcome.err
    assert f"resuming from {out / 'checkpoints' / 'last.pt'} at step {before}" in outcome.out + outcome.err
    assert load_checkpoint(out / "final.pt")["step"] == ITERATIONS
    assert leftovers(out) == []


# ------------------------------------------------------------------------------------ train


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_train_then_resume(params, tmp_path, capsys, signum):
    out = tmp_path / "run"
    proc = start(train_args(params, out), cwd=tmp_path)
    wait_for(out / "checkpoints" / "last.pt", proc)
    interrupt(proc, signum)
    outcome = finish(proc)
    if signum == signal.SIGTERM:
        last = out / "checkpoints" / "last.pt"
        expected = ("stopped by SIGTERM at step", f"checkpoint saved at {last}", "rerun the same command")
    else:
        expected = ("interrupted", "rerun the same command")
    assert_fault(outcome, *expected, code=SIGNAL_EXIT[signum])
    assert not (out / "final.pt").exists() and leftovers(out) == []
    assert_resumes_to_the_end(params, out, capsys)


def test_kill_9_during_train_then_resume(params, tmp_path, capsys):
    out = tmp_path / "run"
    proc = start(train_args(params, out), cwd=tmp_path)
    wait_for(out / "checkpoints" / "last.pt", proc)
    interrupt(proc, signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    assert not (out / "final.pt").exists()
    assert_resumes_to_the_end(params, out, capsys)


# ---------------------------------------------------------------------------------- prepare


def slow_prepare(raw_data, tmp_path: Path, out: Path) -> subprocess.Popen:  # noqa: F811
    args = prepare_args(SMOKE, "nyud", raw_data["nyud"], out, "datasets.nyud.shard_size=1")
    return start_patched(SLOW_SHARDS, args, cwd=tmp_path)


def test_sigterm_during_prepare_removes_the_unfinished_output(raw_data, tmp_path):  # noqa: F811
    out = tmp_path / "prepared"
    proc = slow_prepare(raw_data, tmp_path, out)
    wait_for_temp(tmp_path, out.name, proc)
    interrupt(proc, signal.SIGTERM)
    outcome = finish(proc)
    assert_fault(outcome, "stopped by SIGTERM", "unfinished outputs were removed", code=143)
    assert not out.exists() and leftovers(tmp_path) == []


def test_kill_9_during_prepare_leaves_a_temp_the_rerun_removes(raw_data, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "prepared"
    proc = slow_prepare(raw_data, tmp_path, out)
    temp = wait_for_temp(tmp_path, out.name, proc)
    interrupt(proc, signal.SIGKILL)
    proc.wait(60)
    assert not out.exists() and temp.is_dir() and f".{proc.pid}." in temp.name
    outcome = run_main(prepare_args(SMOKE, "nyud", raw_data["nyud"], out), capsys)
    assert outcome.code == 0, outcome.err
    assert not temp.exists() and leftovers(tmp_path) == []
    assert len(ShardDataset(out, "train")) == 5


def test_temps_of_live_writers_are_kept_and_of_dead_ones_removed(raw_data, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "prepared"
    host = host_tag()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".prepared.{host}.{sleeper.pid}.abcd1234.tmp"
        dead = tmp_path / f".prepared.{host}.{dead_pid()}.abcd1234.tmp"
        elsewhere = tmp_path / f".prepared.otherhost.{dead_pid()}.abcd1234.tmp"
        other_output = tmp_path / f".prepared.json.{host}.{dead_pid()}.abcd1234.tmp"
        for temp in (live, dead, elsewhere, other_output):
            temp.mkdir()
        assert run_main(prepare_args(SMOKE, "nyud", raw_data["nyud"], out), capsys).code == 0
        assert live.is_dir() and not dead.exists()
        assert elsewhere.is_dir() and other_output.is_dir()  # not judged from this host / not ours
    finally:
        sleeper.kill()
        sleeper.wait()


def test_concurrent_prepares_of_one_output_both_succeed(raw_data, tmp_path):  # noqa: F811
    out = tmp_path / "prepared"
    procs = [slow_prepare(raw_data, tmp_path, out) for _ in range(2)]
    outcomes = [finish(proc) for proc in procs]
    assert [o.code for o in outcomes] == [0, 0], [o.err for o in outcomes]
    assert leftovers(tmp_path) == []
    dataset = ShardDataset(out, "train")
    assert len(dataset) == 5 and dataset[4]["depth"].shape[-2:] == (48, 64)
