"""`densepred train`: one stage (Taskonomy pretraining or NYUD-v2 finetuning) of one job.

`train_job(run)` takes the stage's `StageRun` (stage_run.py: job and stage settings, runtime, seed,
data, output folder, --init), resolved once by the CLI, the pipeline or the sweep runner; nothing
here looks a job or a stage up in the params again. File names come from densepred.paths.

Outputs in the run folder `out/` (`run.out`):

    checkpoints/last.pt   rolling, resumable checkpoint (model, optimiser, scheduler, RNG, step),
                          rewritten atomically every `checkpoint_every` steps and on SIGTERM;
                          removed once final.pt is written (`runtime.keep_last_checkpoint` keeps it)
    final.pt              the stage's output (model weights + meta); written last, atomically, so
                          its existence means the stage is complete
    config.yaml           resolved job config, profile, seed, git commit, world size
    train_log.csv         one row per log step: step, lr, images/s, grad norm, every loss term
    init_report.json      with --init: which keys were loaded, reset (shape differs), missing
    tracking.json         the MLflow run id and the stage's fingerprint: a resumed stage (same
                          settings) continues that run, a retrain (new settings) starts a new one
    tracking_pending.jsonl  only while the MLflow store was unreachable: what the run would have
                          logged; `densepred sync-tracking` (or the next run) uploads it

Rerunning the same command resumes: with `final.pt` present nothing is done; with
`checkpoints/last.pt` present training continues from it (`TrainState.load`, engine/train_state.py,
which also holds the checkpoints' meta and the staleness rules). The data order is a function of
(seed, step) (engine/sampler.py), the RNG states are restored, and the schedule is a function of
the step, so on CPU the final weights are bitwise equal to those of an uninterrupted run.

Staleness: both checkpoints carry the stage's fingerprint (`meta.settings_hash` =
`StageRun.fingerprint(init identity)`); one with another fingerprint (edited settings, other --init
weights) is discarded and the stage retrained. The --init identity is the init checkpoint's own
fingerprint plus the digest of its weights (`meta.weights_digest`, stored in every final.pt; see
`checkpoint.init_identity`), so rewriting it with equal weights and another git commit in its meta
retrains nothing.

Failures: a NaN/inf loss term (or gradient norm) raises `NonFiniteLossError` naming the step and the
terms, before the optimiser step, and no checkpoint is written after it, so `last.pt` stays the
last good state. SIGTERM writes a checkpoint at the end of the current step and exits with status 143.
What can refuse the stage before its work (the --init and resumable checkpoints, the prepared data's
index and shard sizes) is checked before its MLflow run opens, so such a refusal leaves no run; a run
that fails later gets the CLI's error line and the stage log (densepred/run_failure.py).

Precision and speed: bf16 autocast on CUDA only (`runtime.amp`; the criteria compute in fp32),
channels_last on CUDA (`runtime.channels_last`), optional `torch.compile` (`runtime.compile`).
DDP under torchrun: `stage.batch_size` is the global batch (the paper's), split evenly over the
processes and, on each, into `runtime.accumulation_steps` micro-batches (or as many as
`runtime.max_micro_batch` needs): global batch = micro-batch x accumulation steps x world size
(engine/accumulation.py, which also documents the BatchNorm departure of accumulation). BatchNorm
becomes synchronised BatchNorm when there is more than one process (see distributed.py); rank 0
alone writes files and the MLflow run. The trainer only reads RANK / WORLD_SIZE / LOCAL_RANK: the
launch (torchrun on one node, srun + torchrun per node on several) is the pipeline's (launch.py),
which starts a stage as

    torchrun --standalone --nproc-per-node N -m densepred.cli train --params P --job J --stage S --out DIR
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from densepred import paths, tracking
from densepred.config import RuntimeCfg
from densepred.engine import distributed as dist_utils
from densepred.engine.accumulation import BatchPlan, accumulate_gradients, grouped
from densepred.engine.build import (
    build_criterion,
    build_model,
    build_train_dataset,
    collate_fn,
    prepared_root,
)
from densepred.engine.checkpoint import load_init_weights
from densepred.engine.distributed import DistEnv
from densepred.engine.memory import preflight
from densepred.engine.optim import build_optimizer, build_scheduler, current_lr, describe_groups
from densepred.engine.progress import Progress
from densepred.engine.runtime import autocast_context, job_settings, to_device, uses_channels_last
from densepred.engine.sampler import StepSampler, StreamDataset
from densepred.engine.train_state import TrainState, checkpoint_meta, discard_stale, read_resumable
from densepred.engine.trainlog import TrainLog, Window
from densepred.errors import Stopped
from densepred.io import atomic_write_json, atomic_write_text
from densepred.stage_run import StageRun


class NonFiniteLossError(FloatingPointError, ValueError):
    """A loss term or the gradient norm became NaN/inf; the message names the step and the terms.

    A ValueError too, so the CLI reports it as one clear line (exit status 2).
    """


class TrainingInterrupted(Stopped):
    """SIGTERM received: a checkpoint was written; exit status 143, the message names the checkpoint."""


# -------------------------------------------------------------------------------------------- set-up


def resolved_config(run: StageRun, env: DistEnv) -> dict[str, Any]:
    """The content of out/config.yaml."""
    return {
        "profile": run.profile,
        "seed": run.seed,
        "job": run.job,
        "stage": run.stage,
        "git_commit": tracking.git_commit(),
        "init": str(run.init) if run.init else None,
        "world_size": env.world_size,
        "batch_plan": vars(run.batch_plan(env.world_size)),
        "device": str(env.device),
        "dataset": run.data.model_dump(mode="json"),
        "runtime": run.runtime.model_dump(mode="json"),
        "job_config": run.job_cfg.model_dump(mode="json"),
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


# ------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class LoopSettings:
    """What the loop reads of the stage's settings and runtime, resolved once by `of`."""

    iterations: int
    log_every: int
    checkpoint_every: int
    grad_clip: float | None
    plan: BatchPlan  # global batch = micro-batch x accumulation steps x world size
    channels_last: bool
    autocast: Callable[[], contextlib.AbstractContextManager]  # bf16 on CUDA with runtime.amp

    @classmethod
    def of(cls, run: StageRun, env: DistEnv, plan: BatchPlan) -> LoopSettings:
        settings = run.train_settings
        return cls(
            iterations=settings.iterations,
            log_every=settings.log_every,
            checkpoint_every=settings.checkpoint_every,
            grad_clip=settings.grad_clip,
            plan=plan,
            channels_last=uses_channels_last(run.runtime, env.device),
            autocast=functools.partial(autocast_context, run.runtime, env.device),
        )


@dataclass(frozen=True)
class TrainOutputs:
    """The files the loop writes in the run folder (densepred.paths)."""

    last: Path  # checkpoints/last.pt
    final: Path  # final.pt
    train_log: Path  # train_log.csv
    keep_last: bool  # runtime.keep_last_checkpoint: last.pt stays beside final.pt

    @classmethod
    def of(cls, run: StageRun) -> TrainOutputs:
        return cls(
            last=paths.last_checkpoint(run.out),
            final=paths.final_checkpoint(run.out),
            train_log=paths.train_log(run.out),
            keep_last=run.runtime.keep_last_checkpoint,
        )


@dataclass
class Trainer:
    """One training stage's loop: the objects built for it, its resolved settings and outputs, the
    checkpoint meta and the `TrainState`; `run_loop` trains from `state.step` to the iterations."""

    settings: LoopSettings
    outputs: TrainOutputs
    meta: dict[str, Any]  # the checkpoints' meta (`checkpoint_meta`)
    env: DistEnv
    model: nn.Module  # possibly compiled and DDP-wrapped around `state.model`
    criterion: nn.Module
    loader: DataLoader
    state: TrainState
    tracker: tracking.Run = field(default_factory=tracking.DisabledRun)  # the MLflow run
    progress: Progress | None = None
    last_lr: float = 0.0  # the learning rate the latest step used
    weights_digest: str = ""  # of final.pt's weights, once written (rank 0)

    def save_last(self) -> None:
        """Write the resumable checkpoint (rank 0), then wait for it on every rank."""
        self.state.save_last(self.outputs.last, self.meta, self.env)
        dist_utils.barrier(self.env)

    def save_final(self) -> Path:
        """Write final.pt (rank 0), then wait for it on every rank."""
        if self.env.is_main:
            self.weights_digest = self.state.save_final(self.outputs.final, self.meta)
            if not self.outputs.keep_last:
                # final.pt is the stage's output and a finished stage never resumes, so the resumable
                # checkpoint (weights + optimiser state, 3x final.pt with AdamW) is only disk use
                self.outputs.last.unlink(missing_ok=True)
        dist_utils.barrier(self.env)
        return self.outputs.final

    def micro_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Forward one micro-batch and return its loss terms (engine/accumulation.py calls backward)."""
        batch = to_device(batch, self.env.device, self.settings.channels_last)
        with self.settings.autocast():
            outputs = self.model(batch["image"])
        return self.criterion(outputs, batch)

    def train_step(self, micro_batches: list[dict[str, Any]]) -> tuple[dict[str, float], float]:
        """One optimiser step over the step's micro-batches (gradient accumulation, see
        engine/accumulation.py); returns the loss terms (means over the micro-batches) as floats and
        the gradient norm. A non-finite term stops before the optimiser step."""
        state = self.state
        state.optimizer.zero_grad(set_to_none=True)
        losses = accumulate_gradients(self.model, micro_batches, self.micro_losses)
        values = check_finite_losses(self.env, losses, state.step + 1)
        max_norm = self.settings.grad_clip if self.settings.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(state.model.parameters(), max_norm))
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(
                f"step {state.step + 1}: gradient norm is {grad_norm} although every loss term is finite "
                f"({_format_terms(values)}); the last good checkpoint is {self.outputs.last}"
            )
        self.last_lr = current_lr(state.optimizer)
        state.optimizer.step()
        state.scheduler.step()
        state.step += 1
        return values, grad_norm

    def run_loop(self, stop: StopFlag) -> None:
        settings, state = self.settings, self.state
        log = TrainLog(self.outputs.train_log)
        state.begin()
        self.model.train()
        for micro_batches in grouped(self.loader, settings.plan.accumulation):
            values, grad_norm = self.train_step(micro_batches)
            state.window.add(values, grad_norm)
            if state.step % settings.log_every == 0 or state.step == settings.iterations:
                self._log(log, state.window)
                state.window = Window()
            stopping = dist_utils.any_rank(self.env, stop.received)
            if stopping or (state.step % settings.checkpoint_every == 0 and state.step < settings.iterations):
                self.save_last()
            if stopping:
                raise TrainingInterrupted(
                    signal.SIGTERM,
                    f"stopped by SIGTERM at step {state.step}; checkpoint saved at {self.outputs.last}; "
                    "rerun the same command to resume",
                )
        if state.step != settings.iterations:
            raise RuntimeError(f"data loader stopped at step {state.step} of {settings.iterations}")

    def _log(self, log: TrainLog, window: Window) -> None:
        means = window.means(self.env)
        elapsed = time.perf_counter() - window.t0
        images_per_s = window.steps * self.settings.plan.global_batch / max(elapsed, 1e-9)
        lr, step = self.last_lr, self.state.step
        row = {"step": step, "lr": lr, "images_per_s": images_per_s, "grad_norm": means.pop("grad_norm")}
        row.update({k: means[k] for k in sorted(means, key=lambda k: (k != "total", k))})
        if self.env.is_main:
            log.append(row)
            self.tracker.log_metrics({k: float(v) for k, v in row.items() if k != "step"}, step=step)
        if self.progress is not None:
            self.progress.update(step, means.get("total", float("nan")), lr, images_per_s)


def check_finite_losses(env: DistEnv, losses: Mapping[str, torch.Tensor], step: int) -> dict[str, float]:
    """The loss terms as floats; raises NonFiniteLossError (on every rank) if any is NaN/inf on any rank."""
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


def train_job(run: StageRun, *, nesting: tracking.Nesting | None = None) -> Path:
    """Train the stage `run` (StageRun.train) into its run folder `run.out`; returns its final.pt.

    Resumes from `checkpoints/last.pt` when present; does nothing when `final.pt` exists with the
    same fingerprint. `run.init` (a checkpoint, e.g. the pretraining's final.pt) initialises the
    model weights of a fresh run; shape-mismatched tensors are re-initialised (`load_init_weights`).
    `nesting` places the stage's MLflow run under a sweep trial's run (tune.py's `run_trial`).
    """
    if run.init is not None and not run.init.is_file():
        raise FileNotFoundError(f"--init checkpoint not found: {run.init}")
    meta = checkpoint_meta(run)
    discard_stale(run, meta)
    final = paths.final_checkpoint(run.out)
    if final.exists():
        print(
            f"[{run.job}/{run.stage}] {final} exists with the same settings: stage already complete",
            flush=True,
        )
        return final
    env = dist_utils.setup(run.runtime.device)
    try:
        with job_settings(run.runtime, env.device, run.seed):
            return _train(run, meta, env, nesting)
    finally:
        dist_utils.teardown(env)


def _train(run: StageRun, meta: dict[str, Any], env: DistEnv, nesting: tracking.Nesting | None) -> Path:
    settings, out = run.train_settings, run.out
    progress = Progress(
        settings.iterations, 0, f"{run.job}/{run.stage}", every=settings.log_every, enabled=env.is_main
    )
    trainer = build_trainer(run, meta, env, progress)
    uri = tracking.tracking_uri(run.tracking)
    run_id = trainer.state.run_id or _previous_run_id(out, meta, uri)
    subject = tracking.RunSubject.of_stage(run)
    journal = paths.tracking_journal(out)
    with tracking.start_run(
        subject, "train", journal=journal, run_id=run_id, enabled=env.is_main, nesting=nesting
    ) as tracker:
        trainer.tracker = tracker
        trainer.state.run_id = tracker.run_id
        if env.is_main and tracker.run_id:
            record = {"run_id": tracker.run_id, "uri": uri, "settings_hash": meta["settings_hash"]}
            atomic_write_json(paths.tracking_record(out), record)
            tracker.set_tags({"settings_hash": meta["settings_hash"], "init": str(run.init or "")})
            tracker.log_input(
                tracking.prepared_dataset(run.dataset, prepared_root(run.data, run.dataset), "train")
            )
        with StopFlag().installed() as stop:
            try:
                trainer.run_loop(stop)
            finally:
                progress.close()
        for path in (paths.config_file(out), paths.train_log(out), paths.init_report(out)):
            if env.is_main and path.exists():
                tracker.log_artifact(path)
        final = trainer.save_final()
        tracker.set_tags({"weights_digest": trainer.weights_digest})
    progress.write(f"wrote {final}")
    return final


def build_trainer(run: StageRun, meta: dict[str, Any], env: DistEnv, progress: Progress) -> Trainer:
    """Everything the loop needs, resolved from `run` once: the batch plan (checked against the
    launch and the memory), the state (fresh, from --init, or resumed from last.pt), the criterion,
    the loader from the state's step; writes config.yaml and cuts train_log.csv back to that step."""
    plan = run.batch_plan(env.world_size)
    check_launch_matches(run, plan, env.world_size)
    progress.write(plan.describe())
    fits = preflight(run, env.device, plan.micro_batch, plan.global_batch)  # before any step
    if fits:
        progress.write(fits)
    outputs = TrainOutputs.of(run)
    resume = read_resumable(outputs.last, meta)
    dataset = build_train_dataset(run)
    state = initial_state(run, env, resume, progress)
    for line in describe_groups(state.optimizer):
        progress.write(line)
    criterion = build_criterion(run.job_cfg, run.train_settings).to(env.device)
    loader = build_loader(dataset, run, env, state.step, plan)
    wrapped = wrap_model(state.model, run.runtime, env)
    if env.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(paths.config_file(run.out), yaml.safe_dump(resolved_config(run, env)))
        TrainLog(outputs.train_log).truncate_after(state.step)
    progress.start = state.step
    return Trainer(
        settings=LoopSettings.of(run, env, plan),
        outputs=outputs,
        meta=meta,
        env=env,
        model=wrapped,
        criterion=criterion,
        loader=loader,
        state=state,
        progress=progress,
    )


def initial_state(
    run: StageRun, env: DistEnv, resume: Mapping[str, Any] | None, progress: Progress
) -> TrainState:
    """The model (on its device, --init weights loaded into a fresh run), optimiser and schedule,
    continued from the resumable checkpoint `resume` when there is one."""
    settings = run.train_settings
    model = build_model(run.job_cfg.model, list(run.job_cfg.tasks), run.dataset)
    if resume is None and run.init is not None:
        report = load_init_weights(model, run.init)
        progress.write(report.summary())
        if env.is_main:
            atomic_write_json(paths.init_report(run.out), report.to_dict())
    model = prepare_model(model, run.runtime, env)
    optimizer = build_optimizer(model, settings.optimizer)
    state = TrainState(model, optimizer, build_scheduler(optimizer, settings.schedule, settings.iterations))
    if resume is not None:
        state.load(resume, env)
        progress.write(f"resuming from {paths.last_checkpoint(run.out)} at step {state.step}")
    return state


def _previous_run_id(out: Path, meta: Mapping[str, Any], uri: str) -> str | None:
    """The MLflow run of an earlier attempt at this stage with the same settings and store
    (interrupted before its first checkpoint); None for a retrain, whose run is a new one."""
    path = paths.tracking_record(out)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (ValueError, OSError):
        return None
    if record.get("settings_hash") != meta.get("settings_hash") or record.get("uri") != uri:
        return None
    return record.get("run_id")


def check_launch_matches(run: StageRun, plan: BatchPlan, world_size: int) -> None:
    """Refuse a launch whose process count gives other accumulation steps than the runtime settings
    (which the stage's identity and its checkpoints record, stage_run.py): the record would lie."""
    expected = run.batch_plan()
    if plan.accumulation != expected.accumulation:
        raise ValueError(
            f"{run.job}/{run.stage}: launched with {world_size} process(es), but the runtime settings "
            f"describe {run.runtime.world_size} ({expected.accumulation} accumulation step(s), not "
            f"{plan.accumulation}); set runtime.gpus_per_job / runtime.procs_per_job to match the launch"
        )


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


def build_loader(dataset: Any, run: StageRun, env: DistEnv, start_step: int, plan: BatchPlan) -> DataLoader:
    """The rank's loader for steps start_step .. iterations-1 (see engine/sampler.py), in
    micro-batches: each step's share of the rank comes as `plan.accumulation` consecutive batches.

    A private generator keeps DataLoader's worker seeding off the global RNG, whose state is part of
    the checkpoint (a resumed run must draw the same dropout masks as an uninterrupted one).
    """
    settings = run.train_settings
    sampler = StepSampler(settings.batch_size, start_step, settings.iterations, env.rank, env.world_size)
    return DataLoader(
        StreamDataset(dataset, run.seed),
        batch_size=plan.micro_batch,
        sampler=sampler,
        num_workers=run.runtime.num_workers,
        collate_fn=collate_fn(),
        pin_memory=env.device.type == "cuda",
        generator=torch.Generator().manual_seed(run.seed),
        persistent_workers=False,
    )


__all__ = ["NonFiniteLossError", "train_job"]
