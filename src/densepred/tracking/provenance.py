"""What a run records about where it comes from: the git commit, the tags and flattened params of its
subject (`RunSubject`, taken from the stage's `StageRun` or, for a sweep, from its job), where it sits
in the runs table (`Nesting`), and the prepared dataset it reads (`DatasetRecord`).

Every run has the tag `origin` = `pipeline` or `sweep`: a sweep trial's stage runs are children
(`mlflow.parentRunId`) of the trial's run and carry its tags (sweep, variant, table), so the top level
of the runs table holds the pipeline's stage executions and one run per sweep.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densepred.config import JobCfg, Params, RuntimeCfg, TrackingCfg
from densepred.params_loading import flatten_keys
from densepred.paths import project_root
from densepred.stage_run import StageRun

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
PARENT_TAG = "mlflow.parentRunId"


def git_commit(root: Path | None = None) -> str:
    """The current git commit of the project (suffixed `-dirty` with uncommitted changes), or 'unknown'."""
    cwd = str(root or project_root())
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "") if sha else "unknown"


def flatten(tree: Mapping[str, Any]) -> dict[str, str]:
    """Nested mapping -> {"a.b.c": "value"}; lists and scalars become strings (MLflow params)."""
    flat: dict[str, str] = {}
    for name, value in flatten_keys(dict(tree)).items():
        text = str(value)
        if len(text) > MAX_PARAM_LENGTH:
            raise ValueError(
                f"param {name!r} is {len(text)} characters; MLflow keeps at most {MAX_PARAM_LENGTH}"
            )
        flat[name] = text
    return flat


@dataclass(frozen=True)
class RunSubject:
    """What an MLflow run is about: its tags and params are built from this, its store from `tracking`."""

    profile: str
    seed: int
    job: str
    job_cfg: JobCfg
    runtime: RuntimeCfg
    tracking: TrackingCfg
    stage: str | None = None

    @classmethod
    def of_stage(cls, run: StageRun) -> RunSubject:
        """A stage run's subject, tagged with its stage (`pretrain`, `finetune` or `evaluate`)."""
        return cls(
            profile=run.profile,
            seed=run.seed,
            job=run.job,
            job_cfg=run.job_cfg,
            runtime=run.runtime,
            tracking=run.tracking,
            stage=run.stage,
        )

    @classmethod
    def of_job(cls, params: Params, job: str) -> RunSubject:
        """A whole job's subject, no stage (a sweep and its trials)."""
        return cls(
            profile=params.profile,
            seed=params.seed,
            job=job,
            job_cfg=params.job(job),
            runtime=params.runtime,
            tracking=params.tracking,
        )


@dataclass(frozen=True)
class Nesting:
    """Where a run sits in the runs table when it is not a top-level pipeline run: a child of
    `parent_run_id` (a sweep trial's run) carrying `tags` (sweep, variant, table). Passed explicitly
    from the sweep trial (tune.py's `run_trial`) down to the `start_run` of each of its stages."""

    parent_run_id: str | None
    tags: Mapping[str, str] = field(default_factory=dict)

    def run_tags(self) -> dict[str, str]:
        """The tags a nested run gets: origin `sweep`, `tags`, and the parent's id (when it has one)."""
        tags = {"origin": "sweep", **self.tags}
        if self.parent_run_id:
            tags[PARENT_TAG] = self.parent_run_id
        return tags


def run_tags(subject: RunSubject, kind: str) -> dict[str, str]:
    """The tags of a run: git commit, profile, job, stage, model, tasks, backbone, kind, seed."""
    cfg = subject.job_cfg
    return {
        "git_commit": git_commit(),
        "profile": subject.profile,
        "job": subject.job,
        "stage": subject.stage or "",
        "kind": kind,
        "model": cfg.model.name,
        "tasks": ",".join(cfg.tasks),
        "backbone": cfg.model.backbone,
        "seed": str(subject.seed),
    }


def placed_run_tags(subject: RunSubject, kind: str, nesting: Nesting | None) -> dict[str, str]:
    """`run_tags` plus where the run sits: origin `pipeline` at the top level, else `nesting`'s tags."""
    return {**run_tags(subject, kind), "origin": "pipeline", **(nesting.run_tags() if nesting else {})}


def run_params(subject: RunSubject) -> dict[str, str]:
    """Flattened params of a run: the job's config plus profile-wide settings."""
    tree = {
        "profile": subject.profile,
        "seed": subject.seed,
        "job": subject.job_cfg.model_dump(mode="json", exclude={"description"}),
        "runtime": subject.runtime.model_dump(mode="json"),
    }
    return flatten(tree)


@dataclass(frozen=True)
class DatasetRecord:
    """A prepared dataset as an MLflow dataset input: its digest is that of its shards (index.json)."""

    name: str
    digest: str
    source: str
    context: str  # "train" or "evaluation"


def prepared_dataset(name: str, root: Path, context: str) -> DatasetRecord:
    """The prepared dataset at `root`; its digest (32 hex digits) hashes every shard's digest listed in
    its index.json, so two runs on the same shards show the same dataset in MLflow."""
    index = json.loads((Path(root) / "index.json").read_text())
    entries = sorted(
        f"{split}/{shard['file']}:{shard['digest']}"
        for split, info in index.get("splits", {}).items()
        for shard in info.get("shards", [])
    )
    digest = hashlib.blake2b("\n".join(entries).encode(), digest_size=16).hexdigest()
    return DatasetRecord(name=name, digest=digest, source=str(Path(root).resolve()), context=context)
