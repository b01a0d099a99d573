"""Typed params: profiles (params/*.yaml), dotted overrides, and the JSON schema.

A params file is one profile (`params/smoke.yaml`, `params/paper.yaml`): global settings, the datasets,
and named *jobs* (one experiment each: model, tasks, per-stage settings). Every model is strict:
unknown keys, wrong types and missing required values raise `ParamsError`, whose message names the
file and the dotted key path.

Relative paths in a params file are relative to the working directory the command runs in (the
project root for Snakemake and DVC).

Shared stage settings are declared once, under `presets:` (named stage settings), and a job's stage
names the one it starts from: `finetune: {preset: polymax_finetune, iterations: 20}`. The loader
merges the preset under the job's own keys (nested mappings key by key), so every job key is a real
key of the file: `--set jobs.stl_depth.finetune.iterations=20`, DVC's
`dvc exp run -S 'params/smoke.yaml:++jobs.stl_depth.finetune.iterations=20'` and Snakemake's
`--config jobs.stl_depth.finetune.iterations=20` all change that one job, while
`--set presets.mtl_finetune.iterations=20` changes every job that starts from the preset. The file
holds no YAML anchors, so a tool that rewrites it (DVC does, with ruamel) keeps its meaning.

Seeds: `seeds: [0, 1, 2]` (top level, or `jobs.<job>.seeds` for one job) is the list of seeds the
pipeline runs every training chain of a job with (pipeline.py fans the chain out per seed, paths.py
names the per-seed folders, tables.py reports the mean and spread over them). `seed` is the seed one
command runs with: the pipeline passes each chain's own seed to its commands as `--set seed=<k>`,
and a command run by hand, the sweeps and anything else not fanned out use the file's `seed`.

Overrides: `--set jobs.polymax_depth.model.num_clusters=32` (repeatable) replaces one value; the value
is parsed as YAML (`32` -> int, `[1, 2]` -> list, `null` -> None). Overrides apply to the file's tree
before presets are merged, and the result is validated as a whole, so a typo'd override is reported
like a typo in the file.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Task = Literal["semseg", "depth", "normals", "edge"]
DatasetName = Literal["nyud", "taskonomy"]
PRESET_KEY = "preset"
STAGE_KEYS = ("pretrain", "finetune", "evaluate")
SCHEMA_PATH = Path("workflow/schemas/params.schema.json")


class ParamsError(ValueError):
    """A params file or override is invalid; the message names the file and the key path."""


class Strict(BaseModel):
    """Base for every params model: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


# ---------------------------------------------------------------------------------------------- models


class ModelBase(Strict):
    """Settings every model shares: the timm backbone and where its pretrained weights are.

    Each model's params class is the one home of that model's rules and defaults: `check_tasks`
    (which task lists it can train, called by `JobCfg`'s validation) and `build_kwargs` (the
    keyword arguments of `create_model`, with the defaults that depend on the tasks or the
    dataset resolved, called by engine/build.py). Adding a model means its own module, the
    registry entry and its params class here; nothing else restates its rules.
    """

    backbone: str
    pretrained_file: Path | None = Field(None, description="local timm weights; never fetched")
    img_size: tuple[int, int] | None = Field(None, description="input size for windowed backbones")
    width_mult: float = Field(1.0, gt=0.0, description="scales decoder widths (smoke profiles)")
    depth_init: float | None = Field(
        None, gt=0.0, description="metres an untrained depth head predicts (None: plain activation)"
    )

    def create_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `create_model(self.name, ...)`; unset optionals are left out."""
        kwargs = self.model_dump(exclude={"name"}, exclude_none=True)
        if "pretrained_file" in kwargs:
            kwargs["pretrained_file"] = str(kwargs["pretrained_file"])
        return kwargs

    def check_tasks(self, tasks: Sequence[str]) -> None:
        """Raise ValueError when this model cannot train `tasks` together (default: any tasks)."""

    def build_kwargs(self, tasks: Sequence[str], num_classes: int, max_depth: float) -> dict[str, Any]:
        """Keyword arguments of `create_model(self.name, ...)` for `tasks` on a dataset with
        `num_classes` semantic classes and depths up to `max_depth` metres (default: `tasks=`)."""
        self.check_tasks(tasks)
        kwargs = {**self.create_kwargs(), "num_classes": num_classes, "max_depth": max_depth}
        kwargs["tasks"] = list(tasks)
        return kwargs


class PolyMaXCfg(ModelBase):
    """PolyMaX (cluster prediction on kMaX-DeepLab). One task per model, as in the paper."""

    # PolyMaX's rules live here; models/polymax/model.py and the criterion apply these same ones: a
    # model predicts one of TASKS (there is no edge head); K is the number of classes C for semseg
    # (fixed cluster-to-class matching, paper Sec. 3.1), else DEFAULT_NUM_CLUSTERS (paper Sec. 4.3,
    # Fig. 8: 16 probability maps). (A class docstring here would become the params schema's text.)
    TASKS: ClassVar[tuple[str, ...]] = ("semseg", "depth", "normals")
    DEFAULT_NUM_CLUSTERS: ClassVar[int] = 16

    name: Literal["polymax"]
    num_clusters: int | None = Field(
        None, gt=0, description=f"K; semseg forces K = C; default {DEFAULT_NUM_CLUSTERS}"
    )
    decoder_layers: tuple[int, ...] = Field((2, 2, 2), min_length=1, max_length=3)
    pixel_decoder_depths: tuple[int, ...] | None = None
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0)
    bn_momentum: float = Field(
        0.01, gt=0.0, le=1.0, description="kMaX: 0.01; short smoke schedules need ~0.1 for usable eval stats"
    )
    depth_activation: Literal["sigmoid", "softplus"] = Field(
        "sigmoid", description="depth bins: sigmoid bounded by max_depth, or softplus (range-free)"
    )

    @classmethod
    def check_tasks(cls, tasks: Sequence[str]) -> None:
        """One task per model, and one PolyMaX has a head for (the criterion checks the same)."""
        if len(tasks) != 1:
            raise ValueError(f"polymax trains one task per model; got tasks {list(tasks)}")
        if tasks[0] not in cls.TASKS:
            raise ValueError(f"polymax has no {tasks[0]!r} head; use {', '.join(cls.TASKS)}")

    @classmethod
    def resolve_num_clusters(cls, task: str, num_classes: int, num_clusters: int | None) -> int:
        """K for `task`: C for semseg (a different explicit K is an error), else `num_clusters` or
        `DEFAULT_NUM_CLUSTERS`."""
        if task not in cls.TASKS:
            raise ValueError(f"PolyMaX task must be one of {cls.TASKS}, got {task!r}")
        if task == "semseg":
            if num_clusters is not None and int(num_clusters) != num_classes:
                raise ValueError(
                    f"semseg uses K = num_classes with a fixed matching (paper Sec. 3.1): "
                    f"num_clusters={num_clusters} != num_classes={num_classes}"
                )
            return num_classes
        k = cls.DEFAULT_NUM_CLUSTERS if num_clusters is None else int(num_clusters)
        if k < 1:
            raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
        return k

    def build_kwargs(self, tasks: Sequence[str], num_classes: int, max_depth: float) -> dict[str, Any]:
        """PolyMaX takes the single `task` and K resolved for it (see `resolve_num_clusters`)."""
        self.check_tasks(tasks)
        kwargs = {**self.create_kwargs(), "num_classes": num_classes, "max_depth": max_depth}
        kwargs["task"] = tasks[0]
        kwargs["num_clusters"] = self.resolve_num_clusters(tasks[0], num_classes, self.num_clusters)
        return kwargs


class MQTransformerCfg(ModelBase):
    """MQTransformer (multi-query transformer for multi-task dense prediction)."""

    name: Literal["mqtransformer"]
    num_queries: int = Field(64, gt=0)
    embed_dim: int | None = Field(None, gt=0)
    encoder_depth: int = Field(1, ge=1)
    decoder_depth: int = Field(1, ge=1)
    num_scales: int = Field(2, ge=1, le=4)
    shared: bool = True
    query_learning: bool = True
    cross_task_attention: bool = True
    fusion: Literal["add", "concat"] = "add"


class DeepLabCfg(ModelBase):
    """DeepLabv3+ with per-pixel heads (the PolyMaX paper's baseline)."""

    name: Literal["deeplabv3plus"]
    aspp_channels: int = Field(256, gt=0)
    decoder_channels: int = Field(256, gt=0)


class BaselineCfg(ModelBase):
    """Single-task (one task) and multi-task (shared backbone, a head per task) baselines."""

    # The single-task rule lives here; models/baselines.py's `stl_baseline` applies it through
    # `check_model_tasks`.

    name: Literal["stl_baseline", "mtl_baseline"]

    def check_tasks(self, tasks: Sequence[str]) -> None:
        """`stl_baseline` trains exactly one task; `mtl_baseline` any."""
        self.check_model_tasks(self.name, tasks)

    @staticmethod
    def check_model_tasks(name: str, tasks: Sequence[str]) -> None:
        """The rule of baseline `name`: the single-task baseline trains exactly one task."""
        if name == "stl_baseline" and len(tasks) != 1:
            raise ValueError(f"stl_baseline trains exactly one task per model; got tasks {list(tasks)}")


ModelCfg = Annotated[PolyMaXCfg | MQTransformerCfg | DeepLabCfg | BaselineCfg, Field(discriminator="name")]


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
        description="native: torch's fastest CPU kernels for this machine (bitwise reproducible on it); "
        "portable: kernels pinned to one instruction set (launch.PORTABLE_CPU_ENV), bitwise equal across "
        "the x86-64 CPU models tested, at 1.3-1.6x the CPU time per step",
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


# -------------------------------------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into (['a','b','c'], parsed value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"--set {text!r}: expected KEY=VALUE with a dotted KEY, e.g. model.k=16")
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise ParamsError(f"--set {text!r}: empty component in key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ParamsError(f"--set {text!r}: value is not valid YAML: {exc}") from None
    return parts, value


def apply_override(tree: dict[str, Any], parts: list[str], value: Any, source: str = "--set") -> None:
    """Set `tree[parts[0]][parts[1]]... = value`, creating intermediate mappings."""
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ParamsError(f"{source}: {where} is a {type(child).__name__}, not a mapping")
        node = child
    node[parts[-1]] = value


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid params in {source}:"]
    for err in exc.errors():
        loc = _clean_loc(err["loc"])
        what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        shown = "" if err["type"] in ("extra_forbidden", "missing") else f" (got {err.get('input')!r})"
        lines.append(f"  {loc or '<top level>'}: {what}{shown}")
    return "\n".join(lines)


def _clean_loc(loc: tuple[Any, ...]) -> str:
    """Dotted key path; drops the discriminator tag pydantic inserts after `model`."""
    parts: list[str] = []
    for i, item in enumerate(loc):
        if i > 0 and loc[i - 1] == "model" and isinstance(item, str) and item in _MODEL_TAGS:
            continue
        parts.append(str(item))
    return ".".join(parts)


_MODEL_TAGS = {"polymax", "mqtransformer", "deeplabv3plus", "stl_baseline", "mtl_baseline"}


class RepeatedKeyError(yaml.YAMLError):
    """A mapping of a YAML document holds one key twice; the message names the key and both lines."""


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error.

    Plain YAML loading keeps the last value silently, so a block pasted twice into a params file
    would run with values nobody chose. Keys merged in with `<<:` may still be overridden (that is
    what a merge is for); only a mapping's own keys must be unique.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        self._check_unique_keys(node, (), set())
        return super().construct_document(node)

    def _check_unique_keys(self, node: yaml.Node, where: tuple[str, ...], seen: set[int]) -> None:
        if id(node) in seen:  # an alias of a node already checked
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_unique_keys(item, (*where, str(i)), seen)
            return
        if not isinstance(node, yaml.MappingNode):
            return
        first_lines: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self._check_unique_keys(value_node, where, seen)
                continue
            if not isinstance(key_node, yaml.ScalarNode):  # a complex key: never a params key
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            dotted = ".".join((*where, str(key)))
            if key in first_lines:
                raise RepeatedKeyError(
                    f"key {dotted!r} is given twice, at lines {first_lines[key]} and {line}; keep one "
                    "(YAML would silently use the last)"
                )
            first_lines[key] = line
            self._check_unique_keys(value_node, (*where, str(key)), seen)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with errors that name the file; a key repeated in one mapping is an error
    naming the key and both lines (`UniqueKeyLoader`)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)  # a SafeLoader
    except RepeatedKeyError as exc:
        raise ParamsError(f"{path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ParamsError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save the params file as UTF-8"
        ) from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `update` merged in: nested mappings key by key, anything else replaced."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def flatten_keys(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: {a: {b: 1}, c.d: 2} -> {"a.b": 1, "c.d": 2} (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_keys(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def merge_presets(tree: dict[str, Any], source: str) -> dict[str, Any]:
    """A copy of the params tree in which every `jobs.<job>.<stage>: {preset: name, ...}` holds the
    preset's settings with the job's own keys merged over them (the job wins)."""
    tree = copy.deepcopy(tree)
    presets = tree.get("presets") or {}
    jobs = tree.get("jobs")
    if not isinstance(jobs, dict):
        return tree
    for job_name, job in jobs.items():
        if not isinstance(job, dict):
            continue
        for stage in STAGE_KEYS:
            settings = job.get(stage)
            if not isinstance(settings, dict) or PRESET_KEY not in settings:
                continue
            own = dict(settings)
            name = own.pop(PRESET_KEY)
            if not isinstance(presets, dict) or name not in presets:
                known = sorted(presets) if isinstance(presets, dict) else []
                raise ParamsError(
                    f"invalid params in {source}:\n  jobs.{job_name}.{stage}.preset: no preset named "
                    f"{name!r} under presets (known: {known})"
                )
            job[stage] = deep_merge(presets[name], own)
    return tree


def validate(tree: dict[str, Any], source: str) -> Params:
    """Merge presets into a raw params tree and validate it; errors name `source` and the key path."""
    tree = merge_presets(tree, source)
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        raise ParamsError(_format_errors(exc, source)) from None


def with_overrides(
    tree: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str = ""
) -> dict[str, Any]:
    """A copy of a raw params tree with the dotted `overrides` (KEY=VALUE, as `--set`) applied."""
    tree = copy.deepcopy(tree)
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(tree, parts, value, source=f"{source}--set {text}")
    return tree


ParamsFiles = str | Path | Sequence[str | Path]


def profile_files(path: ParamsFiles) -> list[Path]:
    """A profile and its override sets as a list of paths: one path, or [profile, override set, ...]."""
    files = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    if not files:
        raise ParamsError("no params file given")
    return files


def read_profile(path: ParamsFiles) -> dict[str, Any]:
    """A profile's raw tree with its override sets merged over it in order (params/rehearse.yaml over
    params/paper.yaml), key by key as Snakemake merges several `--configfile`s."""
    profile, *override_sets = profile_files(path)
    tree = read_yaml(profile)
    for extra in override_sets:
        tree = deep_merge(tree, read_yaml(extra))
    return tree


def load_params(path: ParamsFiles, overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Load a profile (and any override sets after it), apply dotted `overrides` (KEY=VALUE), validate."""
    files = profile_files(path)
    tree = with_overrides(read_profile(files), overrides)
    source = " + ".join(str(f) for f in files)
    source += f" (with --set {', '.join(overrides)})" if overrides else ""
    return validate(tree, source)


def json_schema() -> dict[str, Any]:
    """The JSON schema of a params file (draft 2020-12), for Snakemake's `validate`."""
    schema = Params.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "densepred params"
    return schema


def write_json_schema(path: Path = SCHEMA_PATH) -> Path:
    """Write the schema atomically to `path`."""
    from densepred.io import atomic_write_text

    atomic_write_text(Path(path), json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
    return Path(path)


def project_root() -> Path:
    """The project root: DENSEPRED_ROOT, else the nearest parent with pyproject.toml, else the cwd."""
    env = os.environ.get("DENSEPRED_ROOT")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").is_file() and (candidate / "params").is_dir():
            return candidate
    return here


__all__ = ["JobCfg", "Params", "ParamsError", "StageCfg", "load_params", "validate"]
