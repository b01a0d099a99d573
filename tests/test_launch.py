"""launch.py: the command and resources of a training stage for 1 process, N processes on one node,
and N processes on each of M SLURM nodes (torchrun per node, c10d rendezvous on the first node)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import PAPER
from densepred.launch import node_argv, train_argv, train_resources
from densepred.params_loading import load_params
from densepred.pipeline import build_stages

ARGV = ("densepred", "train", "--params", "p.yaml", "--job", "j", "--stage", "finetune", "--out", "o")


def runtime(*sets: str):
    return load_params(PAPER, list(sets)).runtime


def test_one_process_is_the_plain_command():
    assert train_argv(runtime("runtime.gpus_per_job=1"), ARGV) == ARGV
    assert train_resources(
        runtime("runtime.gpus_per_job=1", "runtime.threads=8", "runtime.mem_mb=64000")
    ) == (
        8,
        {"mem_mb": 64000, "gpu": 1},
    )


def test_one_node_runs_torchrun_standalone_with_the_resources_of_all_processes():
    rt = runtime("runtime.gpus_per_job=8", "runtime.threads=6", "runtime.mem_mb=32000")
    assert train_argv(rt, ARGV) == (
        "torchrun",
        "--standalone",
        "--nproc-per-node",
        "8",
        "-m",
        "densepred.cli",
        *ARGV[1:],
    )
    assert train_resources(rt) == (48, {"mem_mb": 256000, "gpu": 8})
    cpu = runtime("runtime.gpus_per_job=0", "runtime.procs_per_job=2")
    assert train_argv(cpu, ARGV)[:4] == ("torchrun", "--standalone", "--nproc-per-node", "2")


def test_several_nodes_srun_one_torchrun_per_node():
    rt = runtime(
        "runtime.gpus_per_job=8", "runtime.nodes_per_job=4", "runtime.threads=6", "runtime.mem_mb=32000"
    )
    argv = train_argv(rt, ARGV)
    assert argv[:6] == ("srun", "--nodes", "4", "--ntasks-per-node", "1", "--kill-on-bad-exit=1")
    assert argv[6:13] == ("python", "-m", "densepred.launch", "--nnodes", "4", "--nproc-per-node", "8")
    assert argv[13:] == ("--", *ARGV[1:])
    threads, resources = train_resources(rt)
    assert (threads, resources) == (
        48,
        {"mem_mb": 256000, "nodes": 4, "tasks": 4, "mpi": "srun", "cpus_per_task": 48, "gres": "gpu:8"},
    )
    env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu07,gpu08,gpu09,gpu10", "PATH": "/nonexistent"}
    command = node_argv(4, 8, ARGV[1:], {**env})
    assert command[:3] == ["torchrun", "--nnodes=4", "--nproc-per-node=8"]
    assert "--rdzv-backend=c10d" in command and "--rdzv-id=4242" in command
    assert any(a.startswith("--rdzv-endpoint=gpu07:") for a in command)
    with pytest.raises(ValueError, match="scontrol is needed"):
        node_argv(4, 8, ARGV[1:], {**env, "SLURM_JOB_NODELIST": "gpu[07-10]"})
    assert command[command.index("-m") :] == ["-m", "densepred.cli", *ARGV[1:]]


def test_several_nodes_outside_slurm_is_one_clear_line():
    done = subprocess.run(
        [sys.executable, "-m", "densepred.launch", "--nnodes", "2", "--nproc-per-node", "2", "--", "train"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)},
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == "densepred.launch: densepred.launch --nnodes > 1 runs inside a SLURM job (SLURM_JOB_ID unset)"
    )


def test_gpus_and_process_count_must_agree():
    with pytest.raises(ValueError, match="one process per GPU"):
        runtime("runtime.gpus_per_job=4", "runtime.procs_per_job=2")


def test_pipeline_launches_training_only():
    params = load_params(PAPER, ["runtime.gpus_per_job=4"])
    stages = build_stages(params, PAPER, ["runtime.gpus_per_job=4"])
    train = [s for s in stages if s.kind == "train"]
    assert train and all(s.argv[0] == "torchrun" for s in train)
    assert all(s.argv[0] == "densepred" for s in stages if s.kind != "train")
    assert {s.resources["gpu"] for s in stages if s.kind == "evaluate"} == {1}  # one process
