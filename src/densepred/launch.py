"""How the pipeline starts a training stage: one process, torchrun on one node, torchrun per node.

The trainer only reads RANK / WORLD_SIZE / LOCAL_RANK (and torchrun's rendezvous variables); how its
processes are started is decided here, by the pipeline's command builder (pipeline.py), so that
Snakemake (local or SLURM) and dvc.yaml run the same command. The process count comes from the
profile's runtime: `gpus_per_job` processes per node on GPUs (one per GPU), `procs_per_job` on
CPU (gloo; the same path, testable without a GPU), times `nodes_per_job`.

* 1 process: `densepred train ...` (unchanged).
* N processes on one node: `torchrun --standalone --nproc-per-node N -m densepred.cli train ...`.
* M nodes (SLURM): `srun --nodes M --ntasks-per-node 1 --kill-on-bad-exit=1 python -m
  densepred.launch --nnodes M --nproc-per-node N -- train ...`: srun starts one task per node of the
  job's allocation (one sbatch job spanning the nodes), and each task (`main` below) execs torchrun
  with a c10d rendezvous on the job's first node (`scontrol show hostnames`), rendezvous id the
  SLURM job id. torchrun, not srun, owns the ranks, so a node behaves exactly like the one-node case.

Failures: torchrun stops every rank of a job when one dies (its agent watches them) and exits non-zero
with a summary naming the failed rank and its exit code or signal; `--kill-on-bad-exit` makes srun end
the other nodes' torchruns. Rerunning the stage resumes from its last checkpoint (engine/train.py).

Resources (`train_resources`): the job asks for `threads` CPUs and `mem_mb` memory per process (so x
processes per node), its GPUs per node, and, on several nodes, the nodes and one task per node. The
rule's OMP_NUM_THREADS is then the job's CPUs; each process sets its own torch threads to
`runtime.threads` (engine/runtime.py), so the processes share the job's CPUs without oversubscribing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from densepred.config import RuntimeCfg

# `runtime.cpu_kernels: portable`: every CPU kernel family pinned to one code path, so that CPUs of
# either vendor, with or without AVX-512, compute the same bits (bench/bench_numerics.py measured it
# on this machine and on emulated Intel Haswell and AMD EPYC-Rome; README, "Reproducibility"):
# ATen's vectorised loops at AVX2; MKL in its vendor-neutral COMPATIBLE mode (its AVX2 modes keep the
# matrix products equal but not the vector math behind exp, log and erf); oneDNN's convolutions at
# AVX2; numpy's OpenBLAS at its Haswell (AVX2) kernels (the synthetic data's camera frames).
# Environment variables, because each library reads its own at start-up. They assume AVX2
# (x86-64-v3), which x86-64 server CPUs have had since 2013 (Intel) and 2017 (AMD).
PORTABLE_CPU_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "OPENBLAS_CORETYPE": "Haswell",
}
RDZV_PORT_BASE = 29400  # the rendezvous port: base + (job id mod 1000), so jobs sharing a node differ


def train_argv(runtime: RuntimeCfg, argv: Sequence[str]) -> tuple[str, ...]:
    """The command starting `argv` (`densepred train ...`) with the profile's process count."""
    if argv[0] != "densepred":
        raise ValueError(f"expected a densepred command, got {argv[0]!r}")
    nproc, nodes = runtime.procs_per_node, runtime.nodes_per_job
    if nproc * nodes == 1:
        return tuple(argv)
    if nodes == 1:
        return ("torchrun", "--standalone", "--nproc-per-node", str(nproc), "-m", "densepred.cli", *argv[1:])
    srun = ("srun", "--nodes", str(nodes), "--ntasks-per-node", "1", "--kill-on-bad-exit=1")
    node = ("python", "-m", "densepred.launch", "--nnodes", str(nodes), "--nproc-per-node", str(nproc))
    return (*srun, *node, "--", *argv[1:])


def kernel_env(runtime: RuntimeCfg) -> dict[str, str]:
    """The environment variables `runtime.cpu_kernels` asks for: the portable pins, or none. Each
    library reads its variable once, at start-up, so they must be set before a process imports torch
    (a stage's command, a sweep's Ray workers, a benchmark's worker processes)."""
    return dict(PORTABLE_CPU_ENV) if runtime.cpu_kernels == "portable" else {}


def with_kernel_env(runtime: RuntimeCfg, argv: Sequence[str]) -> tuple[str, ...]:
    """`argv` started under `env` with the portable kernel pins when `runtime.cpu_kernels` asks for
    them (training, evaluation and sweep stages); unchanged otherwise."""
    pins = kernel_env(runtime)
    if not pins:
        return tuple(argv)
    return ("env", *(f"{k}={v}" for k, v in sorted(pins.items())), *argv)


def train_resources(runtime: RuntimeCfg) -> tuple[int, dict[str, Any]]:
    """(threads, resources) of a training job: Snakemake's threads (the local scheduler's cores and,
    with one node, SLURM's --cpus-per-task) and its resources (--mem per node, GPUs, nodes)."""
    nproc, nodes = runtime.procs_per_node, runtime.nodes_per_job
    threads = runtime.threads * nproc
    resources: dict[str, Any] = {"mem_mb": runtime.mem_mb * nproc, "gpu": runtime.gpus_per_job}
    if nodes > 1:
        # one sbatch job of `nodes` tasks, one per node, each with the node's CPUs and GPUs; `mpi`
        # tells the SLURM plugin that the command starts its own srun (else it wraps it in `srun -n1`)
        resources = {"mem_mb": resources["mem_mb"], "nodes": nodes, "tasks": nodes}
        resources |= {"mpi": "srun", "cpus_per_task": threads}
        if runtime.gpus_per_job:
            resources["gres"] = f"gpu:{runtime.gpus_per_job}"
    return threads, resources


def first_node(env: Mapping[str, str]) -> str:
    """The first host of the SLURM job's node list (the rendezvous host)."""
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise ValueError("densepred.launch --nnodes > 1 runs inside a SLURM job (SLURM_JOB_NODELIST unset)")
    scontrol = shutil.which("scontrol", path=env.get("PATH"))
    if scontrol is None:  # a plain list of host names needs no expansion
        if "[" in nodelist:
            raise ValueError(f"scontrol is needed to expand the node list {nodelist!r}")
        return nodelist.split(",")[0]
    done = subprocess.run(
        [scontrol, "show", "hostnames", nodelist], capture_output=True, text=True, check=True
    )
    return done.stdout.split()[0]


def node_argv(nnodes: int, nproc: int, args: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """torchrun for this node of a multi-node SLURM job: c10d rendezvous on the job's first node."""
    job = env.get("SLURM_JOB_ID", "")
    if not job:
        raise ValueError("densepred.launch --nnodes > 1 runs inside a SLURM job (SLURM_JOB_ID unset)")
    port = RDZV_PORT_BASE + zlib.crc32(job.encode()) % 1000
    return [
        "torchrun",
        f"--nnodes={nnodes}",
        f"--nproc-per-node={nproc}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={first_node(env)}:{port}",
        f"--rdzv-id={job}",
        "--max-restarts=0",
        "-m",
        "densepred.cli",
        *args,
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m densepred.launch --nnodes M --nproc-per-node N -- ARGS`: one node's torchrun."""
    parser = argparse.ArgumentParser(prog="python -m densepred.launch", description=main.__doc__)
    parser.add_argument("--nnodes", type=int, required=True)
    parser.add_argument("--nproc-per-node", type=int, required=True)
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the densepred command after --")
    ns = parser.parse_args(argv)
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    try:
        command = node_argv(ns.nnodes, ns.nproc_per_node, args, os.environ)
    except (ValueError, subprocess.CalledProcessError) as exc:
        print(f"densepred.launch: {exc}", file=sys.stderr)
        return 2
    print("densepred.launch:", " ".join(command), file=sys.stderr, flush=True)
    os.execvp(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
