"""Ray for a sweep: join a running cluster, or start a lean local instance and make sure none of its
processes outlives the driver that started it.

Where Ray runs (`ray_session`): `RAY_ADDRESS` joins an existing cluster (then the sweep's folder and
Ray Tune's storage path must be on shared storage); otherwise a local Ray instance is started with
`num_cpus` CPUs (`ray_cpus`: the argument, else `DENSEPRED_RAY_CPUS` as set by the Snakemake rule
from `{threads}`, else `os.cpu_count()`), and shut down at the end. If Ray is already initialised in
this process, it is used and left running (then the caller owns its runtime environment).

Joining: the address is probed first (`PROBE_TIMEOUT_S`; Ray itself would wait minutes for an
unreachable cluster), token authentication is switched on when the cluster's token is at hand, and a
failure is a `RayClusterError`, one line naming the address and the fix.

A local instance is listed in a record file (the sweep's `ray_local.json`, densepred.paths) while it
runs, and a watchdog process (`watch_driver`) stops its processes if the driver is killed; the next
sweep on that folder stops whatever survived (`reap_local_ray`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from densepred.io import atomic_write_text

ENV_CPUS = "DENSEPRED_RAY_CPUS"
PROBE_TIMEOUT_S = 10  # to reach RAY_ADDRESS before handing it to Ray
OBJECT_STORE_BYTES = 128 * 1024**2  # trials exchange only small dicts; Ray would reserve 30% of RAM


def ray_cpus(num_cpus: int | None) -> int:
    """CPUs for a local Ray instance: argument, else DENSEPRED_RAY_CPUS, else all cores."""
    if num_cpus is None:
        raw = os.environ.get(ENV_CPUS, "").strip()
        if raw:
            try:
                num_cpus = int(raw)
            except ValueError:
                raise ValueError(f"{ENV_CPUS}={raw!r}: expected a positive integer") from None
        else:
            num_cpus = os.cpu_count() or 1
    if num_cpus < 1:
        raise ValueError(f"Ray CPUs must be a positive integer, got {num_cpus} (argument or {ENV_CPUS})")
    return num_cpus


class RayClusterError(ConnectionError):
    """Ray could not be reached or refused this driver: one line naming the address and the fix
    (an OSError, so the CLI reports it with exit status 2)."""


@contextlib.contextmanager
def ray_session(num_cpus: int, env: Mapping[str, str], record: Path | None = None) -> Iterator[None]:
    """Ray for the sweep: join `RAY_ADDRESS`, or start a lean local instance; shut down what we start.

    A Ray already initialised in this process is used as it is and left running. A local instance
    is always a new one (`address="local"`): a stale `ray_current_cluster` file, or another user's
    Ray on this machine, is never joined by accident. Its processes are listed in `record` (a
    sweep's `ray_local.json`, `paths.local_ray_record`) while it runs, so that after a hard kill of
    the driver the next sweep started on that folder stops whatever of them survived
    (`reap_local_ray`). `env` is the environment of the workers (Ray does not forward the driver's).
    """
    import ray

    if ray.is_initialized():
        yield
        return
    common: dict[str, Any] = {
        "runtime_env": {"env_vars": dict(env)},
        "log_to_driver": False,  # a trial's output goes to its folder's log.txt (`tune.run_trial`)
        "logging_level": logging.WARNING,
    }
    address = os.environ.get("RAY_ADDRESS", "").strip()
    watchdog: subprocess.Popen | None = None
    if address and address != "local":
        _join(address, common)
    else:
        if record is not None:
            reap_local_ray(record)
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            object_store_memory=OBJECT_STORE_BYTES,
            **common,
        )
        if record is not None:
            watchdog = _record_local_ray(record)
    try:
        yield
    finally:
        ray.shutdown()
        if watchdog is not None:
            watchdog.kill()
            watchdog.wait()
        if record is not None:
            record.unlink(missing_ok=True)


def _join(address: str, common: Mapping[str, Any]) -> None:
    """`ray.init(address)` after checking, within `PROBE_TIMEOUT_S`, that the address answers; token
    authentication is switched on when the cluster's token is at hand (see `_use_token_auth`)."""
    import ray

    _probe(address)
    _use_token_auth()
    try:
        ray.init(address=address, **common)
    except Exception as exc:
        ray.shutdown()
        raise RayClusterError(_ray_error_line(address, exc)) from exc


def _probe(address: str) -> None:
    """Raise RayClusterError unless `host:port` of `address` (also `ray://host:port`, `auto`)
    accepts a TCP connection; Ray itself would wait minutes for an unreachable cluster."""
    target = address.split("://", 1)[-1]
    where = f"RAY_ADDRESS={address}"
    if target == "auto":
        target = _recorded_address() or ""
        recorded = _ray_temp_dir() / "ray_current_cluster"
        where = f"{target} (RAY_ADDRESS=auto, read from {recorded}: stale if that cluster is gone)"
        if not target:
            raise RayClusterError(
                f"RAY_ADDRESS=auto but no running Ray cluster is recorded in {_ray_temp_dir()}; "
                "set RAY_ADDRESS=<head host>:<port>, or unset it to run Ray locally"
            )
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise RayClusterError(f"RAY_ADDRESS={address!r}: expected <host>:<port> (e.g. 127.0.0.1:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise RayClusterError(
            f"cannot reach the Ray cluster at {where} ({why}); start it with "
            f"`ray start --head --port={port}` or unset RAY_ADDRESS to run the sweep on a local Ray"
        ) from None


def _ray_temp_dir() -> Path:
    """Ray's temp dir: `$RAY_TMPDIR/ray`, by default /tmp/ray."""
    return Path(os.environ.get("RAY_TMPDIR") or "/tmp") / "ray"


def _recorded_address() -> str | None:
    """The address in Ray's `ray_current_cluster` file (written by `ray start`; may be stale)."""
    path = _ray_temp_dir() / "ray_current_cluster"
    return path.read_text().strip() or None if path.is_file() else None


def _use_token_auth() -> None:
    """Switch this driver to token authentication when RAY_AUTH_MODE is unset and a token is at hand
    (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token).

    `ray start --head` enables token auth by itself when ~/.ray/auth_token exists, but a driver
    given an explicit address does not, and then fails with `AuthenticationError: InvalidAuthToken`.
    An explicit RAY_AUTH_MODE (`token` or `disabled`) is passed through untouched.
    """
    if os.environ.get("RAY_AUTH_MODE"):
        return
    token_path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not (os.environ.get("RAY_AUTH_TOKEN") or token_path.is_file()):
        return
    from ray._raylet import Config

    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")  # Ray reads its auth mode from the environment when its config is initialised


def _ray_error_line(address: str, exc: BaseException) -> str:
    """One line for a failure to join the cluster at `address`."""
    name = type(exc).__name__
    text = (str(exc).strip().splitlines() or [name])[0]
    if name == "AuthenticationError" or "auth" in text.lower():
        return (
            f"the Ray cluster at RAY_ADDRESS={address} refused this driver's authentication ({text[:120]}); "
            "give it the cluster's token (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH; `ray get-auth-token` on "
            "the head) with RAY_AUTH_MODE=token, or RAY_AUTH_MODE=disabled for a cluster without token auth"
        )
    return (
        f"cannot join the Ray cluster at RAY_ADDRESS={address} ({name}: {text[:160]}); if the head uses "
        "token authentication set RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)"
    )


def _ray_processes(session_dir: str) -> dict[int, str]:
    """PIDs (and names) of the processes of the Ray session in `session_dir`: those naming it on their
    command line (gcs_server, raylet) or holding a file of it open (agents and workers, whose command
    line Ray rewrites to `ray::...`, write their logs there)."""
    found: dict[int, str] = {}
    name = Path(session_dir).name
    if not name.startswith("session_"):
        return found
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if name in cmdline or any(name in os.readlink(fd) for fd in (proc / "fd").iterdir()):
                found[int(proc.name)] = cmdline[:200]
        except OSError:
            continue
    return found


def _kill_session(session_dir: str) -> list[int]:
    """SIGKILL every process of the Ray session in `session_dir`; returns their PIDs."""
    pids = sorted(_ray_processes(session_dir))
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return pids


def _record_local_ray(record: Path) -> subprocess.Popen:
    """List the local Ray's session and driver in `record`, and start its watchdog: a process of its
    own session that stops the Ray processes if the driver dies without shutting Ray down (SIGKILL):
    Ray ties gcs_server and the raylet to the driver, but the raylet's agents and workers outlive it."""
    import ray

    session = ray._private.worker._global_node.get_session_dir_path()
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps({"session_dir": session, "driver_pid": os.getpid()}) + "\n")
    code = (
        "import sys; from densepred.ray_cluster import watch_driver; "
        "watch_driver(int(sys.argv[1]), sys.argv[2])"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(os.getpid()), session],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def watch_driver(driver_pid: int, session_dir: str, poll_s: float = 0.5) -> None:
    """Wait for the sweep driver `driver_pid` to end; then stop what is left of its Ray session."""
    while Path(f"/proc/{driver_pid}").exists() and not _is_zombie(driver_pid):
        time.sleep(poll_s)
    _kill_session(session_dir)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def reap_local_ray(record: Path) -> list[int]:
    """Stop the processes of a local Ray left by a sweep driver that was killed (its `record` is
    still there and the driver is gone; the watchdog normally did it already); returns their PIDs."""
    if not record.is_file():
        return []
    try:
        info = json.loads(record.read_text())
    except ValueError:
        record.unlink(missing_ok=True)
        return []
    driver = int(info.get("driver_pid") or 0)
    if driver and driver != os.getpid() and Path(f"/proc/{driver}").exists() and not _is_zombie(driver):
        return []  # that sweep is still running
    pids = _kill_session(str(info.get("session_dir") or ""))
    if pids:
        print(f"[tune] stopped {len(pids)} leftover processes of a killed sweep's Ray", flush=True)
    record.unlink(missing_ok=True)
    return pids
