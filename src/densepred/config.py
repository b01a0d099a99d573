"""Typed params: the schema of a params profile (params/*.yaml).

A params file is one profile (`params/smoke.yaml`, `params/paper.yaml`): global settings, the datasets,
and named *jobs* (one experiment each: model, tasks, per-stage settings). Every model is strict:
unknown keys, wrong types and missing required values raise `ParamsError`, whose message names the
file and the dotted key path. Each model's params class (`jobs.<job>.model`) is in model_params.py;
reading a profile, its presets and `--set` overrides is params_loading.py's; the JSON schema
export is params_schema.py's.

Relative paths in a params file are relative to the working directory the command runs in (the
project root for Snakemake and DVC).

Seeds: `seeds: [0, 1, 2]` (top level, or `jobs.<job>.seeds` for one job) is the list of seeds the
pipeline runs every training chain of a job with (pipeline.py fans the chain out per seed, paths.py
names the per-seed folders, tables.py reports the mean and spread over them). `seed` is the seed one
command runs with: the pipeline passes each chain's own seed to its commands as `--set seed=<k>`,
and a command run by hand, the sweeps and anything else not fanned out use the file's `seed`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from densepred.model_params import ModelCfg, Strict

Task = Literal["semseg", "depth", "normals", "edge"]
DatasetName = Literal["nyud", "taskonomy"]


class ParamsError(ValueError):
    """A params file or override is invalid; the message names the file and the key path."""


# ----------------------------------------------------------------------------------------------- data


class SynthNYUD(Strict):
    """Synthetic NYUD-v2: how many images, their size, and which on-disk layout to write."""

    num_images: int = Field(120, gt=1)
    num_test: int | None = Field(None, gt=0, description="test images; default: about 45% as in 654/1449")
    height: int = Field(120, ge=32)
    width: int = Field(160, ge=32)
    layout: Literal["official", "multitask", "mti"] = "official"


class SynthTaskonomy(Strict):
    """Synthetic Taskonomy in the omnitools layout."""

    buildings: int = Field(4, ge=3, description="at least 3 so that train/val/test each get a building")
    views_per_building: int = Field(100, ge=1)
    size: int = Field(128, ge=32)


class SynthCfg(Strict):
    """`densepred synth`: generate raw datasets in the real formats (synthetic profiles only)."""

    seed: int = 0
    nyud: SynthNYUD = SynthNYUD()
    taskonomy: SynthTaskonomy = SynthTaskonomy()


class DatasetCfg(Strict):
    """Where a dataset's raw files are and where its prepared shards go."""

    raw: Path
    prepared: Path
    split_csv: Path | None = Field(None, description="Taskonomy split CSV; default: found under raw/")
    buildings: list[str] | None = Field(None, description="Taskonomy: restrict to these buildings")
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    shard_size: int = Field(64, gt=0, description="samples per shard")


# ---------------------------------------------------------------------------------------------- stages


class OptimizerCfg(Strict):
    """PolyMaX: AdamW, wd on weights only, backbone lr x0.1. MQTransformer: SGD momentum 0.9."""

    name: Literal["adamw", "sgd"]
    lr: float = Field(gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    betas: tuple[float, float] = (0.9, 0.999)
    backbone_lr_mult: float = Field(1.0, gt=0.0)
    decay_norm_and_bias: bool = Field(False, description="False: weight decay on weights only")


class ScheduleCfg(Strict):
    """Learning-rate schedule: linear warmup then poly decay (power 0.9) to zero."""

    name: Literal["poly", "constant"] = "poly"
    power: float = Field(0.9, gt=0.0)
    warmup_iters: int = Field(0, ge=0)
    warmup_factor: float = Field(0.001, gt=0.0, le=1.0)


class StageCfg(Strict):
    """One training stage (pretrain on Taskonomy, finetune on NYUD-v2)."""

    dataset: DatasetName
    split: str = "train"
    fraction: float = Field(1.0, gt=0.0, le=1.0, description="share of the training data used")
    iterations: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    crop: tuple[int, int]
    scale: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    jitter: bool = True
    optimizer: OptimizerCfg
    schedule: ScheduleCfg = ScheduleCfg()
    loss_weights: dict[str, float] = Field(default_factory=dict, description="criterion term weights")
    loss_options: dict[str, Any] = Field(default_factory=dict, description="criterion options")
    grad_clip: float | None = Field(None, gt=0.0)
    checkpoint_every: int = Field(100, gt=0)
    log_every: int = Field(10, gt=0)


class EvalCfg(Strict):
    """Evaluation on a dataset's test split, under both depth protocols."""

    dataset: DatasetName = "nyud"
    split: str = "test"
    batch_size: int = Field(4, gt=0)
    boundary_thresholds: int | list[float] = Field(
        101, description="n: SEISM/HED set 0.001, k/(n-1) for k=1..n-2, 0.999; or an explicit list"
    )
    eigen_crop: bool = Field(
        False,
        description="Eigen crop of the eigen depth protocol, on 480x640 frames (the official release); "
        "frames of other sizes (the multi-task layout's 425x560) are evaluated whole",
    )
    num_qualitative: int = Field(4, ge=0, description="prediction PNGs written")


class JobCfg(Strict):
    """A named experiment: one model, its tasks, and the settings of each stage."""

    description: str = ""
    model: ModelCfg
    tasks: list[Task] = Field(min_length=1)
    pretrain: StageCfg | None = Field(None, description="Taskonomy pretraining; null = backbone init only")
    finetune: StageCfg | None = Field(None, description="NYUD-v2 finetuning; null = pretrain-only job")
    evaluate: EvalCfg = EvalCfg()
    delta_m_refs: dict[Task, str] = Field(
        default_factory=dict, description="task -> single-task job whose metrics are the delta_m reference"
    )
    tables: list[str] = Field(default_factory=lambda: ["table2"], description="tables this job feeds")
    seeds: list[int] | None = Field(
        None, description="seeds this job's training chain runs with; default: the profile's `seeds`"
    )

    @field_validator("seeds")
    @classmethod
    def _valid_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        return None if seeds is None else check_seeds(seeds)

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, tasks: list[str]) -> list[str]:
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks repeat: {tasks}")
        return tasks

    @model_validator(mode="after")
    def _model_fits_tasks(self) -> JobCfg:
        if self.pretrain is None and self.finetune is None:
            raise ValueError("a job needs a pretrain or a finetune stage (or both)")
        self.model.check_tasks(self.tasks)  # each model's own rules (its params class)
        return self


# ------------------------------------------------------------------------------------- sweeps, runtime


class TrialResources(Strict):
    """Resources one Ray Tune trial asks for (fractional GPUs allowed)."""

    cpu: float = Field(1.0, gt=0.0)
    gpu: float = Field(0.0, ge=0.0)


class SweepCfg(Strict):
    """A Ray Tune ablation: variants of one job, each a set of dotted overrides of that job.

    `base` is a partial job (nested like `jobs.<name>`, e.g. `{finetune: {iterations: 60}}`) merged
    into every trial, so `--set sweeps.<name>.base.finetune.iterations=5` addresses it like any key.
    """

    job: str
    table: str
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted key -> values")
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict, description="name -> overrides")
    base: dict[str, Any] = Field(
        default_factory=dict,
        description="partial job merged into every trial, e.g. {finetune: {iterations: 60}}",
    )
    resources: TrialResources = TrialResources()
    max_failures: int = Field(1, ge=0, description="retries of a failing trial")
    max_concurrent: int | None = Field(None, gt=0)
    max_trials: int | None = Field(
        None, gt=0, description="run only the first N trials in declared order (rehearsals); null: all"
    )

    @model_validator(mode="after")
    def _has_settings(self) -> SweepCfg:
        if not self.grid and not self.variants:
            raise ValueError("a sweep needs a grid or variants")
        return self


class Figure7Cfg(Strict):
    """Paper Fig. 7: NYUD-v2 results after pretraining on fractions of Taskonomy."""

    jobs: list[str] = Field(min_length=1)
    fractions: list[float] = Field(min_length=1)

    @field_validator("fractions")
    @classmethod
    def _fractions_in_range(cls, fractions: list[float]) -> list[float]:
        bad = [f for f in fractions if not 0.0 <= f <= 1.0]
        if bad:
            raise ValueError(f"fractions must lie in [0, 1]; got {bad}")
        return fractions


class RuntimeCfg(Strict):
    """How jobs run: device, precision, memory format, compile, data loading."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["none", "bf16"] = Field("bf16", description="bf16 autocast; applied on GPU only")
    channels_last: bool = True
    compile: bool = False
    num_workers: int = Field(0, ge=0)
    deterministic: bool = True
    cpu_kernels: Literal["native", "portable"] = Field(
        "native",
        description="native: each library's fastest CPU kernels for this machine (bitwise reproducible "
        "on it); portable: kernels pinned to one code path (launch.PORTABLE_CPU_ENV; needs AVX2), bitwise "
        "equal across the x86-64 CPU models tested, at more CPU time per step (README, Reproducibility)",
    )
    threads: int = Field(1, ge=1, description="CPU threads per training/evaluation job")
    gpus_per_job: int = Field(
        0,
        ge=0,
        description="GPUs on each node of a training job; above 0 it is also the number of training "
        "processes per node (one per GPU, started by torchrun)",
    )
    procs_per_job: int | None = Field(
        None,
        ge=1,
        description="training processes per node when gpus_per_job is 0 (CPU, gloo); with GPUs it "
        "must equal gpus_per_job or be left unset",
    )
    nodes_per_job: int = Field(
        1,
        ge=1,
        description="nodes of one training job (SLURM: one sbatch job; srun starts torchrun per node)",
    )
    accumulation_steps: int | None = Field(
        None,
        ge=1,
        description="micro-batches per optimiser step on each process; unset: the fewest that keep the "
        "micro-batch within max_micro_batch (1 without a cap)",
    )
    max_micro_batch: int | None = Field(
        None, ge=1, description="most images one process runs forward/backward at once (derives accumulation)"
    )
    device_memory_gb: float | None = Field(
        None,
        gt=0.0,
        description="memory one training process may use (GB) for the preflight check; unset: the GPU's "
        "own (no check on CPU)",
    )
    mem_mb: int = Field(4000, gt=0, description="memory per training process (x processes per node)")
    keep_last_checkpoint: bool = Field(
        False,
        description="keep checkpoints/last.pt after final.pt is written; by default it is removed, since "
        "it holds the optimiser state (about 2.8 GB for PolyMaX ConvNeXt-L) and a finished stage "
        "never resumes",
    )

    @model_validator(mode="after")
    def _one_process_per_gpu(self) -> RuntimeCfg:
        if self.gpus_per_job and self.procs_per_job not in (None, self.gpus_per_job):
            raise ValueError(
                f"procs_per_job={self.procs_per_job} with gpus_per_job={self.gpus_per_job}: a GPU job runs "
                "one process per GPU; leave procs_per_job unset"
            )
        return self

    @property
    def procs_per_node(self) -> int:
        """Training processes per node: one per GPU, else `procs_per_job` (CPU), else 1."""
        return self.gpus_per_job or self.procs_per_job or 1

    @property
    def world_size(self) -> int:
        """Training processes of one job over all its nodes."""
        return self.procs_per_node * self.nodes_per_job


class TrackingCfg(Strict):
    """MLflow: MLFLOW_TRACKING_URI wins, then `uri`, then sqlite:///<project root>/mlflow.db."""

    uri: str | None = None
    experiment: str = "densepred"


class PathsCfg(Strict):
    """Where stage outputs go."""

    runs: Path = Path("runs")
    results: Path = Path("results")


def check_seeds(seeds: list[int]) -> list[int]:
    """A list of seeds must be non-empty, of non-negative integers, without repeats (the pipeline
    names a folder and a stage after each)."""
    if not seeds:
        raise ValueError("give at least one seed, e.g. [0]")
    negative = [s for s in seeds if s < 0]
    if negative:
        raise ValueError(f"seeds must be non-negative integers; got {negative}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"seeds repeat: {repeated} in {seeds}")
    return seeds


class Params(Strict):
    """A whole profile."""

    profile: str
    seed: int = Field(
        0,
        ge=0,
        description="the seed a command runs with; the pipeline sets it per chain from `seeds` "
        "(--set seed=<k>); sweeps and commands run by hand use this value",
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0],
        description="seeds every training chain runs with (pretrain -> finetune -> evaluate, Fig. 7); "
        "the tables report the mean and spread over them. A job may set its own (`jobs.<job>.seeds`)",
    )
    paths: PathsCfg = PathsCfg()
    tracking: TrackingCfg = TrackingCfg()
    runtime: RuntimeCfg = RuntimeCfg()
    synth: SynthCfg | None = Field(None, description="present only in synthetic profiles")
    rehearsal: bool = Field(
        False,
        description="a real-data profile run on synthetic data of the same sizes (params/rehearse.yaml): "
        "its tables carry the paper columns although the data is synthetic",
    )
    presets: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="named stage settings a job's stage starts from ({preset: name})"
    )
    datasets: dict[DatasetName, DatasetCfg]
    jobs: dict[str, JobCfg] = Field(min_length=1)
    figure7: Figure7Cfg | None = None
    sweeps: dict[str, SweepCfg] = Field(default_factory=dict)

    @field_validator("seeds")
    @classmethod
    def _valid_seeds(cls, seeds: list[int]) -> list[int]:
        return check_seeds(seeds)

    @model_validator(mode="after")
    def _references_exist(self) -> Params:
        for name, job in self.jobs.items():
            for stage in (job.pretrain, job.finetune):
                if stage is not None and stage.dataset not in self.datasets:
                    raise ValueError(f"jobs.{name}: dataset {stage.dataset!r} is not under datasets")
            for task, ref in job.delta_m_refs.items():
                if ref not in self.jobs:
                    raise ValueError(f"jobs.{name}.delta_m_refs.{task}: no job named {ref!r}")
        for name, sweep in self.sweeps.items():
            if sweep.job not in self.jobs:
                raise ValueError(f"sweeps.{name}.job: no job named {sweep.job!r}")
        if self.figure7 is not None:
            for job in self.figure7.jobs:
                if job not in self.jobs:
                    raise ValueError(f"figure7.jobs: no job named {job!r}")
        return self

    @property
    def compares_to_papers(self) -> bool:
        """Whether tables put the papers' numbers beside ours: real data, or a rehearsal of a
        real-data profile (whose differences only show that the columns line up)."""
        return self.synth is None or self.rehearsal

    def job(self, name: str) -> JobCfg:
        """The job `name`, with an error listing the known jobs."""
        if name not in self.jobs:
            raise ParamsError(f"no job named {name!r} in profile {self.profile!r}; jobs: {sorted(self.jobs)}")
        return self.jobs[name]

    def job_seeds(self, name: str) -> list[int]:
        """The seeds job `name` runs with: its own `seeds`, else the profile's."""
        job = self.job(name)
        return list(job.seeds if job.seeds is not None else self.seeds)


__all__ = ["JobCfg", "Params", "ParamsError", "StageCfg"]
