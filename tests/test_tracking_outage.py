"""A tracking outage never costs a run: `densepred train` and `densepred evaluate` against an MLflow
URI where nothing listens finish normally within 60 s of extra time, print one warning naming the
URI and keep their records in the run folder; `densepred sync-tracking` uploads them to a real
`mlflow server` once it is up, exactly once."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine_fixtures import cli_env, tiny_data, tiny_params_file  # noqa: F401 (fixtures)

JOB = "stl_depth"
DOWN = "http://127.0.0.1:9"  # the discard port: nothing listens there
MAX_EXTRA_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def densepred(args: list[str], cwd: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run `python -m densepred.cli ARGS`; returns the result and its wall time."""
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "densepred.cli", *args],
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=900,
    )
    return done, time.monotonic() - start


def warnings_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "warning" in line.lower()]


def start_mlflow_server(folder: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on 127.0.0.1, sqlite store in `folder`; returns it and its URI once it answers."""
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    log = open(folder / "server.log", "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(
        [
            *(str(mlflow), "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}"),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        ],
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, uri
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log_text = (folder / "server.log").read_text()[-3000:]
                raise AssertionError(f"mlflow server did not start:\n{log_text}") from None
            time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    import os
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_server_down_costs_nothing_and_sync_uploads_once(tiny_data, tmp_path):  # noqa: F811
    params = tiny_params_file(tiny_data, tmp_path)
    common = ["--params", str(params), "--set", f"jobs.{JOB}.finetune.iterations=4"]
    train_args = ["train", *common, "--job", JOB, "--stage", "finetune"]

    # The same commands with tracking off, for the time they take without MLflow.
    base_train, base_train_s = densepred([*train_args, "--out", "off/finetune"], tmp_path)
    assert base_train.returncode == 0, base_train.stderr
    eval_args = ["evaluate", *common, "--job", JOB, "--ckpt", "off/finetune/final.pt"]
    base_eval, base_eval_s = densepred([*eval_args, "--out", "off/eval/nyud.json"], tmp_path)
    assert base_eval.returncode == 0, base_eval.stderr

    on = {"DENSEPRED_TRACKING": "on", "MLFLOW_TRACKING_URI": DOWN}
    trained, train_s = densepred([*train_args, "--out", "runs/finetune"], tmp_path, **on)
    assert trained.returncode == 0, trained.stderr
    eval_args = ["evaluate", *common, "--job", JOB, "--ckpt", "runs/finetune/final.pt"]
    evaluated, eval_s = densepred([*eval_args, "--out", "runs/eval/nyud.json"], tmp_path, **on)
    assert evaluated.returncode == 0, evaluated.stderr
    print(
        f"\nserver down: train {train_s:.1f} s vs {base_train_s:.1f} s off "
        f"(+{train_s - base_train_s:.1f} s); "
        f"evaluate {eval_s:.1f} s vs {base_eval_s:.1f} s off (+{eval_s - base_eval_s:.1f} s)"
    )
    assert train_s - base_train_s < MAX_EXTRA_S and eval_s - base_eval_s < MAX_EXTRA_S
    for done in (trained, evaluated):
        assert "Traceback" not in done.stderr
        (warning,) = warnings_in(done.stderr)  # exactly one
        assert DOWN in warning and "sync-tracking" in warning
    runs = tmp_path / "runs"
    assert (runs / "finetune/final.pt").is_file() and (runs / "eval/nyud.json").is_file()
    train_journal = runs / "finetune/tracking_pending.jsonl"
    eval_journal = runs / "eval/nyud.tracking_pending.jsonl"  # beside the JSON: not yet in MLflow
    assert train_journal.is_file() and eval_journal.is_file()
    ops = [json.loads(line)["op"] for line in train_journal.read_text().splitlines()]
    assert ops[0] == "start" and ops[-1] == "end" and ops.count("metrics") == 2  # log_every 2

    # Still down: sync says so in one line (exit 2) and keeps the records.
    failed, _ = densepred(["sync-tracking", "runs"], tmp_path, MLFLOW_TRACKING_URI=DOWN)
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert DOWN in failed.stderr and train_journal.is_file()

    server, uri = start_mlflow_server(tmp_path)
    try:
        synced, _ = densepred(["sync-tracking", "runs"], tmp_path, MLFLOW_TRACKING_URI=uri)
        assert synced.returncode == 0, synced.stderr
        assert "uploaded 2 MLflow run(s)" in synced.stdout
        assert not train_journal.exists() and not eval_journal.exists()
        again, _ = densepred(["sync-tracking", "runs"], tmp_path, MLFLOW_TRACKING_URI=uri)
        assert again.returncode == 0 and "uploaded 0 MLflow run(s)" in again.stdout

        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("densepred-smoke")
        found = client.search_runs([experiment.experiment_id])
        assert sorted(r.data.tags["kind"] for r in found) == ["evaluate", "train"]
        by_kind = {r.data.tags["kind"]: r for r in found}
        train_run, eval_run = by_kind["train"], by_kind["evaluate"]
        assert train_run.info.status == "FINISHED" and eval_run.info.status == "FINISHED"
        assert train_run.data.params["job.finetune.iterations"] == "4"
        history = client.get_metric_history(train_run.info.run_id, "total")
        assert sorted(m.step for m in history) == [2, 4]
        assert {a.path for a in client.list_artifacts(train_run.info.run_id)} == {
            "config.yaml",
            "train_log.csv",
        }
        assert train_run.inputs.dataset_inputs[0].dataset.name == "nyud"
        result = json.loads((runs / "eval/nyud.json").read_text())
        assert eval_run.data.tags["stage"] == "evaluate"
        assert eval_run.data.metrics["depth_eigen/rms"] == pytest.approx(result["depth_eigen/rms"])
        assert {a.path for a in client.list_artifacts(eval_run.info.run_id)} == {"nyud.json", "nyud_figures"}
        assert eval_run.info.end_time - eval_run.info.start_time >= 0
    finally:
        stop(server)
