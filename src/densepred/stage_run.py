"""One stage execution, resolved once from the params.

The CLI, the pipeline (Snakemake rules and DVC stages) and the sweep runner each build one
`StageRun` per stage execution, from the profile, the job name, the stage and the paths, and pass it
down; nothing below them looks a job or a stage up in `Params` again.

`identity()` is what determines a stage's result (model, tasks, the stage's merged settings, seed,
numerics): the pipeline's rule params and the trainer's checkpoint fingerprint are both built from
it, so a rerun is keyed on content, never on a command line, a params file path or a checkout's
location.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from densepred import paths
from densepred.config import DatasetCfg, EvalCfg, JobCfg, Params, RuntimeCfg, StageCfg, TrackingCfg
from densepred.engine.accumulation import BatchPlan, plan_batch
from densepred.records import fingerprint

TRAIN_STAGES = ("pretrain", "finetune")
EVALUATE = "evaluate"
# Runtime settings that can change a result's numbers (the others only place or size the job).
NUMERICS_KEYS = ("device", "amp", "channels_last", "compile", "deterministic", "cpu_kernels")


@dataclass(frozen=True)
class StageRun:
    """Everything one stage execution needs: job and stage settings, runtime, seed, data, paths."""

    profile: str
    job: str
    stage: str  # "pretrain", "finetune" or "evaluate"
    job_cfg: JobCfg
    settings: StageCfg | EvalCfg
    runtime: RuntimeCfg
    seed: int
    dataset: str
    data: DatasetCfg
    tracking: TrackingCfg
    out: Path
    init: Path | None = None  # train: the --init checkpoint; evaluate: the checkpoint evaluated

    @classmethod
    def train(cls, params: Params, job: str, stage: str, out: Path, init: Path | None = None) -> StageRun:
        """A training stage of `job` (`jobs.<job>.<stage>`), with a clear error when it has none."""
        if stage not in TRAIN_STAGES:
            raise ValueError(f"stage must be one of {TRAIN_STAGES}, got {stage!r}")
        job_cfg = params.job(job)
        settings = getattr(job_cfg, stage)
        if settings is None:
            raise ValueError(
                f"job {job!r} has no {stage} stage (jobs.{job}.{stage} is null in {params.profile!r})"
            )
        return cls._build(params, job, stage, job_cfg, settings, settings.dataset, out, init)

    @classmethod
    def evaluate(
        cls, params: Params, job: str, ckpt: Path, out: Path, dataset: str | None = None
    ) -> StageRun:
        """The evaluation of checkpoint `ckpt` of `job` on `dataset` (default: the job's own)."""
        job_cfg = params.job(job)
        settings = job_cfg.evaluate
        name = dataset or settings.dataset
        if name != settings.dataset:
            settings = settings.model_copy(update={"dataset": name})
        return cls._build(params, job, EVALUATE, job_cfg, settings, name, out, ckpt)

    @classmethod
    def _build(
        cls,
        params: Params,
        job: str,
        stage: str,
        job_cfg: JobCfg,
        settings: StageCfg | EvalCfg,
        dataset: str,
        out: Path,
        init: Path | None,
    ) -> StageRun:
        if dataset not in params.datasets:
            raise ValueError(f"profile {params.profile!r} has no `datasets.{dataset}` section")
        return cls(
            profile=params.profile,
            job=job,
            stage=stage,
            job_cfg=job_cfg,
            settings=settings,
            runtime=params.runtime,
            seed=params.seed,
            dataset=dataset,
            data=params.datasets[dataset],
            tracking=params.tracking,
            out=Path(out),
            init=Path(init) if init is not None else None,
        )

    @property
    def train_settings(self) -> StageCfg:
        """The settings of a training stage (`jobs.<job>.<stage>`, preset merged); typed for the trainer."""
        if not isinstance(self.settings, StageCfg):
            raise TypeError(f"{self.job}/{self.stage} is not a training stage")
        return self.settings

    @property
    def eval_settings(self) -> EvalCfg:
        """The settings of an evaluation (`jobs.<job>.evaluate`, with the dataset evaluated on)."""
        if not isinstance(self.settings, EvalCfg):
            raise TypeError(f"{self.job}/{self.stage} is not an evaluation")
        return self.settings

    def identity(self) -> dict[str, Any]:
        """What determines this stage's result (JSON-ready); paths, resources and names of files are
        left out, so that a moved checkout or a renamed params file changes nothing."""
        runtime = self.runtime.model_dump(mode="json")
        return {
            "job": self.job,
            "stage": self.stage,
            "model": self.job_cfg.model.model_dump(mode="json"),
            "tasks": list(self.job_cfg.tasks),
            "settings": self.settings.model_dump(mode="json"),
            "seed": self.seed,
            "numerics": {k: runtime[k] for k in NUMERICS_KEYS} | self._accumulation(),
        }

    def _accumulation(self) -> dict[str, int]:
        """The accumulation steps of a training stage when above 1 (else nothing, so that identities
        stay what they were before accumulation existed).

        Accumulation changes the numbers of a model with BatchNorm: its statistics are taken over
        micro-batch x processes = global batch / accumulation images (synchronised BatchNorm spans the
        processes), so the steps, not the process count, are what the result depends on; the process
        count alone changes the numbers only by float summation order (README, "On a GPU cluster")
        and is not part of the identity. The steps are resolved for the profile's process count.
        """
        if not isinstance(self.settings, StageCfg):
            return {}
        try:
            plan = self.batch_plan()
        except ValueError:
            return {}  # the trainer reports the impossible split
        return {"accumulation_steps": plan.accumulation} if plan.accumulation > 1 else {}

    def batch_plan(self, world_size: int | None = None) -> BatchPlan:
        """A training stage's split of its global batch over `world_size` processes (default: the
        runtime's) and accumulation steps (engine/accumulation.py)."""
        rt = self.runtime
        processes = rt.world_size if world_size is None else world_size
        return plan_batch(
            self.train_settings.batch_size, processes, rt.accumulation_steps, rt.max_micro_batch
        )

    def identity_json(self) -> str:
        """`identity()` as canonical JSON (sorted keys)."""
        return json.dumps(self.identity(), sort_keys=True)

    def fingerprint(self, init_identity: str | None = None) -> str:
        """sha256 of the identity and of the identity of the --init weights (see engine/train.py)."""
        return fingerprint(self.identity_json(), init_identity)


def chain_runs(
    params: Params,
    job: str,
    run_dir: Path,
    *,
    skip_pretrain: bool = False,
    eval_out: Path | None = None,
    eval_dataset: str | None = None,
) -> list[StageRun]:
    """The stage runs of one chain of `job` in `run_dir`, in the order they run: the pipeline's
    training and evaluation stages (pipeline.py) and a sweep trial (tune.py) are both built here.

    Training: each stage the job has (`jobs.<job>.pretrain`, then `.finetune`; the pretraining left
    out with `skip_pretrain`, Fig. 7's 0% point) writes to `paths.stage_dir(run_dir, stage)` and
    starts from the final checkpoint of the stage before it (the first from none). Then, when
    `eval_out` is given, the evaluation of the last training stage's final checkpoint on
    `eval_dataset` (default: the job's own) written to `eval_out`. A chain without training stages
    is an empty list (no evaluation either: there is no checkpoint to evaluate).
    """
    runs: list[StageRun] = []
    init: Path | None = None
    for stage in TRAIN_STAGES:
        if getattr(params.job(job), stage) is None or (stage == "pretrain" and skip_pretrain):
            continue
        runs.append(StageRun.train(params, job, stage, paths.stage_dir(run_dir, stage), init))
        init = paths.final_checkpoint(runs[-1].out)
    if init is not None and eval_out is not None:
        runs.append(StageRun.evaluate(params, job, init, Path(eval_out), eval_dataset))
    return runs
