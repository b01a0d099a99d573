"""Helpers of the fault suite: tiny raw data, commands run in-process or as processes, and the checks
every fault shares (exit status, a one-line message naming the path and the cause, no traceback, no
partial outputs).

Bad params are built from the shrunk smoke profile of `engine_fixtures` plus `--set` overrides or
edits of sections that every params layout has (`synth`, `datasets`, `runtime`, `jobs.<name>.model`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from densepred.cli import main
from engine_fixtures import cli_env, tiny_params_file

# The marks every fault module carries: the `faults` marker, tracking off, torch's warnings quiet.
FAULT_MARKS = [
    pytest.mark.faults,
    pytest.mark.usefixtures("no_tracking"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

# The job of the training faults: the smallest model, finetuned on the tiny NYUD-v2.
JOB, STAGE = "stl_depth", "finetune"


@dataclass
class Outcome:
    """Exit status and output of one command."""

    code: int
    out: str
    err: str


def run_main(args: list[str], capsys: pytest.CaptureFixture) -> Outcome:
    """`densepred ARGS` in this process (fast: torch is imported once for the whole suite)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def start(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m densepred.cli ARGS` as its own process (for signals and crashes), output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "densepred.cli", *map(str, args)],
        cwd=cwd,
        env=env or cli_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    """Give the child Ctrl-C's default disposition, as in a terminal: a test suite started in the
    background (`cmd &`) ignores SIGINT, the child would inherit that, and Python would then never
    raise KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_patched(patch: str, args: list[str], cwd: Path) -> subprocess.Popen:
    """Like `start`, after running the Python statements `patch` in the process (fault injection:
    slow writes, a file system that claims to have room)."""
    code = f"import sys\n{patch}\nfrom densepred.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=cwd,
        env=cli_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


# Each shard written takes 0.3 s longer, so that a signal reliably arrives while prepare writes.
SLOW_SHARDS = """
import time
from densepred.data import shards
_flush = shards.ShardWriter.flush
def _slow_flush(self):
    _flush(self)
    time.sleep(0.3)
shards.ShardWriter.flush = _slow_flush
"""


def run_process(args: list[str], cwd: Path, timeout: float = 180) -> Outcome:
    """Run `densepred ARGS` as a process to the end."""
    proc = start(args, cwd)
    out, err = proc.communicate(timeout=timeout)
    return Outcome(proc.returncode, out, err)


def finish(proc: subprocess.Popen, timeout: float = 120) -> Outcome:
    out, err = proc.communicate(timeout=timeout)
    return Outcome(proc.returncode, out, err)


def assert_fault(outcome: Outcome, *needles: str, code: int = 2) -> None:
    """Exit status `code`, an error naming every needle (paths, keys, causes), no traceback."""
    assert outcome.code == code, f"exit status {outcome.code}, expected {code}; stderr:\n{outcome.err}"
    for needle in needles:
        assert needle in outcome.err, f"{needle!r} missing from stderr:\n{outcome.err}"
    assert "Traceback" not in outcome.err, outcome.err
    if code == 2:
        assert outcome.err.count(": error: ") == 1, outcome.err


def leftovers(folder: Path) -> list[Path]:
    """Temp files and folders of interrupted writes anywhere below `folder`."""
    return sorted(p for p in Path(folder).rglob(".*") if p.name.endswith(".tmp") or p.name.endswith(".old"))


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll until `path` exists; fail when the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended ({proc.returncode}) before {path} appeared:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def wait_for_temp(folder: Path, name: str, proc: subprocess.Popen, timeout: float = 120) -> Path:
    """Poll until a temp `.<name>.*.tmp` folder holding a file appears in `folder`; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for temp in folder.glob(f".{name}.*.tmp"):
            if temp.is_dir() and any(temp.iterdir()):
                return temp
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended ({proc.returncode}) before writing:\n{out}\n{err}")
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"no temp folder of {name} appeared within {timeout} s")


def train_args(params: Path, out: Path, *sets: str, job: str = JOB, stage: str = STAGE) -> list[str]:
    args = ["train", "--params", params, "--job", job, "--stage", stage, "--out", out]
    return args + [a for s in sets for a in ("--set", s)]


def prepare_args(params: Path, dataset: str, src: Path, out: Path, *sets: str) -> list[str]:
    args = ["prepare", "--params", params, "--dataset", dataset, "--src", src, "--out", out]
    return args + [a for s in sets for a in ("--set", s)]


def copy_tree(src: Path, dst: Path) -> Path:
    """A private copy of a dataset that a test may damage."""
    shutil.copytree(src, dst)
    return dst


def dead_pid() -> int:
    """The PID of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "1m") mounted at `folder`; skips the test where that is impossible."""
    if os.geteuid() != 0:
        pytest.skip("a small tmpfs (disk-full faults) needs root")
    folder.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def interrupt(proc: subprocess.Popen, signum: int) -> None:
    """Send `signum` to a running process; fail when it has already ended."""
    assert proc.poll() is None, "the command finished before it could be interrupted"
    proc.send_signal(signum)


SIGNAL_EXIT = {signal.SIGTERM: 143, signal.SIGINT: 130}


@pytest.fixture(scope="session")
def raw_data(tmp_path_factory) -> dict[str, Path]:
    """Tiny raw datasets in the real formats: NYUD-v2 official release (8 frames, 5 train / 3 test,
    48x64) and Taskonomy (3 buildings x 4 views at 48x48). Tests damage private copies."""
    from densepred.data.synthetic import synthesize_nyud, synthesize_taskonomy

    root = tmp_path_factory.mktemp("fault_raw")
    nyud = synthesize_nyud(
        root / "nyud", seed=0, layout="official", num_images=8, num_test=3, height=48, width=64
    )
    return {
        "nyud": nyud,
        "taskonomy": synthesize_taskonomy(root / "taskonomy", 3, 4, 48, seed=1, defects=False),
    }


@pytest.fixture(scope="session")
def trained(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """The shrunk smoke profile on the tiny prepared data, and one finished stage of `JOB`."""
    folder = tmp_path_factory.mktemp("trained")
    params = tiny_params_file(tiny_data, folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DENSEPRED_TRACKING", "off")
        assert main([str(a) for a in train_args(params, folder / "run")]) == 0
    return {"params": params, "final": folder / "run" / "final.pt", "data": tiny_data}
