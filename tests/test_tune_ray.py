"""Ray Tune sweeps for real: a trial that raises, an interrupted sweep that resumes, the real engine.

The first two use a cheap trial function (marker files count how often each trial ran), so they
measure the sweep machinery, not training. Each starts a local Ray instance (a few seconds on 2
cores), hence the slow mark.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, write_params
from densepred import paths, ray_cluster, tune
from densepred.params_loading import load_params

pytestmark = pytest.mark.slow


def _counting_trial(markers: Path, fail_for: int):
    """A trial that writes a marker per start, raises for K == fail_for, and returns rms = 1/K."""

    def trial(params, job, out, nesting):  # defined in a function so Ray pickles it by value
        with open(markers / f"{out.name}.started", "a") as log:
            log.write("x\n")
        k = params.jobs[job].model.num_clusters
        if k == fail_for:
            raise ValueError(f"K={k} is not supported")
        return {"depth_eigen/rms": 1.0 / k, "meta": {"k": k}}

    return trial


def _runs(markers: Path, variant: str) -> int:
    path = markers / f"{variant}.started"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_failing_trial_is_retried_reported_and_the_sweep_completes(tmp_path, smoke_tree, monkeypatch):
    monkeypatch.setenv("DENSEPRED_TRACKING", "off")
    smoke_tree["sweeps"] = {
        "k": {
            "job": "polymax_depth",
            "table": "ablation_k",
            "grid": {"model.num_clusters": [8, 32]},
            "max_failures": 1,
        }
    }
    params = load_params(write_params(smoke_tree, tmp_path / "p.yaml"))
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "sweep"
    trial = _counting_trial(markers, fail_for=32)

    frame = tune.run_sweep(params, "k", out, trial_fn=trial, num_cpus=2)
    assert list(frame["variant"]) == ["num_clusters_8", "num_clusters_32"]
    assert list(frame["status"]) == ["ok", "error"]
    assert list(frame["attempts"]) == [1, 2]  # 1 try + max_failures retries
    assert frame["error"][1] == "ValueError: K=32 is not supported"
    assert frame["depth_eigen/rms"][0] == pytest.approx(0.125) and pd.isna(frame["depth_eigen/rms"][1])
    assert (_runs(markers, "num_clusters_8"), _runs(markers, "num_clusters_32")) == (1, 2)
    summary = (out / "summary.csv").read_text()
    assert summary.splitlines()[2] == "num_clusters_32,error,2,ValueError: K=32 is not supported,32,"

    # Rerunning a finished sweep restores it and runs nothing; failed trials stay reported.
    again = tune.run_sweep(params, "k", out, trial_fn=trial, num_cpus=2)
    assert (_runs(markers, "num_clusters_8"), _runs(markers, "num_clusters_32")) == (1, 2)
    pd.testing.assert_frame_equal(again, frame)
    assert (out / "summary.csv").read_text() == summary


def _mlflow_runs(uri: str, experiment: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


SCRIPT = """
import os, sys, time
from pathlib import Path
from densepred.params_loading import load_params
from densepred.tune import run_sweep

root = Path(sys.argv[1])

def trial(params, job, out, nesting):
    with open(root / "markers" / f"{out.name}.started", "a") as log:
        log.write(f"{os.getpid()}\\n")
    if out.name == "b":  # slow until the test releases it
        while not (root / "release").exists():
            time.sleep(0.1)
    return {"depth_eigen/rms": 1.0 / params.jobs[job].model.num_clusters}

run_sweep(load_params(root / "p.yaml"), "k", root / "sweep", trial_fn=trial)
"""


def _start(root: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "DENSEPRED_TRACKING": "off",
        "DENSEPRED_RAY_CPUS": "2",
        "PYTHONPATH": str(ROOT / "src"),
    }
    with open(root / "log.txt", "a") as log:
        return subprocess.Popen(
            [sys.executable, str(root / "script.py"), str(root)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: Ray's head processes go down with it
        )


def _wait_for(condition, proc: subprocess.Popen, root: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(
                "sweep did not reach the expected point:\n" + (root / "log.txt").read_text()[-4000:]
            )
        time.sleep(0.2)


def _gone(pid: int) -> bool:
    """True once process `pid` has exited (or is a zombie waiting for its reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path, smoke_tree):
    smoke_tree["sweeps"] = {
        "k": {
            "job": "polymax_depth",
            "table": "ablation_k",
            "variants": {
                "a": {"model.num_clusters": 8},
                "b": {"model.num_clusters": 16},
                "c": {"model.num_clusters": 32},
            },
            "max_concurrent": 1,  # a, then b, then c
        }
    }
    write_params(smoke_tree, tmp_path / "p.yaml")
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT))
    (tmp_path / "markers").mkdir()
    markers, trials = tmp_path / "markers", tmp_path / "sweep" / "trials"

    proc = _start(tmp_path)
    _wait_for(lambda: (trials / "a" / "result.json").is_file() and _runs(markers, "b") == 1, proc, tmp_path)
    os.killpg(proc.pid, signal.SIGKILL)  # the hard way: no chance to save anything
    proc.wait(timeout=60)
    # Ray's trial worker has its own process group; it exits once it sees its raylet gone (~2 s).
    worker = int((markers / "b.started").read_text().split()[0])
    deadline = time.monotonic() + 60
    while not _gone(worker):
        assert time.monotonic() < deadline, f"Ray worker {worker} outlived its raylet"
        time.sleep(0.2)
    assert not (tmp_path / "sweep" / "summary.csv").exists()
    (experiment,) = (tmp_path / "sweep" / "ray").glob("k-*")  # <sweep>-<fingerprint>
    from ray import tune as ray_tune

    assert ray_tune.Tuner.can_restore(str(experiment))

    (tmp_path / "release").touch()
    proc = _start(tmp_path)
    assert proc.wait(timeout=300) == 0, (tmp_path / "log.txt").read_text()[-4000:]
    assert {v: _runs(markers, v) for v in "abc"} == {"a": 1, "b": 2, "c": 1}
    summary = pd.read_csv(tmp_path / "sweep" / "summary.csv")
    assert list(summary["variant"]) == ["a", "b", "c"] and set(summary["status"]) == {"ok"}
    assert list(summary["attempts"]) == [1, 2, 1]
    assert list(summary["depth_eigen/rms"]) == pytest.approx([1 / 8, 1 / 16, 1 / 32])
    assert "resuming the sweep saved in" in (tmp_path / "log.txt").read_text()  # Tuner.restore, not afresh
    assert sorted(p.name for p in experiment.iterdir() if p.is_dir()) == ["a", "b", "c"]


@pytest.mark.filterwarnings("ignore:prepare taskonomy. skipped")  # synth plants corrupt files on purpose
def test_real_smoke_pipeline_and_sweep_make_comparable_mlflow_runs(tmp_path, smoke_tree, monkeypatch):
    """Through the CLI: synth -> prepare; train (finetune) + evaluate two jobs; one sweep of two
    PolyMaX K settings (pretrain -> finetune -> evaluate, a few steps each) whose `base` is set with
    `--set sweeps.k.base...`. The MLflow check of issue 19: the top-level runs are exactly the stage
    executions (4 pipeline runs + 1 sweep), the trials' stage runs are nested under their trial run
    and tagged, and no run holds a metric step twice."""
    pytest.importorskip("densepred.engine.train")
    from mlflow import MlflowClient

    from densepred.cli import main

    monkeypatch.setenv("DENSEPRED_TRACKING", "on")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # relative data paths of the profile land in tmp_path
    smoke_tree["synth"]["nyud"].update(num_images=16, num_test=6)
    smoke_tree["synth"]["taskonomy"].update(buildings=3, views_per_building=8, size=64)
    smoke_tree["datasets"]["taskonomy"]["max_bad_fraction"] = 0.5  # synth plants a few corrupt files
    for name in ("polymax_depth", "deeplab_depth"):
        job = smoke_tree["jobs"][name]
        for stage in ("pretrain", "finetune"):
            job[stage] = {
                **job[stage],
                "iterations": 3,
                "batch_size": 2,
                "crop": [64, 64],
                "checkpoint_every": 2,
            }
            job[stage]["log_every"] = 1
        job["evaluate"] = {**job["evaluate"], "num_qualitative": 0}
    smoke_tree["sweeps"] = {
        "k": {
            "job": "polymax_depth",
            "table": "ablation_k",
            "base": {"pretrain": {"iterations": 3}, "finetune": {"iterations": 3}},
            "grid": {"model.num_clusters": [4, 8]},
        }
    }
    path = str(write_params(smoke_tree, tmp_path / "p.yaml"))
    assert main(["synth", "--params", path, "--out", "data/smoke/raw"]) == 0
    for ds in ("nyud", "taskonomy"):
        src, dst = f"data/smoke/raw/{ds}", f"data/smoke/prepared/{ds}"
        assert main(["prepare", "--params", path, "--dataset", ds, "--src", src, "--out", dst]) == 0
    for name in ("polymax_depth", "deeplab_depth"):
        out = f"runs/{name}/finetune"
        assert main(["train", "--params", path, "--job", name, "--stage", "finetune", "--out", out]) == 0
        ckpt, metrics = f"{out}/final.pt", f"runs/{name}/eval/nyud.json"
        assert main(["evaluate", "--params", path, "--job", name, "--ckpt", ckpt, "--out", metrics]) == 0

    base = "sweeps.k.base.finetune.iterations=2"  # a sweep's `base` is set like any other key
    assert main(["tune", "--params", path, "--sweep", "k", "--out", "sweeps/k", "--set", base]) == 0
    summary = pd.read_csv(tmp_path / "sweeps/k/summary.csv")
    assert list(summary["variant"]) == ["num_clusters_4", "num_clusters_8"]
    assert list(summary["status"]) == ["ok", "ok"], summary["error"].tolist()
    assert (summary["depth_eigen/rms"] > 0).all() and (summary["depth_mtl/rms"] > 0).all()
    for variant in summary["variant"]:
        finetune = tmp_path / "sweeps/k/trials" / variant / "finetune"
        assert (finetune / "final.pt").is_file()
        assert len((finetune / "train_log.csv").read_text().splitlines()) == 1 + 2  # 2 iterations
    assert "semseg/miou" not in summary  # a depth-only job

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(smoke_tree["tracking"]["experiment"])
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    kinds = sorted((r.data.tags["kind"], r.data.tags["job"]) for r in top)
    assert kinds == [
        ("evaluate", "deeplab_depth"),
        ("evaluate", "polymax_depth"),
        ("sweep", "polymax_depth"),
        ("train", "deeplab_depth"),
        ("train", "polymax_depth"),
    ]
    assert all(r.data.tags["origin"] == "pipeline" for r in top)
    for run in runs:
        assert run.info.status == "FINISHED", run.data.tags
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), (run.info.run_name, key, steps)
    evaluations = [r for r in top if r.data.tags["kind"] == "evaluate"]
    assert {r.data.tags["stage"] for r in evaluations} == {"evaluate"}

    (sweep_run,) = [r for r in top if r.data.tags["kind"] == "sweep"]
    assert sweep_run.data.tags["sweep"] == "k"
    trial_runs = {r.data.tags["variant"]: r for r in runs if r.data.tags["kind"] == "trial"}
    assert sorted(trial_runs) == ["num_clusters_4", "num_clusters_8"]
    for variant, run in trial_runs.items():
        assert run.data.tags["mlflow.parentRunId"] == sweep_run.info.run_id
        assert run.data.tags["sweep"] == "k" and run.data.tags["table"] == "ablation_k"
        assert run.data.params["override.model.num_clusters"] == variant.rsplit("_", 1)[1]
        assert run.data.params["override.finetune.iterations"] == "2"
        expected = summary.set_index("variant").loc[variant, "depth_eigen/rms"]
        assert run.data.metrics["depth_eigen/rms"] == pytest.approx(expected, rel=1e-5)
        stages = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]
        assert sorted(r.data.tags["stage"] for r in stages) == ["evaluate", "finetune", "pretrain"]
        for stage_run in stages:
            tags = stage_run.data.tags
            assert (tags["sweep"], tags["variant"], tags["origin"]) == ("k", variant, "sweep")


# ----------------------------------------------------------------------------- a real Ray cluster

CLUSTER_SCRIPT = """
import sys
from pathlib import Path
from densepred.params_loading import load_params
from densepred.tune import run_sweep

root = Path(sys.argv[1])

def trial(params, job, out, nesting):
    import ray
    return {"depth_eigen/rms": 1.0 / params.jobs[job].model.num_clusters, "node": 1.0}

run_sweep(load_params(root / "p.yaml"), "k", root / "sweep", trial_fn=trial)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _session_processes(temp_dir: Path) -> dict[int, str]:
    """The processes of the Ray sessions under `temp_dir` (a private RAY_TMPDIR)."""
    found = {}
    for session in temp_dir.glob("ray/session_2*"):
        found.update(ray_cluster._ray_processes(str(session)))
    return found


def _kill_all(temp_dir: Path) -> None:
    for pid in _session_processes(temp_dir):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def ray_tmp():
    """A private, short Ray temp dir (unix socket paths are limited to ~107 characters); every Ray
    process of its sessions is killed by PID afterwards (never `ray stop`: other users' Ray)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    yield folder
    _kill_all(folder)
    shutil.rmtree(folder, ignore_errors=True)


def _env(ray_tmp: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DENSEPRED_TRACKING": "off",
        "PYTHONPATH": str(ROOT / "src"),
        "RAY_TMPDIR": str(ray_tmp),
    }
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_MODE", None)
    env.update(extra)
    return env


def _k_sweep(smoke_tree, tmp_path: Path) -> Path:
    smoke_tree["sweeps"] = {
        "k": {"job": "polymax_depth", "table": "ablation_k", "grid": {"model.num_clusters": [8, 16]}}
    }
    return write_params(smoke_tree, tmp_path / "p.yaml")


def test_sweep_on_a_ray_cluster_with_token_auth(tmp_path, smoke_tree, ray_tmp):
    """`ray start --head` with token authentication; the sweep joins it through RAY_ADDRESS alone
    (RAY_AUTH_MODE unset: the driver switches to token auth since the token is at hand)."""
    _k_sweep(smoke_tree, tmp_path)
    (tmp_path / "script.py").write_text(textwrap.dedent(CLUSTER_SCRIPT))
    port = _free_port()
    ray = str(Path(sys.executable).with_name("ray"))
    head_env = _env(ray_tmp, RAY_AUTH_MODE="token")
    started = subprocess.run(
        [
            *(ray, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2"),
            *("--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={ray_tmp / 'ray'}"),
        ],
        env=head_env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    head = _session_processes(ray_tmp)
    assert head, "ray start --head left no processes under its temp dir"

    done = subprocess.run(
        [sys.executable, str(tmp_path / "script.py"), str(tmp_path)],
        env=_env(ray_tmp, RAY_ADDRESS=f"127.0.0.1:{port}"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary = pd.read_csv(tmp_path / "sweep" / "summary.csv")
    assert list(summary["status"]) == ["ok", "ok"]
    assert list(summary["depth_eigen/rms"]) == pytest.approx([1 / 8, 1 / 16])
    assert not paths.local_ray_record(tmp_path / "sweep").exists()  # joined, not started locally
    assert set(head) <= set(_session_processes(ray_tmp))  # the cluster is left running


def _cli_tune(tmp_path: Path, ray_tmp: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run(
        [
            *(sys.executable, "-m", "densepred.cli", "tune", "--params", str(tmp_path / "p.yaml")),
            *("--sweep", "k", "--out", str(tmp_path / "sweep")),
        ],
        env=_env(ray_tmp, **env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, time.monotonic() - start


def test_unreachable_or_stale_ray_address_is_one_line_within_60_s(tmp_path, smoke_tree, ray_tmp):
    from mlflow import MlflowClient

    _k_sweep(smoke_tree, tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = {"DENSEPRED_TRACKING": "on", "MLFLOW_TRACKING_URI": uri}
    port = _free_port()  # nothing listens there
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}")  # stale: `ray start` gone
    for address in (f"127.0.0.1:{port}", "auto"):
        done, seconds = _cli_tune(tmp_path, ray_tmp, RAY_ADDRESS=address, **tracking)
        print(f"\nRAY_ADDRESS={address}: exit {done.returncode} after {seconds:.1f} s: {done.stderr.strip()}")
        assert done.returncode == 2, done.stderr[-3000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr
        assert lines[0].startswith("densepred tune: error: cannot reach the Ray cluster at")
        assert seconds < 60
    if (tmp_path / "mlflow.db").exists():  # the sweep's run is opened only once Ray is up
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(smoke_tree["tracking"]["experiment"])
        assert experiment is None or not client.search_runs([experiment.experiment_id])


KILL_SCRIPT = """
import sys, time
from pathlib import Path
from densepred.params_loading import load_params
from densepred.tune import run_sweep

root = Path(sys.argv[1])

def trial(params, job, out, nesting):
    (root / "markers").mkdir(exist_ok=True)
    (root / "markers" / out.name).touch()
    while not (root / "release").exists():
        time.sleep(0.1)
    return {"depth_eigen/rms": 1.0}

run_sweep(load_params(root / "p.yaml"), "k", root / "sweep", trial_fn=trial, num_cpus=2)
"""


def test_killed_sweep_driver_leaves_no_ray_processes(tmp_path, smoke_tree, ray_tmp):
    """SIGKILL of the driver alone (not its process group): the local Ray's processes go with it or,
    failing that, the next sweep on the folder stops them; a stale address file changes nothing."""
    _k_sweep(smoke_tree, tmp_path)
    (tmp_path / "script.py").write_text(textwrap.dedent(KILL_SCRIPT))
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{_free_port()}")  # stale
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(tmp_path / "script.py"), str(tmp_path)],
            env=_env(ray_tmp),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _wait_for(
        lambda: (tmp_path / "markers").is_dir() and any((tmp_path / "markers").iterdir()), proc, tmp_path
    )
    running = _session_processes(ray_tmp)
    assert running and paths.local_ray_record(tmp_path / "sweep").is_file()
    proc.send_signal(signal.SIGKILL)  # the driver only
    proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while _session_processes(ray_tmp) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _session_processes(ray_tmp)
    print(
        f"\n{len(running)} Ray processes before the kill; {len(left)} left 30 s after: "
        f"{sorted(left.values())}"
    )
    if left:  # the next sweep on this folder stops them before it starts its own Ray
        reaped = ray_cluster.reap_local_ray(paths.local_ray_record(tmp_path / "sweep"))
        assert set(left) <= set(reaped)
        deadline = time.monotonic() + 10
        while _session_processes(ray_tmp) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert not _session_processes(ray_tmp)
