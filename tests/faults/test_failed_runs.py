"""Failed runs say why, in a real MLflow store, through the `densepred` command: a run that fails records
the one line the command printed (tag `densepred.error`) and the command's log (artifact `stage.log`),
and a command refused on checks that can run before its work (the prepared data's index and shard
sizes, the init checkpoint) opens no run at all."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from densepred.run_failure import ERROR_TAG, LOG_ARTIFACT
from engine_fixtures import cli_env, tiny_data  # noqa: F401 (fixtures)
from fault_helpers import JOB, copy_tree, train_args, trained  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.faults, pytest.mark.filterwarnings("ignore::UserWarning")]

DENSEPRED = str(Path(sys.executable).with_name("densepred"))


def shard_of(root: Path, split: str) -> Path:
    return root / json.loads((root / "index.json").read_text())["splits"][split]["shards"][0]["file"]


def densepred(args: list, cwd: Path, store: str, log: Path | None = None) -> tuple[int, str]:
    """`densepred ARGS` tracking into `store` (an experiment named after `cwd`, the test's folder); its
    output goes to the file `log` (as Snakemake's `> {log} 2>&1`) or, without one, through a pipe.
    Returns the exit status and the output."""
    env = cli_env(DENSEPRED_TRACKING="on", MLFLOW_TRACKING_URI=store)
    command = [DENSEPRED, *map(str, args), "--set", f"tracking.experiment={cwd.name}"]
    if log is None:
        done = subprocess.run(command, cwd=cwd, env=env, text=True, capture_output=True, timeout=300)
        return done.returncode, done.stdout + done.stderr
    with open(log, "w") as handle:
        code = subprocess.run(command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=300)
    return code.returncode, log.read_text()


def runs_in(store: str, folder: Path) -> list:
    """The runs of the experiment of the test whose folder is `folder` (none if it was never made)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name(folder.name)
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One store for the module (a fresh database costs MLflow's migrations), one experiment per test."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments()  # creates the database
    return uri


@pytest.mark.parametrize("output", ["log file", "pipe"])
def test_failed_run_records_the_error_line_and_the_log(trained, tmp_path, store, output, monkeypatch):  # noqa: F811
    """A shard of the right size with changed bytes passes the checks before the run and fails in it
    (its digest is checked when first read); rerun after the repair, the run finishes without the tag."""
    from mlflow import MlflowClient

    monkeypatch.chdir(Path(store.removeprefix("sqlite:///")).parent)  # artifacts resolve against the
    # db's folder, as `mlflow ui` started there

    data = copy_tree(trained["data"]["nyud"], tmp_path / "nyud")
    shard = shard_of(data, "train")
    good = shard.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF
    shard.write_bytes(bytes(damaged))
    args = train_args(trained["params"], tmp_path / "run", f"datasets.nyud.prepared={data}")
    log = tmp_path / "finetune.log" if output == "log file" else None
    code, printed = densepred(args, tmp_path, store, log)

    assert code == 2, printed
    line = printed.strip().splitlines()[-1]
    assert line.startswith(f"densepred train: error: corrupt shard {shard}: contents differ"), printed
    (run,) = runs_in(store, tmp_path)
    assert run.info.status == "FAILED" and run.data.tags["job"] == JOB
    assert run.data.tags[ERROR_TAG] == line
    client = MlflowClient(tracking_uri=store)
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == [LOG_ARTIFACT]
    uploaded = Path(client.download_artifacts(run.info.run_id, LOG_ARTIFACT, str(tmp_path / "dl")))
    if log is not None:
        assert uploaded.read_text() == printed  # the whole stage log, ending with the error line
    else:
        assert uploaded.read_text().strip().splitlines()[-1] == line  # what the command wrote

    if log is None:
        return
    shard.write_bytes(good)
    code, printed = densepred(args, tmp_path, store, log)
    assert code == 0, printed
    (again,) = runs_in(store, tmp_path)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert ERROR_TAG not in again.data.tags


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("truncated train shard", "truncated"),
        ("train shard replaced by a folder", "not a file"),
        ("corrupt init checkpoint", "could not be read"),
        ("truncated test shard (evaluate)", "truncated"),
    ],
)
def test_refused_before_the_work_opens_no_run(trained, tmp_path, store, damage, expected):  # noqa: F811
    data = copy_tree(trained["data"]["nyud"], tmp_path / "nyud")
    where = f"datasets.nyud.prepared={data}"
    args = train_args(trained["params"], tmp_path / "run", where)
    if damage == "truncated train shard":
        _truncate(shard_of(data, "train"))
    elif damage == "train shard replaced by a folder":
        _folder(shard_of(data, "train"))
    elif damage == "corrupt init checkpoint":
        init = tmp_path / "init.pt"
        init.write_bytes(b"PK\x03\x04 not really a checkpoint")
        args += ["--init", init]
    else:
        _truncate(shard_of(data, "test"))
        ckpt = tmp_path / "final.pt"
        shutil.copyfile(trained["final"], ckpt)
        args = ["evaluate", "--params", trained["params"], "--job", JOB, "--ckpt", ckpt]
        args += ["--out", tmp_path / "eval" / "nyud.json", "--set", where]
    code, printed = densepred(args, tmp_path, store)
    assert code == 2 and ": error: " in printed and expected in printed, printed
    assert runs_in(store, tmp_path) == []
