"""A throwaway single-node SLURM cluster for tests: munged, slurmctld and slurmd (Debian's slurm-wlm
and munge packages) started as this user's child processes, with every file (config, munge key and
socket, state, spool, logs) in one temporary folder and no accounting (no slurmdbd).

`start(folder)` returns a `Cluster` whose `env` points SLURM's client commands (sbatch, squeue) at
it (`SLURM_CONF`); `stop()` cancels what is left and ends the three daemons by their PIDs.
`unavailable()` says why no cluster can be started here (None when one can), installing the
packages with apt-get first where this runs as root on a machine with apt-get.

Inside a job, snakemake-executor-plugin-slurm-jobstep starts the rule with `srun` after removing
every SLURM_* variable but the job's identity, SLURM_CONF included: on a real cluster srun then
reads /etc/slurm/slurm.conf. So that this cluster's config need not go there, `bin` holds an `srun`
that sets SLURM_CONF and runs the real one; put it first on the PATH of whatever submits jobs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scancel", "srun")
PACKAGES = ("slurm-wlm", "munge")
PARTITION = "debug"


def _missing() -> list[str]:
    return [p for p in (*DAEMONS, *CLIENTS) if shutil.which(p) is None]


def unavailable() -> str | None:
    """Why no cluster can be started here, or None. As root with apt-get, missing packages are
    installed first (CI does this in .ci/run, so the test finds them)."""
    if not _missing():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        missing = ", ".join(_missing())
        return f"SLURM is not installed ({missing} missing; `apt-get install {' '.join(PACKAGES)}` as root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(
        ["apt-get", "install", "-y", "-q", *PACKAGES], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0 or _missing():
        return f"apt-get install {' '.join(PACKAGES)} failed: {done.stderr.strip()[-500:]}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def slurm_conf(folder: Path, cpus: int, memory_mb: int) -> str:
    """A one-node cluster named `localhost` with one default partition, no accounting, no cgroups."""
    return "\n".join(
        [
            "ClusterName=densepred-test",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={folder / 'munge.socket'}",
            f"StateSaveLocation={folder / 'state'}",
            f"SlurmdSpoolDir={folder / 'spool'}",
            f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
            f"SlurmdPidFile={folder / 'slurmd.pid'}",
            f"SlurmctldLogFile={folder / 'slurmctld.log'}",
            f"SlurmdLogFile={folder / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "ReturnToService=2",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            # the node's CPUs and memory as written here, whatever slurmd detects
            "SlurmdParameters=config_overrides",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


@dataclass
class Cluster:
    folder: Path
    env: dict[str, str]  # this process's environment with SLURM_CONF pointing at the cluster
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.folder / "slurm.conf"

    @property
    def bin(self) -> Path:
        """The folder of the `srun` wrapper (see the module's docstring)."""
        return self.folder / "bin"

    def run(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=False, timeout=60)

    def logs(self) -> str:
        """The tail of the daemons' logs (for assertion messages)."""
        parts = []
        for name in DAEMONS:
            log = self.folder / f"{name}.log"
            if log.is_file():
                parts.append(f"--- {name}.log\n" + "\n".join(log.read_text().splitlines()[-30:]))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel this cluster's jobs, then end slurmd, slurmctld and munged (by PID, in that order)."""
        if self.procs:
            self.run("scancel", "--user", os.environ.get("USER", "root"))
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs.clear()


def start(folder: Path, cpus: int | None = None, timeout: float = 60.0) -> Cluster:
    """Start munged, slurmctld and slurmd in the foreground (children of this process) with all
    their files under `folder`, and wait until the node takes jobs."""
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (folder / sub).mkdir(exist_ok=True)
    folder.chmod(0o700)  # munged refuses a socket or key in a folder others can write to
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, cpus or os.cpu_count() or 1, _memory_mb()))
    srun = folder / "bin" / "srun"
    srun.parent.mkdir(exist_ok=True)
    srun.write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {shutil.which("srun")} "$@"\n')
    srun.chmod(0o755)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    # started inside a job of another cluster: submit to this one
    inherited = [
        v for v in env if v.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and v != "SLURM_CONF"
    ]
    for var in inherited:
        del env[var]
    cluster = Cluster(folder, env)
    commands = [
        [
            "munged",
            "--foreground",
            "--force",  # its socket lies in a private temp folder, not world-executable /run/munge
            f"--socket={folder / 'munge.socket'}",
            f"--key-file={key}",
            f"--pid-file={folder / 'munged.pid'}",
            f"--log-file={folder / 'munged.log'}",
            f"--seed-file={folder / 'munged.seed'}",
        ],
        ["slurmctld", "-D", "-i", "-f", str(conf)],
        ["slurmd", "-D", "-N", "localhost", "-f", str(conf)],
    ]
    try:
        for cmd in commands:
            out = (folder / f"{cmd[0]}.out").open("w")
            cluster.procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
            _wait_started(cluster, cmd[0], timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_started(cluster: Cluster, daemon: str, timeout: float) -> None:
    """Wait until `daemon` answers: munged's socket exists, slurmctld answers `sinfo`, the node is idle."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = cluster.procs[-1]
        if proc.poll() is not None:
            out = (cluster.folder / f"{daemon}.out").read_text()
            raise RuntimeError(f"{daemon} exited ({proc.returncode}): {out[-2000:]}\n{cluster.logs()}")
        if daemon == "munged" and (cluster.folder / "munge.socket").exists():
            return
        if daemon == "slurmctld" and cluster.run("sinfo").returncode == 0:
            return
        if daemon == "slurmd":
            state = cluster.run("sinfo", "--noheader", "--nodes=localhost", "--format=%t").stdout.strip()
            if state == "idle":
                return
        time.sleep(0.5)
    raise RuntimeError(f"{daemon} did not start within {timeout:.0f} s\n{cluster.logs()}")
