"""A 2-process stage, started as the pipeline starts it (launch.py: torchrun --standalone), loses a
rank to SIGKILL mid-training: the stage exits non-zero within 60 s (no rank hangs on a collective:
torchrun's agent stops the survivor), its output names the rank that died, and the same command
resumes from the last checkpoint to bitwise the weights of an uninterrupted 2-process run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from densepred.launch import train_argv
from densepred.params_loading import load_params
from engine_fixtures import (  # noqa: F401 (fixtures)
    assert_bitwise_equal,
    cli_env,
    load_weights,
    no_tracking,
    tiny_data,
    tiny_params_file,
    wait_for,
)

pytestmark = pytest.mark.slow

JOB, STAGE = "stl_depth", "finetune"
SETS = ["runtime.procs_per_job=2"]


def command(path: Path, out: Path) -> list[str]:
    argv = ["densepred", "train", "--params", str(path), "--job", JOB, "--stage", STAGE, "--out", str(out)]
    argv += [a for s in SETS for a in ("--set", s)]
    return list(train_argv(load_params(path, SETS).runtime, argv))


def start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=cli_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def rank_pid(agent: int, rank: int, timeout: float = 60.0) -> int:
    """The pid of the worker with RANK=`rank` among the torchrun agent's children."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{agent}/task/{agent}/children").read_text().split()
        for pid in children:
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(pid)
        time.sleep(0.05)
    raise AssertionError(f"no worker with RANK={rank} under torchrun {agent}")


def test_killed_rank_stops_the_stage_and_a_rerun_resumes(tiny_data, tmp_path):  # noqa: F811
    path = tiny_params_file(tiny_data, tmp_path, iterations=40, batch_size=4)
    reference, out = tmp_path / "reference", tmp_path / "killed"
    done = start(command(path, reference), tmp_path)
    assert done.wait(300) == 0, done.stdout.read()
    assert command(path, out)[:4] == ["torchrun", "--standalone", "--nproc-per-node", "2"]

    proc = start(command(path, out), tmp_path)
    wait_for(out / "checkpoints" / "last.pt", proc)
    victim = rank_pid(proc.pid, 1)
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    try:
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    elapsed = time.monotonic() - killed_at
    print(f"the stage exited {elapsed:.1f} s after rank 1 was killed")
    assert elapsed < 60
    assert proc.returncode != 0
    assert not (out / "final.pt").exists(), "the run finished before the rank was killed"
    assert "rank      : 1" in output or "rank: 1" in output, output[-3000:]
    assert "SIGKILL" in output or "Signal 9" in output, output[-3000:]

    rerun = start(command(path, out), tmp_path)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output[-3000:]
    assert "resuming from" in output
    assert_bitwise_equal(load_weights(out / "final.pt"), load_weights(reference / "final.pt"))
