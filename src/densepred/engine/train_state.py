"""A training stage's checkpoints: their meta, which ones a run folder may continue, and the state
they save.

`checkpoint_meta(run)` is what both checkpoints record about their stage, with its fingerprint
(`settings_hash`); `discard_stale` removes checkpoints of other settings before a stage starts, and
`read_resumable` reads `checkpoints/last.pt`, refusing one of another run (engine/train.py).

`TrainState` holds the plain model (the module whose state_dict is saved, neither compiled nor
DDP-wrapped), the optimiser, the schedule, the step, the loss window since the last log row
(engine/trainlog.py), the MLflow run id and, after a resume, the RNG states still to restore. A
resumed stage rebuilds the fresh state and calls `load(checkpoint)` once; `save_last` and
`save_final` write the two checkpoints whose layout engine/checkpoint.py documents.

The RNG states are restored by `begin()` when the loop starts, not by `load`: the stage still builds
its criterion, loader and MLflow run between the two, and the states must be those of the
uninterrupted run at its first step, whatever that building draws.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from densepred import paths, tracking
from densepred.engine.build import model_config_dict
from densepred.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    capture_rng,
    init_identity,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    weights_digest,
)
from densepred.engine.distributed import DistEnv
from densepred.engine.trainlog import Window
from densepred.stage_run import StageRun
from densepred.tasks import dataset_info

# -------------------------------------------------------------------------------------------- meta


def checkpoint_meta(run: StageRun) -> dict[str, Any]:
    """What a checkpoint records about its run (enough to rebuild the model, and provenance).

    `settings_hash` is the stage's fingerprint: its resolved identity (`StageRun.identity`) and the
    identity of its --init weights (`checkpoint.init_identity`). A run folder whose checkpoints
    carry another fingerprint is stale (its settings changed) and is retrained.
    """
    settings = run.train_settings
    info = dataset_info(run.dataset)
    return {
        "job": run.job,
        "stage": run.stage,
        "model": model_config_dict(run.job_cfg.model),
        "tasks": list(run.job_cfg.tasks),
        "dataset": run.dataset,
        "num_classes": info.num_classes,
        "max_depth": info.max_depth,
        "profile": run.profile,
        "seed": run.seed,
        "iterations": settings.iterations,
        "batch_size": settings.batch_size,
        "init": str(run.init) if run.init else None,
        "settings_hash": run.fingerprint(init_identity(run.init) if run.init else None),
        "identity": run.identity(),  # what settings_hash hashes, so a difference can be named (records.py)
        "git_commit": tracking.git_commit(),
    }


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


def discard_stale(run: StageRun, meta: Mapping[str, Any]) -> None:
    """Remove final.pt / last.pt written under other settings, so the stage is retrained from scratch.

    Snakemake deletes a stale final.pt itself, DVC (persist: true) does not; neither knows last.pt."""
    for path in (paths.final_checkpoint(run.out), paths.last_checkpoint(run.out)):
        if path.exists() and is_stale(load_checkpoint(path, mmap=True)["meta"], meta, path):
            print(f"[{run.job}/{run.stage}] {path} was written with other settings: retraining", flush=True)
            path.unlink()


def read_resumable(path: Path, meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The resumable checkpoint `path` (None when there is none), refused (`check_resumable`) when
    it belongs to another run."""
    if not path.exists():
        return None
    ckpt = load_checkpoint(path)
    check_resumable(ckpt["meta"], meta, path)
    return ckpt


# ------------------------------------------------------------------------------------------- state


@dataclass
class TrainState:
    """The resumable state of a training stage; `step` optimiser steps are done."""

    model: nn.Module  # the plain module whose state_dict is saved
    optimizer: torch.optim.Optimizer
    scheduler: Any
    step: int = 0
    window: Window = field(default_factory=Window)  # loss sums since the last log row
    run_id: str | None = None  # the MLflow run this stage logs to
    rng: dict[str, Any] | None = None  # RNG states a resumed stage restores at `begin`

    def load(self, ckpt: Mapping[str, Any], env: DistEnv) -> None:
        """Continue from a resumable checkpoint (`kind: last`): weights, optimiser and schedule,
        step, loss window, MLflow run id; the RNG states wait for `begin`."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step = int(ckpt["step"])
        self.window = Window.restore(ckpt.get("log_window"), env)
        self.run_id = ckpt.get("tracking", {}).get("run_id")
        self.rng = ckpt["rng"]

    def begin(self) -> None:
        """Restore the RNG states of a resumed stage (just before its first step)."""
        if self.rng is not None:
            restore_rng(self.rng)
            self.rng = None

    def _header(self, kind: str, weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "kind": kind, "step": self.step, "model": weights}

    def save_last(self, path: Path, meta: Mapping[str, Any], env: DistEnv) -> None:
        """Write the resumable checkpoint (rank 0). Called on every rank: the loss window is summed
        over the ranks first."""
        window = self.window.state(env)
        if not env.is_main:
            return
        save_checkpoint(
            path,
            {
                **self._header("last", self.model.state_dict()),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": capture_rng(),
                "meta": meta,
                "tracking": {"run_id": self.run_id} if self.run_id else {},
                "log_window": window,
            },
        )

    def save_final(self, path: Path, meta: Mapping[str, Any]) -> str:
        """Write final.pt (rank 0 only) with the digest of its weights in the meta (the --init
        identity of a stage started from it); returns that digest."""
        weights = self.model.state_dict()
        digest = weights_digest(weights)
        save_checkpoint(path, {**self._header("final", weights), "meta": {**meta, "weights_digest": digest}})
        return digest
