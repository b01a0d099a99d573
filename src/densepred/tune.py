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

Where Ray runs (ray_cluster.py, `ray_session`): `RAY_ADDRESS` joins an existing cluster (then `out/`
and the storage path must be on shared storage); otherwise a local Ray instance is started with
`num_cpus` CPUs and shut down at the end. Trials never depend on the working directory: every path
in the trial params is made absolute, and `RAY_CHDIR_TO_TRIAL_DIR=0`, `DENSEPRED_ROOT`, the
absolute `MLFLOW_TRACKING_URI`, the bounds on calls to a tracking server (`tracking.HTTP_DEFAULTS`,
unless the driver's environment sets them), `PASSED_ENV` and the kernel pins of
`runtime.cpu_kernels: portable` (`launch.kernel_env`) are passed to the workers with `runtime_env`.

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
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from densepred import paths
from densepred.config import Params, ParamsError, SweepCfg
from densepred.io import atomic_write_text
from densepred.launch import kernel_env
from densepred.paths import SWEEP_RAY, SWEEP_STATE, SWEEP_SUMMARY, SWEEP_TRIALS, project_root
from densepred.ray_cluster import ENV_CPUS, ray_cpus, ray_session
from densepred.stage_run import chain_runs
from densepred.sweeps import Trial, expand_trials, read_summary, trial_params, value_text, write_summary
from densepred.tracking import HTTP_DEFAULTS, Nesting, missing_http_defaults

ENV_STORAGE = "DENSEPRED_RAY_STORAGE"
# Forwarded to the trials when set (the MLflow HTTP bounds: densepred.cli.main sets them).
PASSED_ENV = ("DENSEPRED_TRACKING", "DENSEPRED_DEBUG", *HTTP_DEFAULTS)
STATE_SYNC_S = 10  # copy Ray's experiment state to the storage path at most this stale (Ray: 300 s)
SUMMARY_COLUMNS = ["variant", "status", "attempts", "error"]
MAX_ERROR_CHARS = 500

TrialFn = Callable[[Params, str, Path, Nesting | None], Mapping[str, Any]]
"""A trial: (trial params, job name, trial folder, where its stage runs sit in MLflow) -> flat metrics.
The default is `run_job_chain`."""


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


def run_job_chain(params: Params, job: str, out: Path, nesting: Nesting | None = None) -> dict[str, Any]:
    """Run a job's chain into `out`: pretrain (if any) -> finetune from it (if any) -> evaluate.

    The stages are those of the pipeline's chain (`stage_run.chain_runs`; stage folders and file
    names from densepred.paths), the evaluation written to `metrics.json`. A retried or resumed
    trial continues where it stopped: `train_job` does nothing for a stage whose `final.pt` exists
    and resumes from its `checkpoints/last.pt`, and an existing `metrics.json` (written last,
    atomically, by `evaluate_job`) is reused. Returns the flat metrics. `nesting` places the
    stages' MLflow runs under the trial's run.
    """
    from densepred.engine.evaluate import evaluate_job
    from densepred.engine.train import train_job

    runs = chain_runs(params, job, out, eval_out=paths.trial_metrics(out))
    if not runs:
        raise ValueError(f"jobs.{job}: nothing to train (no pretrain or finetune stage)")
    *stages, evaluation = runs
    for run in stages:
        train_job(run, nesting=nesting)
    if evaluation.out.is_file():
        return json.loads(evaluation.out.read_text())
    return dict(evaluate_job(evaluation, nesting=nesting))


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

    `trial_fn` replaces the real job chain (`run_job_chain`, same arguments), e.g. by a cheap
    function in tests.
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
        ray_session(ray_cpus(num_cpus), _worker_env(params), paths.local_ray_record(out)),
        _parent_run(params, sweep, cfg, state, out) as parent_id,
    ):
        _check_resources(cfg)
        plan = _Plan(
            sweep=sweep,
            experiment=state["experiment"],
            table=cfg.table,
            job=cfg.job,
            trials_dir=paths.sweep_trials_dir(out),
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
        write_summary(frame, paths.sweep_summary(out))
    ok = int(frame["status"].eq("ok").sum())
    print(f"[tune {sweep}] {ok}/{len(frame)} trials ok -> {paths.sweep_summary(out)}", flush=True)
    return frame


def _load_state(
    out: Path, sweep: str, digest: str, params_path: str | Path | None, overrides: Sequence[str]
) -> dict[str, Any]:
    """Read `out/sweep.json` when it belongs to this sweep definition, else start a new one.

    The outputs of a different definition (another fingerprint: changed settings, so its trials would
    not match) are moved into `out/stale/<old fingerprint>-<n>/`, never mixed with the new trials
    and never deleted.
    """
    path = paths.sweep_state(out)
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
    stale_root = paths.sweep_stale_dir(out)
    stale_root.mkdir(parents=True, exist_ok=True)
    n = 0
    while (stale_root / f"{old_digest[:12]}-{n}").exists():
        n += 1
    stale = stale_root / f"{old_digest[:12]}-{n}"
    stale.mkdir()
    for name in (SWEEP_STATE, SWEEP_SUMMARY, SWEEP_TRIALS, SWEEP_RAY):
        if (out / name).exists():
            os.replace(out / name, stale / name)
    print(
        f"[tune] the sweep settings changed since {out} was started; its outputs moved to {stale}", flush=True
    )
    return stale


def _storage_path(out: Path, storage_path: str | Path | None) -> str:
    """Absolute local path or URI for Ray Tune's storage."""
    value = storage_path or os.environ.get(ENV_STORAGE) or paths.sweep_ray_storage(out)
    if "://" in str(value):
        return str(value)
    return str(Path(value).expanduser().resolve())


def _worker_env(params: Params) -> dict[str, str]:
    """Environment variables the trials need wherever they run (Ray does not forward the driver's)."""
    from densepred.tracking import tracking_enabled, tracking_uri

    env = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "DENSEPRED_ROOT": str(project_root())}
    if tracking_enabled():
        env["MLFLOW_TRACKING_URI"] = tracking_uri(params.tracking)
    env.update(missing_http_defaults(os.environ))  # the trials' bounds on tracking-server calls
    env.update({k: os.environ[k] for k in PASSED_ENV if k in os.environ})
    env.update(kernel_env(params.runtime))  # a worker of a running cluster has not inherited them
    return env


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
    done = paths.trial_result(folder)
    if done.is_file():
        return json.loads(done.read_text())["metrics"]
    folder.mkdir(parents=True, exist_ok=True)
    with open(paths.trial_attempts(folder), "a") as log:
        log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid={os.getpid()}\n")
    params = plan.params[variant]
    with (
        open(paths.trial_log(folder), "a") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
        _trial_run(plan, variant, params, folder) as run,
    ):
        nesting = Nesting(run.run_id, {"sweep": plan.sweep, "variant": variant, "table": plan.table})
        metrics = numeric_metrics(plan.trial_fn(params, plan.job, folder, nesting), variant)
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
            atomic_write_text(paths.sweep_state(out), json.dumps(state, indent=2, sort_keys=True) + "\n")
        run.set_tags({"sweep": sweep, "table": cfg.table})
        yield run.run_id
        if paths.sweep_summary(out).is_file():
            run.log_artifact(paths.sweep_summary(out))


@contextlib.contextmanager
def _trial_run(plan: _Plan, variant: str, params: Params, folder: Path) -> Iterator[Any]:
    """The trial's MLflow run, child of the sweep run; a retry reopens the same run."""
    from densepred.tracking import RunSubject, start_run

    id_file = paths.trial_run_id(folder)
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    name = f"{plan.sweep}-{variant}"
    subject = RunSubject.of_job(params, plan.job)
    journal = paths.tracking_journal(folder)
    nesting = Nesting(plan.parent_run_id, {"sweep": plan.sweep, "table": plan.table, "variant": variant})
    with start_run(subject, "trial", journal=journal, run_id=run_id, run_name=name, nesting=nesting) as run:
        if run.run_id and run.run_id != run_id:
            atomic_write_text(id_file, run.run_id + "\n")
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
    done = paths.trial_result(folder)
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
    path = paths.trial_attempts(folder)
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
