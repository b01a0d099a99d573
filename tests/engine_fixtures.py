"""Fixtures for the engine tests: a TINY synthetic NYUD-v2 and Taskonomy, prepared once per session,
and the real smoke profile shrunk to a few iterations on them.

Use from a test module with `from engine_fixtures import no_tracking, tiny_data  # noqa: F401`.
`train` and `evaluate` run one stage the way `densepred train` / `densepred evaluate` do: they build
the stage's `StageRun` from the params and pass it to the engine.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, SMOKE, write_params
from densepred.config import Params
from densepred.stage_run import StageRun

NYUD = {"num_images": 12, "num_test": 5, "height": 48, "width": 64}
TASKONOMY = {"buildings": 3, "views_per_building": 6, "size": 64}
# Short stages with checkpoints and log rows every 2 steps; crops are multiples of the backbone stride.
STAGE = {
    "iterations": 6,
    "batch_size": 2,
    "crop": [32, 32],
    "checkpoint_every": 2,
    "log_every": 2,
    "schedule": {"name": "poly", "power": 0.9, "warmup_iters": 2},
}


def train(params: Params, job: str, stage: str, out: Path, init: Path | None = None) -> Path:
    """`densepred train`: one training stage of `job` into `out`; returns its final.pt."""
    from densepred.engine.train import train_job

    return train_job(StageRun.train(params, job, stage, out, init))


def evaluate(params: Params, job: str, ckpt: Path, out: Path, dataset: str | None = None) -> dict:
    """`densepred evaluate`: checkpoint `ckpt` of `job` into the metrics JSON `out`."""
    from densepred.engine.evaluate import evaluate_job

    return evaluate_job(StageRun.evaluate(params, job, ckpt, out, dataset))


def figures(out_json: Path) -> Path:
    """The figures folder beside an evaluation's metrics JSON."""
    from densepred.paths import figures_dir

    return Path(figures_dir(out_json))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """Prepared tiny datasets: NYUD 12 images (7 train / 5 test) at 48x64, Taskonomy 3 x 6 views at 64."""
    from densepred.data.prepare import prepare_dataset
    from densepred.data.synthetic import synthesize_nyud, synthesize_taskonomy

    root = tmp_path_factory.mktemp("tiny_data")
    synthesize_nyud(root / "raw" / "nyud", seed=0, layout="official", **NYUD)
    synthesize_taskonomy(root / "raw" / "taskonomy", seed=1, defects=False, **TASKONOMY)
    out = {}
    for name in ("nyud", "taskonomy"):
        out[name] = root / "prepared" / name
        prepare_dataset(name, root / "raw" / name, out[name], max_bad_fraction=0.0, shard_size=8)
    return out


@pytest.fixture
def no_tracking(monkeypatch):
    """In-process jobs must not write into the project's mlflow.db."""
    monkeypatch.setenv("DENSEPRED_TRACKING", "off")


def tiny_tree(data: dict[str, Path], **stage_overrides) -> dict:
    """The smoke profile as a YAML tree, pointed at the tiny data, every stage shrunk to `STAGE`."""
    tree = yaml.safe_load(SMOKE.read_text())
    tree["runtime"].update({"device": "cpu", "threads": 1, "num_workers": 0})
    for name, prepared in data.items():
        tree["datasets"][name]["prepared"] = str(prepared)
    for job in tree["jobs"].values():
        for stage in ("pretrain", "finetune"):
            if job.get(stage) is not None:
                job[stage] = {**copy.deepcopy(job[stage]), **copy.deepcopy(STAGE), **stage_overrides}
        job["evaluate"] = {**job["evaluate"], "batch_size": 2, "num_qualitative": 2}
    return tree


def tiny_params_file(data: dict[str, Path], folder: Path, **stage_overrides) -> Path:
    """Write the shrunk profile to `folder/tiny.yaml`."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_params(tiny_tree(data, **stage_overrides), folder / "tiny.yaml")


def cli_env(**extra: str) -> dict[str, str]:
    """Environment of a `densepred` subprocess: tracking off, the package importable, 1 thread."""
    env = {**os.environ, "DENSEPRED_TRACKING": "off", "OMP_NUM_THREADS": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def start_cli(args: list[str], cwd: Path, **popen) -> subprocess.Popen:
    """Start `python -m densepred.cli ARGS` in `cwd`."""
    return subprocess.Popen(
        [sys.executable, "-m", "densepred.cli", *args], cwd=cwd, env=cli_env(), text=True, **popen
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll until `path` exists; fail if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out = proc.communicate()[0] if proc.stdout else ""
            raise AssertionError(f"process ended (status {proc.returncode}) before {path} appeared:\n{out}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


def read_log(path: Path) -> list[dict[str, str]]:
    """train_log.csv rows without the timing column."""
    import csv

    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k != "images_per_s"} for row in csv.DictReader(handle)]


class PoisonAt(torch.nn.Module):
    """Wraps a criterion; from call `at` on, one loss term (and the total) is NaN."""

    def __init__(self, inner: torch.nn.Module, at: int, term: str) -> None:
        super().__init__()
        self.inner, self.at, self.term, self.calls = inner, at, term, 0

    def forward(self, outputs, batch):
        losses = dict(self.inner(outputs, batch))
        self.calls += 1
        if self.calls >= self.at:
            losses[self.term] = losses[self.term] * float("nan")
            losses["total"] = losses["total"] + losses[self.term]
        return losses
