"""Ray Tune ablation sweeps: each trial runs one job's chain (pretrain -> finetune -> evaluate).

A sweep (`sweeps.<name>` in a params profile, `config.SweepCfg`) names a job and the settings to vary:
a `grid` (dotted key -> values, crossed) and/or named `variants` (name -> {dotted key: value}). Keys
are relative to `jobs.<job>.`, so `model.num_queries` varies `jobs.mqtransformer.model.num_queries`.
Every setting becomes one trial with its own folder `out/trials/<variant>/` holding the stages' outputs
(`pretrain/`, `finetune/`, `metrics.json`) and a `result.json` once the trial is done.

    densepred tune --params params/smoke.yaml --sweep mqt_queries --out runs/smoke/sweeps/mqt_queries

What `out/` holds:

- `sweep.json`: the sweep's fingerprint (its settings and every trial's resolved job config), the
  Ray experiment name `<sweep>-<fingerprint[:8]>` and the MLflow parent run id. When the definition
  changed (a params edit, another `--set`), the previous outputs are moved to `stale/` and the sweep
  starts afresh: trials of different settings are never mixed, and nothing is deleted.
- `ray/<sweep>-<fingerprint[:8]>/`: Ray Tune's experiment folder (the storage path is configurable,
  for shared storage on clusters; the fingerprint in the name keeps a changed sweep from restoring
  a stale experiment there).
- `trials/<variant>/`: the trial's stage outputs, `log.txt` (its stdout and stderr), `attempts.log`
  (one line per start), `result.json`.
- `summary.csv`: one row per variant in declared order with stable columns (variant, status,
  attempts, error, the overridden keys, then the metrics sorted by name); written atomically, and
  only when every trial has finished or failed for good.

Ray Tune 2.60 API: `tune.Tuner` with `tune.RunConfig`,
`tune.FailureConfig(max_failures=...)`, `tune.with_resources`, and `ray.tune.report` inside the
trainable (not `ray.train.*`).

Fault tolerance, in two layers:

- A trial that raises is retried `max_failures` times by Ray (each retry resumes training from the
  stage's `checkpoints/last.pt`); if it still fails, its row says `status=error` with the message,
  and the sweep completes.
- An interrupted sweep (Ctrl-C, a killed job) is resumed by rerunning the same command: when
  `Tuner.can_restore(<storage>/<experiment>)` the experiment is restored (`Tuner.restore`,
  unfinished trials resumed). Ray saves its experiment state on Ctrl-C, but after a hard kill the
  saved state can be up to `STATE_SYNC_S` seconds old; so a trial whose `result.json` exists reports
  it without running again, and finished trials are never rerun, whatever Ray remembers.

Where Ray runs: `RAY_ADDRESS` joins an existing cluster (then `out/` and the storage path must be on
shared storage); otherwise a local Ray instance is started with `num_cpus` CPUs (argument, else
`DENSEPRED_RAY_CPUS` as set by the Snakemake rule from `{threads}`, else `os.cpu_count()`), and shut
down at the end. If Ray is already initialised in this process, it is used and left running (then
the caller owns its runtime environment). Trials never depend on the working directory: every path
in the trial params is made absolute, and `RAY_CHDIR_TO_TRIAL_DIR=0`, `DENSEPRED_ROOT` and the
absolute `MLFLOW_TRACKING_URI` are passed to the workers with `runtime_env`.

MLflow (through `densepred.tracking`): a sweep-level parent run (kind `sweep`, top level), one run
per trial (kind `trial`, tagged `sweep`, `table`, `variant` and `mlflow.parentRunId`), reopened on
retries, and under each trial run the runs of its stages (train, evaluate; tagged `sweep`,
`variant`, `origin=sweep`), so the top level of the runs table shows the pipeline's stage runs and
one run per sweep. The parent run is opened only once Ray is up, so a Ray connection error leaves
no run behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from densepred import paths
from densepred.config import Params, ParamsError, SweepCfg
from densepred.io import atomic_write_text
from densepred.paths import SWEEP_SUMMARY, project_root
from densepred.stage_run import TRAIN_STAGES, StageRun
from densepred.sweeps import Trial, expand_trials, read_summary, trial_params, value_text, write_summary
from densepred.tracking import nested_under

ENV_CPUS = "DENSEPRED_RAY_CPUS"
ENV_STORAGE = "DENSEPRED_RAY_STORAGE"
PASSED_ENV = ("DENSEPRED_TRACKING", "DENSEPRED_DEBUG")  # forwarded to the trials when set
STATE_FILE = "sweep.json"
TRIALS_DIR = "trials"
STALE_DIR = "stale"
RESULT_FILE = "result.json"
ATTEMPTS_FILE = "attempts.log"
LOG_FILE = "log.txt"
RUN_ID_FILE = "mlflow_run_id"
LOCAL_RAY_FILE = "ray_local.json"  # the local Ray of a running sweep (see `ray_session`)
PROBE_TIMEOUT_S = 10  # to reach RAY_ADDRESS before handing it to Ray
OBJECT_STORE_BYTES = 128 * 1024**2  # trials exchange only small dicts; Ray would reserve 30% of RAM
STATE_SYNC_S = 10  # copy Ray's experiment state to the storage path at most this stale (Ray: 300 s)
SUMMARY_COLUMNS = ["variant", "status", "attempts", "error"]
MAX_ERROR_CHARS = 500

TrialFn = Callable[[Params, str, Path], Mapping[str, Any]]
"""A trial: (trial params, job name, trial folder) -> flat metrics. The default is `run_job_chain`."""


class SweepInterrupted(KeyboardInterrupt):
    """The sweep stopped before every trial finished (Ctrl-C); rerun the same command to resume."""


# ------------------------------------------------------------------------------------------ settings


def absolute_paths(node: Any, base: Path) -> Any:
    """A copy of a params tree (models, dicts, lists) with every relative `Path` made absolute.

    Ray workers may run in another directory (their trial folder, another node; Ray Tune's
    `RAY_CHDIR_TO_TRIAL_DIR`); absolute paths keep dataset, weight and output locations independent
    of that.
    """
    if isinstance(node, Path):
        return node if node.is_absolute() else base / node
    if isinstance(node, BaseModel):
        return node.model_copy(
            update={f: absolute_paths(getattr(node, f), base) for f in type(node).model_fields}
        )
    if isinstance(node, dict):
        return {k: absolute_paths(v, base) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return type(node)(absolute_paths(v, base) for v in node)
    return node


def fingerprint(params: Params, sweep: SweepCfg, trials: Mapping[str, Params]) -> str:
    """Hash of what decides a sweep's results: its job, settings, seed and each trial's job config.

    Resources, retries and concurrency are left out, so they can change between a run and its resume.
    """
    tree = {
        "job": sweep.job,
        "seed": params.seed,
        "grid": sweep.grid,
        "variants": sweep.variants,
        "trials": {name: p.jobs[sweep.job].model_dump(mode="json") for name, p in trials.items()},
    }
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()


# -------------------------------------------------------------------------------------- the real trial


def run_job_chain(params: Params, job: str, out: Path) -> dict[str, Any]:
    """Run a job's chain into `out`: pretrain (if any) -> finetune from it (if any) -> evaluate.

    Each stage is one `StageRun` (stage folders and file names from densepred.paths). A retried or
    resumed trial continues where it stopped: `train_job` does nothing for a stage whose `final.pt`
    exists and resumes from its `checkpoints/last.pt`, and an existing `metrics.json` (written last,
    atomically, by `evaluate_job`) is reused. Returns the flat metrics.
    """
    from densepred.engine.evaluate import evaluate_job
    from densepred.engine.train import train_job

    cfg = params.job(job)
    init: Path | None = None
    for stage in TRAIN_STAGES:
        if getattr(cfg, stage) is not None:
            init = Path(train_job(StageRun.train(params, job, stage, paths.stage_dir(out, stage), init)))
    if init is None:
        raise ValueError(f"jobs.{job}: nothing to train (no pretrain or finetune stage)")
    metrics_json = paths.trial_metrics(out)
    if metrics_json.is_file():
        return json.loads(metrics_json.read_text())
    return dict(evaluate_job(StageRun.evaluate(params, job, init, metrics_json)))


# ----------------------------------------------------------------------------------------- the sweep


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything a trial needs; pickled once and shipped to the Ray workers."""

    sweep: str
    experiment: str
    table: str
    job: str
    trials_dir: Path
    trials: dict[str, Trial]
    params: dict[str, Params]
    trial_fn: TrialFn
    parent_run_id: str | None


def run_sweep(
    params: Params,
    sweep: str,
    out: str | Path,
    params_path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    trial_fn: TrialFn | None = None,
    num_cpus: int | None = None,
    storage_path: str | Path | None = None,
    retry_errored: bool = False,
) -> pd.DataFrame:
    """Run (or resume) the sweep `sweep` of `params` into `out`; returns the summary DataFrame.

    `trial_fn` replaces the real job chain (`run_job_chain`), e.g. by a cheap function in tests.
    `num_cpus` sizes a local Ray instance (default: DENSEPRED_RAY_CPUS, else all cores).
    `storage_path` is Ray Tune's storage (default: DENSEPRED_RAY_STORAGE, else `out/ray`); a URI
    (s3://, gs://) is kept as is. `retry_errored=True` reruns trials that failed for good in an
    earlier run of this sweep (by default they stay failed). `params_path` and `overrides` are
    recorded with the sweep for provenance.

    Raises `SweepInterrupted` (a KeyboardInterrupt) if Ray stopped before every trial ended; the
    summary is then not written, and rerunning the same command resumes the sweep.
    """
    if sweep not in params.sweeps:
        raise ParamsError(
            f"no sweep named {sweep!r} in profile {params.profile!r}; sweeps: {sorted(params.sweeps)}"
        )
    cfg = params.sweeps[sweep]
    trials = expand_trials(cfg, sweep)
    resolved = {t.variant: trial_params(params, cfg.job, t, f"sweeps.{sweep}") for t in trials}
    out = Path(out).resolve()
    state = _load_state(out, sweep, fingerprint(params, cfg, resolved), params_path, overrides)
    cwd = Path.cwd().resolve()
    storage = _storage_path(out, storage_path)
    with (
        ray_session(_ray_cpus(num_cpus), _worker_env(params), out),
        _parent_run(params, sweep, cfg, state, out) as parent_id,
    ):
        _check_resources(cfg)
        plan = _Plan(
            sweep=sweep,
            experiment=state["experiment"],
            table=cfg.table,
            job=cfg.job,
            trials_dir=out / TRIALS_DIR,
            trials={t.variant: t for t in trials},
            params={name: absolute_paths(p, cwd) for name, p in resolved.items()},
            trial_fn=trial_fn or run_job_chain,
            parent_run_id=parent_id,
        )
        grid = _tuner(plan, cfg, storage, retry_errored).fit()
        frame = summarize(plan, grid)
        interrupted = frame["status"].eq("unfinished")
        if interrupted.any():
            raise SweepInterrupted(
                f"sweep {sweep!r} stopped with unfinished trials {list(frame['variant'][interrupted])}; "
                f"rerun the same command to resume from {storage}/{plan.experiment}"
            )
        write_summary(frame, out / SWEEP_SUMMARY)
    ok = int(frame["status"].eq("ok").sum())
    print(f"[tune {sweep}] {ok}/{len(frame)} trials ok -> {out / SWEEP_SUMMARY}", flush=True)
    return frame


def _load_state(
    out: Path, sweep: str, digest: str, params_path: str | Path | None, overrides: Sequence[str]
) -> dict[str, Any]:
    """Read `out/sweep.json` when it belongs to this sweep definition, else start a new one.

    The outputs of a different definition (another fingerprint: changed settings, so its trials would
    not match) are moved into `out/stale/<old fingerprint>-<n>/`, never mixed with the new trials
    and never deleted.
    """
    path = out / STATE_FILE
    if path.is_file():
        try:
            state = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}: not valid JSON ({exc}); remove {out} to start the sweep afresh"
            ) from None
        if state.get("fingerprint") == digest and state.get("sweep") == sweep:
            return state
        _set_aside(out, str(state.get("fingerprint", "unknown")))
    state = {
        "sweep": sweep,
        "experiment": f"{sweep}-{digest[:8]}",
        "fingerprint": digest,
        "params_path": str(params_path) if params_path else None,
        "overrides": list(overrides),
        "parent_run_id": None,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(state, indent=2, sort_keys=True) + "\n")
    return state


def _set_aside(out: Path, old_digest: str) -> Path:
    """Move a previous definition's state, summary, trials and Ray folder into `out/stale/`."""
    stale_root = out / STALE_DIR
    stale_root.mkdir(parents=True, exist_ok=True)
    n = 0
    while (stale_root / f"{old_digest[:12]}-{n}").exists():
        n += 1
    stale = stale_root / f"{old_digest[:12]}-{n}"
    stale.mkdir()
    for name in (STATE_FILE, SWEEP_SUMMARY, TRIALS_DIR, "ray"):
        if (out / name).exists():
            os.replace(out / name, stale / name)
    print(
        f"[tune] the sweep settings changed since {out} was started; its outputs moved to {stale}", flush=True
    )
    return stale


def _storage_path(out: Path, storage_path: str | Path | None) -> str:
    """Absolute local path or URI for Ray Tune's storage."""
    value = storage_path or os.environ.get(ENV_STORAGE) or out / "ray"
    if "://" in str(value):
        return str(value)
    return str(Path(value).expanduser().resolve())


def _ray_cpus(num_cpus: int | None) -> int:
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


def _worker_env(params: Params) -> dict[str, str]:
    """Environment variables the trials need wherever they run (Ray does not forward the driver's)."""
    from densepred.tracking import tracking_enabled, tracking_uri

    env = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "DENSEPRED_ROOT": str(project_root())}
    if tracking_enabled():
        env["MLFLOW_TRACKING_URI"] = tracking_uri(params.tracking)
    env.update({k: os.environ[k] for k in PASSED_ENV if k in os.environ})
    return env


class RayClusterError(ConnectionError):
    """Ray could not be reached or refused this driver: one line naming the address and the fix
    (an OSError, so the CLI reports it with exit status 2)."""


@contextlib.contextmanager
def ray_session(num_cpus: int, env: Mapping[str, str], out: Path | None = None) -> Iterator[None]:
    """Ray for the sweep: join `RAY_ADDRESS`, or start a lean local instance; shut down what we start.

    A Ray already initialised in this process is used as it is and left running. A local instance
    is always a new one (`address="local"`): a stale `ray_current_cluster` file, or another user's
    Ray on this machine, is never joined by accident. Its processes are listed in
    `out/ray_local.json` while it runs, so that after a hard kill of the driver the next sweep
    started on that folder stops whatever of them survived (`reap_local_ray`).
    """
    import ray

    if ray.is_initialized():
        yield
        return
    common: dict[str, Any] = {
        "runtime_env": {"env_vars": dict(env)},
        "log_to_driver": False,  # a trial's output goes to its folder's log.txt (`run_trial`)
        "logging_level": logging.WARNING,
    }
    address = os.environ.get("RAY_ADDRESS", "").strip()
    record = Path(out) / LOCAL_RAY_FILE if out is not None else None
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
    code = "import sys; from densepred.tune import watch_driver; watch_driver(int(sys.argv[1]), sys.argv[2])"
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


def _check_resources(cfg: SweepCfg) -> None:
    """Fail fast when one trial asks for more than the whole Ray cluster has (it would wait forever)."""
    import ray

    have = ray.cluster_resources()
    for key, want in (("CPU", cfg.resources.cpu), ("GPU", cfg.resources.gpu)):
        if want > have.get(key, 0.0):
            raise ValueError(
                f"a trial asks for {key.lower()}={want:g} (sweep resources) but the Ray cluster has "
                f"{have.get(key, 0.0):g}; lower `resources` or give Ray more ({ENV_CPUS}, RAY_ADDRESS)"
            )


def _tuner(plan: _Plan, cfg: SweepCfg, storage: str, retry_errored: bool) -> Any:
    """A new Tuner for the sweep, or the restored one when its experiment folder can be restored."""
    from ray import tune

    trainable = tune.with_resources(
        _make_trainable(plan), {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu}
    )
    path = f"{storage}/{plan.experiment}"
    if tune.Tuner.can_restore(path):
        print(f"[tune {plan.sweep}] resuming the sweep saved in {path}", flush=True)
        return tune.Tuner.restore(
            path, trainable, resume_unfinished=True, resume_errored=retry_errored, restart_errored=False
        )
    return tune.Tuner(
        trainable,
        param_space={"variant": tune.grid_search(list(plan.trials))},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=cfg.max_concurrent, trial_dirname_creator=_trial_dirname
        ),
        run_config=tune.RunConfig(
            name=plan.experiment,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            sync_config=tune.SyncConfig(sync_period=STATE_SYNC_S),
            verbose=0,
        ),
    )


def _trial_dirname(trial: Any) -> str:
    """Ray's folder for a trial: the variant name (unique within a sweep; `summarize` relies on it)."""
    return str(trial.config["variant"])


def _make_trainable(plan: _Plan) -> Callable[[dict[str, Any]], None]:
    """The Ray Tune function trainable: run one variant (or reuse its result) and report the metrics."""

    def densepred_trial(config: dict[str, Any]) -> None:
        from ray import tune

        tune.report(run_trial(plan, config["variant"]))

    densepred_trial.__name__ = f"densepred_{plan.sweep}"
    return densepred_trial


def run_trial(plan: _Plan, variant: str) -> dict[str, float]:
    """Run the trial `variant` in its folder unless its `result.json` exists; return its metrics."""
    folder = plan.trials_dir / variant
    done = folder / RESULT_FILE
    if done.is_file():
        return json.loads(done.read_text())["metrics"]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ATTEMPTS_FILE, "a") as log:
        log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid={os.getpid()}\n")
    params = plan.params[variant]
    with (
        open(folder / LOG_FILE, "a") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
        _trial_run(plan, variant, params, folder) as run,
        nested_under(run.run_id, {"sweep": plan.sweep, "variant": variant, "table": plan.table}),
    ):
        metrics = numeric_metrics(plan.trial_fn(params, plan.job, folder), variant)
        run.log_metrics(metrics)
    record = {"variant": variant, "overrides": plan.trials[variant].overrides, "metrics": metrics}
    atomic_write_text(done, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return metrics


def numeric_metrics(metrics: Mapping[str, Any], variant: str = "?") -> dict[str, float]:
    """The numeric scalar entries of a trial's metrics (nested `meta` and other values dropped)."""
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"trial {variant!r}: the trial function returned {type(metrics).__name__}, expected a dict"
        )
    return {
        str(k): float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


# ------------------------------------------------------------------------------------------- tracking


@contextlib.contextmanager
def _parent_run(
    params: Params, sweep: str, cfg: SweepCfg, state: dict[str, Any], out: Path
) -> Iterator[str | None]:
    """The sweep-level MLflow run (reopened on resume); yields its id (None with tracking off)."""
    from densepred.tracking import RunSubject, start_run

    subject = RunSubject.of_job(params, cfg.job)
    run_name = f"sweep-{sweep}"
    journal = paths.tracking_journal(out)
    with start_run(
        subject, "sweep", journal=journal, run_id=state.get("parent_run_id"), run_name=run_name
    ) as run:
        if run.run_id and run.run_id != state.get("parent_run_id"):
            state["parent_run_id"] = run.run_id
            atomic_write_text(out / STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")
        run.set_tags({"sweep": sweep, "table": cfg.table})
        yield run.run_id
        if (out / SWEEP_SUMMARY).is_file():
            run.log_artifact(out / SWEEP_SUMMARY)


@contextlib.contextmanager
def _trial_run(plan: _Plan, variant: str, params: Params, folder: Path) -> Iterator[Any]:
    """The trial's MLflow run, child of the sweep run; a retry reopens the same run."""
    from densepred.tracking import RunSubject, start_run

    id_file = folder / RUN_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    name = f"{plan.sweep}-{variant}"
    subject = RunSubject.of_job(params, plan.job)
    journal = paths.tracking_journal(folder)
    with start_run(subject, "trial", journal=journal, run_id=run_id, run_name=name) as run:
        if run.run_id and run.run_id != run_id:
            atomic_write_text(id_file, run.run_id + "\n")
        tags = {"sweep": plan.sweep, "table": plan.table, "variant": variant, "origin": "sweep"}
        if plan.parent_run_id:
            tags["mlflow.parentRunId"] = plan.parent_run_id
        run.set_tags(tags)
        run.log_params({f"override.{k}": value_text(v) for k, v in plan.trials[variant].overrides.items()})
        yield run


# -------------------------------------------------------------------------------------------- summary


def summarize(plan: _Plan, grid: Any) -> pd.DataFrame:
    """One row per variant, in declared order: variant, status (ok, error or unfinished), attempts,
    error, the overridden keys, then the metrics sorted by name."""
    by_variant = {}
    for result in grid:
        # A restored trial that had failed comes back without its config; its folder names it.
        variant = (result.config or {}).get("variant") or Path(result.path).name
        by_variant[variant] = result
    override_keys = sorted({k for t in plan.trials.values() for k in t.overrides})
    rows = []
    for variant, trial in plan.trials.items():
        result = by_variant.get(variant)
        status, error, metrics = _outcome(plan.trials_dir / variant, result)
        row: dict[str, Any] = {
            "variant": variant,
            "status": status,
            "attempts": _attempts(plan.trials_dir / variant),
            "error": error,
        }
        row.update({k: value_text(trial.overrides[k]) if k in trial.overrides else "" for k in override_keys})
        row.update(metrics)
        rows.append(row)
    frame = pd.DataFrame(rows)
    fixed = SUMMARY_COLUMNS + override_keys
    metric_cols = sorted(c for c in frame.columns if c not in fixed)
    return frame.reindex(columns=fixed + metric_cols)


def _outcome(folder: Path, result: Any) -> tuple[str, str, dict[str, float]]:
    """(status, error message, metrics) of one trial."""
    if result is not None and result.error is not None:
        return "error", error_message(result.error), {}
    done = folder / RESULT_FILE
    if done.is_file():
        return "ok", "", json.loads(done.read_text())["metrics"]
    return "unfinished", "", {}


def error_message(error: BaseException) -> str:
    """The root cause of a trial failure as one line: `ValueError: bad K` (Ray wraps it in layers)."""
    seen: set[int] = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "cause", None) or error.__cause__
        if not isinstance(inner, BaseException):
            break
        error = inner
    text = str(error).strip().splitlines()
    message = f"{type(error).__name__}: {text[-1] if text else ''}".strip()
    return message[:MAX_ERROR_CHARS]


def _attempts(folder: Path) -> int:
    path = folder / ATTEMPTS_FILE
    return len(path.read_text().splitlines()) if path.is_file() else 0


__all__ = [
    "SweepInterrupted",
    "Trial",
    "expand_trials",
    "read_summary",
    "run_job_chain",
    "run_sweep",
    "trial_params",
    "write_summary",
]
