"""Fault: the whole pipeline interrupted. `snakemake` stopped by SIGTERM while a training stage runs
(as a cluster's time limit or a Ctrl-C does) leaves no output that looks complete, and the rerun
redoes only the unfinished work: stages that had finished keep their outputs untouched."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from project_fixtures import BIN, TARGET, make_project, project_env, run

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"snakemake ended (exit {proc.returncode}) before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout:.0f} s"
        time.sleep(0.2)


def test_interrupted_pipeline_redoes_only_unfinished_work(tmp_path):
    root = make_project(tmp_path / "project")
    first = root / "runs/smoke/polymax_depth/pretrain/final.pt"
    proc = subprocess.Popen(
        [str(BIN / "snakemake"), "--cores", "1", TARGET],
        cwd=root,
        env=project_env(root),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(first, proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert not (root / TARGET).exists()
    finished = {p: p.stat().st_mtime_ns for p in (root / "runs").rglob("final.pt")}
    assert first in finished

    run(root, "snakemake", "--cores", "2", TARGET)
    assert (root / TARGET).is_file()
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was redone"
    leftovers = [p for p in root.rglob("*.tmp") if ".snakemake" not in p.parts]
    assert not leftovers, leftovers
