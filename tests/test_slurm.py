"""SLURM: workflow/profiles/slurm with snakemake-executor-plugin-slurm.

Without a cluster: the README's command plans and starts (a real, non-dry start needs no `--cores`),
training, evaluation and sweep jobs request their GPUs (`gpu`, which the plugin turns into
`sbatch --gpus`) and the data jobs none, and the profile names only rules that exist.

With a cluster (marked `cluster`): a throwaway single-node SLURM (tests/slurm_cluster.py; installed
with apt-get where this runs as root and it is missing) runs the shrunk smoke project's results/all
through the profile; every job but the local tables went through sbatch, status polling used squeue
(no accounting), and the tables equal a local run's.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import yaml

import slurm_cluster
from conftest import PAPER, ROOT, SMOKE
from densepred.launch import kernel_env
from densepred.params_loading import load_params
from densepred.pipeline import build_stages
from engine_fixtures import assert_bitwise_equal, load_weights
from project_fixtures import TARGET, make_project, project_env, run

PROFILE = "workflow/profiles/slurm"
ALL = "results/all"  # table 2 and 3 and their HTML pages (written on the submit host)
README_COMMAND = ("snakemake", "--workflow-profile", PROFILE, "--configfile=params/paper.yaml", "results/all")


def planned_jobs(output: str) -> dict[str, dict[str, str]]:
    """The jobs of a dry run's output: rule name -> its resources."""
    jobs: dict[str, dict[str, str]] = {}
    current = None
    for line in output.splitlines():
        head = re.match(r"^(?:local)?rule (\w+):$", line)
        if head:
            current = jobs.setdefault(head.group(1), {})
        elif current is not None and line.strip().startswith("resources:"):
            for item in line.split(":", 1)[1].split(","):
                key, _, value = item.strip().partition("=")
                current[key] = value
    return jobs


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("slurm-plan") / "project")


def test_readme_command_plans_gpu_jobs_with_gpus(project):
    jobs = planned_jobs(run(project, *README_COMMAND, "-n").stdout)
    gpus = load_params(PAPER).runtime.gpus_per_job
    assert gpus >= 1
    kinds = {"pretrain_", "finetune_", "evaluate_", "tune_"}
    gpu_jobs = {name: res for name, res in jobs.items() if name.startswith(tuple(kinds))}
    assert {n.split("_")[0] + "_" for n in gpu_jobs} == kinds
    for name, res in gpu_jobs.items():
        assert int(res.get("gpu", 0)) >= gpus, (name, res)
    for name in ("prepare_nyud", "prepare_taskonomy"):
        assert int(jobs[name].get("gpu", 0)) == 0, jobs[name]
    # a sweep holds the GPUs of the trials it runs at once (mqt_queries: 6 trials of 1 GPU)
    assert jobs["tune_mqt_queries"]["gpu"] == "6"


def test_multi_node_training_is_one_job_spanning_the_nodes(project):
    """nodes_per_job=2 with 4 GPUs each: one sbatch job of 2 nodes, one task per node (srun starts
    one torchrun per node, launch.py), each with the node's CPUs, memory and GPUs; the plugin leaves
    the command's own srun alone (`mpi`)."""
    config = ["--config", "runtime={nodes_per_job: 2, gpus_per_job: 4, threads: 8, mem_mb: 32000}"]
    jobs = planned_jobs(run(project, *README_COMMAND, "-n", *config).stdout)
    train = {name: res for name, res in jobs.items() if name.startswith(("pretrain_", "finetune_"))}
    assert train
    for name, res in train.items():
        assert (res["nodes"], res["tasks"], res["mpi"], res["gres"]) == ("2", "2", "srun", "gpu:4"), name
        assert (res["cpus_per_task"], res["mem_mb"]) == ("32", "128000"), name
    assert all(int(jobs[n]["gpu"]) == 1 for n in jobs if n.startswith("evaluate_"))


def test_smoke_profile_requests_no_gpus(project):
    jobs = planned_jobs(run(project, "snakemake", "--workflow-profile", PROFILE, "-n", TARGET).stdout)
    assert jobs and all(int(res.get("gpu", 0)) == 0 for res in jobs.values()), jobs


def test_readme_command_starts_without_cores(project):
    """`workflow.cores` in a rule fails every non-dry run without --cores; --summary parses the
    workflow as a real run does (no SLURM needed)."""
    done = run(project, *README_COMMAND, "--summary")
    assert "tune_mqt_queries" in done.stdout


@pytest.mark.parametrize("params", [SMOKE, PAPER], ids=["smoke", "paper"])
def test_tune_threads_are_the_concurrent_trials_cpus(params):
    p = load_params(params)
    for stage in build_stages(p, params):
        if stage.kind == "tune":
            sweep = p.sweeps[stage.name.removeprefix("tune_")]
            assert stage.threads >= sweep.resources.cpu
            assert stage.resources["gpu"] >= sweep.resources.gpu


def test_profile_names_existing_rules_and_known_options():
    profile = yaml.safe_load((ROOT / PROFILE / "profile.yaml").read_text())
    rules = {"all", "results_all"}
    for params in (SMOKE, PAPER):
        rules |= {s.name for s in build_stages(load_params(params), params)}
    unknown = set(profile.get("set-resources", {})) - rules
    assert not unknown, f"set-resources names no rule: {sorted(unknown)}"
    assert profile["slurm-status-command"] == "squeue"  # no accounting needed
    # memory, CPUs and GPUs come from the rules, so defaults for them would never apply
    assert not {"mem_mb", "gpu", "cpus_per_task"} & set(profile["default-resources"])


# -- a real cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("a throwaway SLURM cluster needs root (slurmd starts jobs as their user)")
    reason = slurm_cluster.unavailable()
    if reason:
        pytest.skip(reason)
    started = slurm_cluster.start(tmp_path_factory.mktemp("slurm-cluster"))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    """The shrunk smoke project's results/all through workflow/profiles/slurm, and its run time."""
    root = make_project(tmp_path_factory.mktemp("slurm-run") / "project")
    start = time.monotonic()
    done = run(
        root,
        "snakemake",
        "--workflow-profile",
        PROFILE,
        # test speed-ups: poll after 2 s (then every 12, 22, ... s), keep the logs to check them
        "--slurm-init-seconds-before-status-checks=2",
        "--slurm-keep-successful-logs",
        "--verbose",
        ALL,
        env={"SLURM_CONF": str(cluster.conf), "PATH": f"{cluster.bin}:{project_env(root)['PATH']}"},
        timeout=600,
        check=False,
    )
    seconds = time.monotonic() - start
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-8000:]}\n{cluster.logs()}"
    return root, done, seconds


@pytest.mark.cluster
@pytest.mark.slow
def test_jobs_go_through_sbatch(cluster, slurm_run):
    root, done, seconds = slurm_run
    print(f"shrunk smoke results/all through SLURM: {seconds:.0f} s")
    params = root / "params" / "smoke.yaml"
    remote = {s.name for s in build_stages(load_params(params), params) if s.kind != "tables"}
    assert "pretrain_polymax_depth" in remote and "table2" not in remote
    # SLURM's own record: one job per rule (squeue shows finished jobs for MinJobAge = 300 s)
    queue = cluster.run("squeue", "--states=all", "--noheader", "--format=%k|%T").stdout.split()
    states = dict(line.removeprefix("rule_").split("|") for line in queue)
    assert states == {name: "COMPLETED" for name in remote}, queue
    # the plugin's log of each job, and its sbatch calls: CPUs and memory, no GPUs (smoke profile)
    for name in remote:
        assert list((root / ".snakemake" / "slurm_logs" / f"rule_{name}").glob("*.log")), name
    for name in ("table2", "table3", "results_all"):
        assert f"localrule {name}:" in done.stderr
    # status polling without accounting: squeue, never sacct
    polls = [line for line in done.stderr.splitlines() if line.startswith("Status query timing (cycle)")]
    assert polls and all("command=squeue," in line for line in polls), polls
    calls = [line for line in done.stderr.splitlines() if "sbatch call:" in line]
    assert len(calls) == len(remote)
    for call in calls:
        assert "--cpus-per-task=1" in call and "--mem 4000" in call and "--gpus" not in call, call


@pytest.mark.cluster
@pytest.mark.slow
def test_slurm_outputs_equal_a_local_run(slurm_run, built_project):
    root, _, _ = slurm_run
    for table in ("table2.csv", "table2_runs.csv", "table3.csv", "html/table2.html"):
        assert (root / "results" / table).read_text() == (built_project / "results" / table).read_text()
    # Snakemake recorded the cluster's outputs: nothing left to do
    plan = run(root, "snakemake", "--workflow-profile", PROFILE, "-n", ALL)
    assert "Nothing to be done" in plan.stdout + plan.stderr


TWO_PROCS = "runtime={procs_per_job: 2}"
TWO_PROC_STAGE = "runs/smoke/stl_depth/finetune/final.pt"


@pytest.mark.cluster
@pytest.mark.slow
def test_two_process_stage_is_one_sbatch_job(cluster, tmp_path_factory):
    """The 2-process stage through the profile: one sbatch job with the CPUs and memory of both
    processes, COMPLETED, bitwise the weights of the same stage run locally; then the multi-node launch
    line (srun, one torchrun per node, c10d rendezvous on the first node) on this one node, also equal."""
    root = make_project(tmp_path_factory.mktemp("slurm-2proc") / "project")
    env = {"SLURM_CONF": str(cluster.conf), "PATH": f"{cluster.bin}:{project_env(root)['PATH']}"}
    fast = ["--slurm-init-seconds-before-status-checks=2", "--verbose"]
    target = [TWO_PROC_STAGE, "--config", TWO_PROCS]
    done = run(
        root, "snakemake", "--workflow-profile", PROFILE, *fast, *target, env=env, timeout=600, check=False
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-8000:]}\n{cluster.logs()}"
    calls = [
        line for line in done.stderr.splitlines() if "sbatch call:" in line and "finetune_stl_depth" in line
    ]
    assert len(calls) == 1 and "--cpus-per-task=2" in calls[0] and "--mem 8000" in calls[0], calls
    queue = cluster.run("squeue", "--states=all", "--noheader", "--format=%k|%T").stdout.split()
    assert "rule_finetune_stl_depth|COMPLETED" in queue, queue
    slurm = load_weights(root / TWO_PROC_STAGE)

    local = root / "runs" / "local"
    train = ["train", "--params", "params/smoke.yaml", "--job", "stl_depth", "--stage", "finetune"]
    sets = ["--set", "runtime.procs_per_job=2"]
    pins = kernel_env(load_params(root / "params" / "smoke.yaml").runtime)  # as the pipeline's stage
    run(
        root,
        "torchrun",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "densepred.cli",
        *train,
        "--out",
        str(local),
        *sets,
        env=pins,
    )
    assert_bitwise_equal(slurm, load_weights(local / "final.pt"))

    multi = root / "runs" / "multi"
    line = [
        "srun",
        "--nodes",
        "1",
        "--ntasks-per-node",
        "1",
        "--kill-on-bad-exit=1",
        "python",
        "-m",
        "densepred.launch",
    ]
    line += ["--nnodes", "1", "--nproc-per-node", "2", "--", *train, "--out", str(multi), *sets]
    wrap = " ".join(line)
    out = root / "multi.out"
    submitted = run(
        root,
        "sbatch",
        "--parsable",
        "--wait",
        "--cpus-per-task=2",
        f"--output={out}",
        "--wrap",
        wrap,
        env={**env, **pins},  # sbatch passes its environment to the job
        timeout=600,
        check=False,
    )
    assert submitted.returncode == 0, f"{submitted.stderr}\n{out.read_text() if out.exists() else ''}"
    log = out.read_text()
    assert "--rdzv-backend=c10d" in log and "--nnodes=1" in log, log[-3000:]
    assert_bitwise_equal(slurm, load_weights(multi / "final.pt"))
