"""`densepred train`: one stage (Taskonomy pretraining or NYUD-v2 finetuning) of one job.

Outputs in the run folder `out/`:

    checkpoints/last.pt   rolling, resumable checkpoint (model, optimiser, scheduler, RNG, step),
                          rewritten atomically every `checkpoint_every` steps and on SIGTERM
    final.pt              the stage's output (model weights + meta); written last, atomically, so
                          its existence means the stage is complete
    config.yaml           resolved job config, profile, seed, git commit, world size
    train_log.csv         one row per log step: step, lr, images/s, grad norm, every loss term
    init_report.json      with --init: which keys were loaded, reset (shape differs), missing
    tracking.json         the MLflow run id, so that a resumed stage continues the same run

Rerunning the same command resumes: with `final.pt` present nothing is done; with
`checkpoints/last.pt` present training continues from it. The data order is a function of
(seed, step) (engine/sampler.py), the RNG states are restored, and the schedule is a function of
the step, so on CPU the final weights are bitwise equal to those of an uninterrupted run.

Failures: a NaN/inf loss term (or gradient norm) raises `NonFiniteLossError` naming the step and the
terms, before the optimiser step, and no checkpoint is written after it, so `last.pt` stays the
last good state. SIGTERM writes a checkpoint at the end of the current step and exits with status 143.

Precision and speed: bf16 autocast on CUDA only (`runtime.amp`; the criteria compute in fp32),
channels_last on CUDA (`runtime.channels_last`), optional `torch.compile` (`runtime.compile`).
DDP under torchrun: `stage.batch_size` is the global batch, split evenly over the processes;
BatchNorm becomes synchronised BatchNorm when there is more than one process (see distributed.py);
rank 0 alone writes files and the MLflow run. Launch with

    torchrun --nproc_per_node=N -m densepred.cli train --params P --job J --stage S --out DIR
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from densepred import tracking
from densepred.config import Params, RuntimeCfg, StageCfg
from densepred.engine import distributed as dist_utils
from densepred.engine.build import (
    build_criterion,
    build_model,
    build_train_dataset,
    collate_fn,
    model_config_dict,
)
from densepred.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    capture_rng,
    load_checkpoint,
    load_init_weights,
    restore_rng,
    save_checkpoint,
)
from densepred.engine.distributed import DistEnv
from densepred.engine.optim import build_optimizer, build_scheduler, current_lr, describe_groups
from densepred.engine.progress import Progress
from densepred.engine.runtime import autocast_context, job_settings, to_device, uses_channels_last
from densepred.engine.sampler import StepSampler, StreamDataset
from densepred.errors import Stopped
from densepred.io import atomic_write_json, atomic_write_text, naming_disk_full
from densepred.tasks import dataset_info

STAGES = ("pretrain", "finetune")
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


class NonFiniteLossError(FloatingPointError, ValueError):
    """A loss term or the gradient norm became NaN/inf; the message names the step and the terms.

    A ValueError too, so the CLI reports it as one clear line (exit status 2).
    """


class TrainingInterrupted(Stopped):
    """SIGTERM received: a checkpoint was written; exit status 143, the message names the checkpoint."""


# -------------------------------------------------------------------------------------------- set-up


def stage_config(params: Params, job: str, stage: str) -> StageCfg:
    """`params.jobs[job].<stage>`, with an error when the job has no such stage."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    cfg = getattr(params.job(job), stage)
    if cfg is None:
        raise ValueError(
            f"job {job!r} has no {stage} stage (jobs.{job}.{stage} is null in {params.profile!r})"
        )
    return cfg


def checkpoint_meta(params: Params, job: str, stage: str, init: Path | None) -> dict[str, Any]:
    """What a checkpoint records about its run (enough to rebuild the model, and provenance)."""
    cfg = params.job(job)
    scfg = stage_config(params, job, stage)
    info = dataset_info(scfg.dataset)
    return {
        "job": job,
        "stage": stage,
        "model": model_config_dict(cfg.model),
        "tasks": list(cfg.tasks),
        "dataset": scfg.dataset,
        "num_classes": info.num_classes,
        "max_depth": info.max_depth,
        "profile": params.profile,
        "seed": params.seed,
        "iterations": scfg.iterations,
        "batch_size": scfg.batch_size,
        "init": str(init) if init else None,
        "settings_hash": settings_hash(params, job, stage, init),
        "git_commit": tracking.git_commit(),
    }


def settings_hash(params: Params, job: str, stage: str, init: Path | None) -> str:
    """Fingerprint of everything that determines a stage's result: the job's model and tasks, the
    stage settings, the seed, and the content of the --init checkpoint. A run folder whose
    checkpoints carry another fingerprint is stale (its params changed) and is retrained."""
    cfg = params.job(job)
    settings = {
        "model": cfg.model.model_dump(mode="json"),
        "tasks": list(cfg.tasks),
        "stage": stage_config(params, job, stage).model_dump(mode="json"),
        "seed": params.seed,
        "init": _file_digest(Path(init)) if init else None,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Keys that must agree between a run folder's checkpoint and the command resuming it.
RESUME_KEYS = ("job", "stage", "model", "tasks", "dataset", "seed", "iterations", "batch_size")
# Keys naming what a run folder is for: a mismatch means the wrong folder, never reused or replaced.
OWNER_KEYS = ("job", "stage")


def check_resumable(ckpt_meta: Mapping[str, Any], meta: Mapping[str, Any], path: Path) -> None:
    """Refuse to resume from a checkpoint of a different run (another job, model, seed, schedule...)."""
    diffs = [k for k in RESUME_KEYS if ckpt_meta.get(k) != meta.get(k)]
    if diffs:
        detail = "; ".join(f"{k}: checkpoint {ckpt_meta.get(k)!r} vs now {meta.get(k)!r}" for k in diffs)
        raise ValueError(
            f"{path} belongs to a different run ({detail}); use another --out folder or delete it"
        )


def is_stale(ckpt_meta: Mapping[str, Any], meta: Mapping[str, Any], path: Path) -> bool:
    """True when `path` is this job's and stage's checkpoint but from other settings (edited params,
    new --init weights), so it must be retrained; raises when it belongs to another job or stage."""
    wrong = [k for k in OWNER_KEYS if ckpt_meta.get(k) != meta.get(k)]
    if wrong:
        detail = "; ".join(f"{k}: checkpoint {ckpt_meta.get(k)!r} vs now {meta.get(k)!r}" for k in wrong)
        raise ValueError(f"{path} belongs to another run ({detail}); use another --out folder")
    return ckpt_meta.get("settings_hash") != meta.get("settings_hash")


def discard_stale(out: Path, meta: Mapping[str, Any], job: str, stage: str) -> None:
    """Remove final.pt / last.pt written under other settings, so the stage is retrained from scratch.

    Snakemake deletes a stale final.pt itself, DVC (persist: true) does not; neither knows last.pt."""
    for path in (out / "final.pt", out / "checkpoints" / "last.pt"):
        if path.exists() and is_stale(load_checkpoint(path)["meta"], meta, path):
            print(f"[{job}/{stage}] {path} was written with other settings: retraining", flush=True)
            path.unlink()


def resolved_config(params: Params, job: str, stage: str, init: Path | None, env: DistEnv) -> dict[str, Any]:
    """The content of out/config.yaml."""
    cfg = params.job(job)
    scfg = stage_config(params, job, stage)
    return {
        "profile": params.profile,
        "seed": params.seed,
        "job": job,
        "stage": stage,
        "git_commit": tracking.git_commit(),
        "init": str(init) if init else None,
        "world_size": env.world_size,
        "device": str(env.device),
        "dataset": params.datasets[scfg.dataset].model_dump(mode="json"),
        "runtime": params.runtime.model_dump(mode="json"),
        "job_config": cfg.model_dump(mode="json"),
    }


# ------------------------------------------------------------------------------------------- signals


@dataclass
class StopFlag:
    """Set by SIGTERM; the loop checks it after each step."""

    received: bool = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        """Install the SIGTERM handler for the duration of the block (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum: int, frame: Any) -> None:
            self.received = True

        previous = signal.signal(signal.SIGTERM, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------------------------- logs


@dataclass
class TrainLog:
    """train_log.csv: appended row by row; on resume, rows past the checkpoint's step are dropped."""

    path: Path
    fields: list[str] = field(default_factory=list)

    def truncate_after(self, step: int) -> None:
        """Keep the header and the rows with step <= `step` (rows of steps that will be redone go)."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        keep = [r for r in rows if r.get("step", "").isdigit() and int(r["step"]) <= step and None not in r]
        if not keep:
            self.path.unlink()
            return
        self.fields = list(keep[0].keys())
        with open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(keep)

    def append(self, row: Mapping[str, float | int]) -> None:
        new = not self.path.exists()
        if new:
            self.fields = list(row.keys())
        elif not self.fields:
            with open(self.path, newline="") as handle:
                self.fields = next(csv.reader(handle), [])
        missing = [k for k in row if k not in self.fields]
        if missing:
            raise ValueError(f"{self.path}: loss terms {missing} appeared mid-run (columns {self.fields})")
        with naming_disk_full(self.path), open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields)
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k, "")) for k in self.fields})
            handle.flush()


def _fmt(value: Any) -> Any:
    return f"{value:.8g}" if isinstance(value, float) else value


class Window:
    """Running sums of loss terms between two log steps, averaged over steps and ranks."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.grad_norm = 0.0
        self.t0 = time.perf_counter()

    def add(self, losses: Mapping[str, float], grad_norm: float) -> None:
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.grad_norm += grad_norm
        self.steps += 1

    def _reduced(self, env: DistEnv) -> tuple[list[str], torch.Tensor]:
        """Sorted term names and their sums over ranks (grad norm last); a collective call."""
        keys = sorted(self.sums)
        t = torch.tensor([self.sums[k] for k in keys] + [self.grad_norm], dtype=torch.float64)
        return keys, dist_utils.all_reduce_sum(env, t)

    def means(self, env: DistEnv) -> dict[str, float]:
        keys, t = self._reduced(env)
        t /= max(1, self.steps) * env.world_size
        means = {k: float(v) for k, v in zip(keys, t[:-1].tolist())}
        means["grad_norm"] = float(t[-1])
        return means

    def state(self, env: DistEnv) -> dict[str, Any]:
        """The window so far, summed over ranks, for the checkpoint (a resumed run logs the same means)."""
        keys, t = self._reduced(env)
        return {"keys": keys, "sums": t, "steps": self.steps}

    @classmethod
    def restore(cls, state: Mapping[str, Any] | None, env: DistEnv) -> Window:
        """A window continuing `state`; rank 0 holds the (already rank-summed) sums, others zeros."""
        window = cls()
        if not state:
            return window
        sums = state["sums"].tolist() if env.is_main else [0.0] * (len(state["keys"]) + 1)
        window.sums = dict(zip(state["keys"], sums[:-1]))
        window.grad_norm = sums[-1]
        window.steps = int(state["steps"])
        return window


# ------------------------------------------------------------------------------------------- training


@dataclass
class Trainer:
    """Everything one training stage holds; `run_loop` trains from `step` to the stage's iterations."""

    params: Params
    job: str
    stage: str
    out: Path
    env: DistEnv
    model: nn.Module  # possibly compiled and DDP-wrapped
    raw_model: nn.Module  # the plain module whose state_dict is saved
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: DataLoader
    meta: dict[str, Any]
    step: int
    run: tracking.NullRun = field(default_factory=tracking.NullRun)
    progress: Progress | None = None
    last_lr: float = 0.0  # the learning rate the latest step used
    window: Window = field(default_factory=Window)  # loss sums since the last log row

    @property
    def cfg(self) -> StageCfg:
        return stage_config(self.params, self.job, self.stage)

    @property
    def last_path(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    def save_last(self) -> None:
        """Write the resumable checkpoint (rank 0), then wait for it on every rank."""
        window = self.window.state(self.env)
        if self.env.is_main:
            run_info = {"run_id": self.run.run_id} if self.run.run_id else {}
            save_checkpoint(
                self.last_path,
                {
                    "format": CHECKPOINT_FORMAT,
                    "kind": "last",
                    "step": self.step,
                    "model": self.raw_model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "rng": capture_rng(),
                    "meta": self.meta,
                    "tracking": run_info,
                    "log_window": window,
                },
            )
        dist_utils.barrier(self.env)

    def save_final(self) -> Path:
        path = self.out / "final.pt"
        if self.env.is_main:
            payload = {
                "format": CHECKPOINT_FORMAT,
                "kind": "final",
                "step": self.step,
                "model": self.raw_model.state_dict(),
                "meta": self.meta,
            }
            save_checkpoint(path, payload)
        dist_utils.barrier(self.env)
        return path

    def train_step(self, batch: dict[str, Any]) -> tuple[dict[str, float], float]:
        """One optimiser step; returns the loss terms as floats and the gradient norm."""
        cfg, runtime = self.cfg, self.params.runtime
        batch = to_device(batch, self.env.device, uses_channels_last(runtime, self.env.device))
        with autocast_context(runtime, self.env.device):
            outputs = self.model(batch["image"])
        losses = self.criterion(outputs, batch)
        values = check_finite_losses(self.env, losses, self.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), max_norm))
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(
                f"step {self.step + 1}: gradient norm is {grad_norm} although every loss term is finite "
                f"({_format_terms(values)}); the last good checkpoint is {self.last_path}"
            )
        self.last_lr = current_lr(self.optimizer)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return values, grad_norm

    def run_loop(self, stop: StopFlag) -> None:
        cfg = self.cfg
        log = TrainLog(self.out / "train_log.csv")
        self.model.train()
        for batch in self.loader:
            values, grad_norm = self.train_step(batch)
            self.window.add(values, grad_norm)
            if self.step % cfg.log_every == 0 or self.step == cfg.iterations:
                self._log(log, self.window)
                self.window = Window()
            stopping = dist_utils.any_rank(self.env, stop.received)
            if stopping or (self.step % cfg.checkpoint_every == 0 and self.step < cfg.iterations):
                self.save_last()
            if stopping:
                raise TrainingInterrupted(
                    signal.SIGTERM,
                    f"stopped by SIGTERM at step {self.step}; checkpoint saved at {self.last_path}; "
                    "rerun the same command to resume",
                )
        if self.step != cfg.iterations:
            raise RuntimeError(f"data loader stopped at step {self.step} of {cfg.iterations}")

    def _log(self, log: TrainLog, window: Window) -> None:
        means = window.means(self.env)
        elapsed = time.perf_counter() - window.t0
        images_per_s = window.steps * self.cfg.batch_size / max(elapsed, 1e-9)
        lr = self.last_lr
        row = {"step": self.step, "lr": lr, "images_per_s": images_per_s, "grad_norm": means.pop("grad_norm")}
        row.update({k: means[k] for k in sorted(means, key=lambda k: (k != "total", k))})
        if self.env.is_main:
            log.append(row)
            self.run.log_metrics({k: float(v) for k, v in row.items() if k != "step"}, step=self.step)
        if self.progress is not None:
            self.progress.update(self.step, means.get("total", float("nan")), lr, images_per_s)


def check_finite_losses(env: DistEnv, losses: Mapping[str, torch.Tensor], step: int) -> dict[str, float]:
    """The loss terms as floats; raises NonFiniteLossError (on every rank) if any is NaN/inf on any rank."""
    if "total" not in losses:
        raise ValueError(f"the criterion returned no 'total' entry (keys {sorted(losses)})")
    keys = list(losses)
    stacked = torch.stack([losses[k].detach().float().reshape(()) for k in keys])
    values = dict(zip(keys, stacked.tolist()))  # one device sync for every term
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if dist_utils.any_rank(env, bool(bad)):
        per_rank = dist_utils.gather_objects(env, bad)
        parts = []
        for rank, terms in enumerate(per_rank):
            if terms:
                where = f" on rank {rank}" if env.distributed else ""
                parts.append(f"{_format_terms(terms)}{where}")
        raise NonFiniteLossError(
            f"step {step}: non-finite loss term(s) {'; '.join(parts)}; training stopped before the "
            "optimiser step and no checkpoint was written after it"
        )
    return values


def _format_terms(terms: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(terms.items()))


# ---------------------------------------------------------------------------------------- train_job


def train_job(params: Params, job: str, stage: str, out: Path, init: Path | None = None) -> Path:
    """Train stage `stage` of job `job` into run folder `out`; returns `out/final.pt`.

    Resumes from `out/checkpoints/last.pt` when present; does nothing when `out/final.pt` exists.
    `init` (a checkpoint, e.g. the pretraining's final.pt) initialises the model weights of a fresh
    run; shape-mismatched tensors are re-initialised (see `load_init_weights`).
    """
    out = Path(out)
    stage_config(params, job, stage)
    if init is not None and not Path(init).is_file():
        raise FileNotFoundError(f"--init checkpoint not found: {init}")
    discard_stale(out, checkpoint_meta(params, job, stage, init), job, stage)
    final = out / "final.pt"
    if final.exists():
        print(f"[{job}/{stage}] {final} exists with the same settings: stage already complete", flush=True)
        return final
    env = dist_utils.setup(params.runtime.device)
    try:
        with job_settings(params.runtime, env.device, params.seed):
            return _train(params, job, stage, out, init, env)
    finally:
        dist_utils.teardown(env)


def _train(params: Params, job: str, stage: str, out: Path, init: Path | None, env: DistEnv) -> Path:
    cfg, scfg, runtime = params.job(job), stage_config(params, job, stage), params.runtime
    meta = checkpoint_meta(params, job, stage, init)
    progress = Progress(scfg.iterations, 0, f"{job}/{stage}", every=scfg.log_every, enabled=env.is_main)
    last_path = out / "checkpoints" / "last.pt"
    resume = load_checkpoint(last_path) if last_path.exists() else None
    if resume is not None:
        check_resumable(resume["meta"], meta, last_path)

    dataset = build_train_dataset(params, scfg, list(cfg.tasks))
    model = build_model(cfg.model, list(cfg.tasks), scfg.dataset)
    if resume is not None:
        model.load_state_dict(resume["model"])
        progress.write(f"resuming from {last_path} at step {resume['step']}")
    elif init is not None:
        report = load_init_weights(model, Path(init))
        progress.write(report.summary())
        if env.is_main:
            atomic_write_json(out / "init_report.json", report.to_dict())
    model = prepare_model(model, runtime, env)
    optimizer = build_optimizer(model, scfg.optimizer)
    scheduler = build_scheduler(optimizer, scfg.schedule, scfg.iterations)
    step = 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        step = int(resume["step"])
    for line in describe_groups(optimizer):
        progress.write(line)
    criterion = build_criterion(cfg, scfg).to(env.device)
    loader = build_loader(dataset, scfg, params, env, step)
    wrapped = wrap_model(model, runtime, env)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(resolved_config(params, job, stage, init, env)))
        TrainLog(out / "train_log.csv").truncate_after(step)
    progress.start = step
    trainer = Trainer(
        params=params,
        job=job,
        stage=stage,
        out=out,
        env=env,
        model=wrapped,
        raw_model=model,
        criterion=criterion,
        optimizer=optimizer,
        scheduler=scheduler,
        loader=loader,
        meta=meta,
        step=step,
        progress=progress,
        window=Window.restore((resume or {}).get("log_window"), env),
    )
    run_id = (resume or {}).get("tracking", {}).get("run_id") or _previous_run_id(out)
    with tracking.start_run(params, job, stage, "train", run_id=run_id, enabled=env.is_main) as run:
        trainer.run = run
        if env.is_main and run.run_id:
            atomic_write_json(
                out / "tracking.json", {"run_id": run.run_id, "uri": tracking.tracking_uri(params)}
            )
        if resume is not None:
            restore_rng(resume["rng"])
        with StopFlag().installed() as stop:
            try:
                trainer.run_loop(stop)
            finally:
                progress.close()
        for name in ("config.yaml", "train_log.csv", "init_report.json"):
            if env.is_main and (out / name).exists():
                run.log_artifact(out / name)
        final = trainer.save_final()
    progress.write(f"wrote {final}")
    return final


def _previous_run_id(out: Path) -> str | None:
    """The MLflow run of an earlier attempt at this stage (interrupted before its first checkpoint)."""
    path = out / "tracking.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("run_id")
    except (ValueError, OSError):
        return None


def prepare_model(model: nn.Module, runtime: RuntimeCfg, env: DistEnv) -> nn.Module:
    """Device, synchronised BatchNorm (world size > 1), channels_last (CUDA)."""
    if env.distributed:
        model = dist_utils.convert_sync_batchnorm(model, env.device)
    model = model.to(env.device)
    if uses_channels_last(runtime, env.device):
        model = model.to(memory_format=torch.channels_last)
    return model


def wrap_model(model: nn.Module, runtime: RuntimeCfg, env: DistEnv) -> nn.Module:
    """torch.compile (optional), then DDP outermost (timm's order), when there are several processes.

    DDP runs with `find_unused_parameters=False`: every model's criterion uses every parameter in
    each training step (checked for all registered models), which saves a graph traversal per step.
    """
    wrapped = torch.compile(model) if runtime.compile else model
    if env.distributed:
        device_ids = [env.local_rank] if env.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(
            wrapped, device_ids=device_ids, find_unused_parameters=False
        )
    return wrapped


def build_loader(dataset: Any, scfg: StageCfg, params: Params, env: DistEnv, start_step: int) -> DataLoader:
    """The rank's loader for steps start_step .. iterations-1 (see engine/sampler.py).

    A private generator keeps DataLoader's worker seeding off the global RNG, whose state is part of
    the checkpoint (a resumed run must draw the same dropout masks as an uninterrupted one).
    """
    sampler = StepSampler(scfg.batch_size, start_step, scfg.iterations, env.rank, env.world_size)
    workers = params.runtime.num_workers
    return DataLoader(
        StreamDataset(dataset, params.seed),
        batch_size=sampler.local_batch,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn(),
        pin_memory=env.device.type == "cuda",
        generator=torch.Generator().manual_seed(params.seed),
        persistent_workers=False,
    )


__all__ = ["NonFiniteLossError", "train_job"]
