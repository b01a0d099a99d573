"""Builds what a stage needs from its `StageRun` or from a checkpoint: model, criterion, datasets.

The model is always built from a model config plus the dataset it is trained on: `num_classes` and
`max_depth` come from `densepred.tasks.dataset_info(dataset)`, so a Taskonomy checkpoint rebuilds
with 17 classes and a 128 m depth range, a NYUD-v2 one with 40 classes and 10 m, without guessing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
from torch import nn

from densepred.config import DatasetCfg, JobCfg, StageCfg
from densepred.model_params import ModelCfg
from densepred.stage_run import StageRun
from densepred.tasks import dataset_info

_MODEL_ADAPTER: pydantic.TypeAdapter = pydantic.TypeAdapter(ModelCfg)


def model_config_dict(model_cfg: Any) -> dict[str, Any]:
    """A model config as JSON-compatible builtins (stored in checkpoints)."""
    return model_cfg.model_dump(mode="json")


def parse_model_config(tree: dict[str, Any], source: str = "checkpoint") -> Any:
    """Validate a stored model config back into its typed form (errors name `source`)."""
    try:
        return _MODEL_ADAPTER.validate_python(tree)
    except pydantic.ValidationError as exc:
        raise ValueError(f"{source}: stored model config is invalid: {exc}") from None


def model_kwargs(model_cfg: Any, tasks: list[str], dataset: str) -> dict[str, Any]:
    """Keyword arguments of `create_model(model_cfg.name, ...)` for `tasks` trained on `dataset`.

    The model's params class decides them (`build_kwargs`: e.g. PolyMaX's one `task` and its K),
    so a model's rules and defaults live in its params class and its own module only.
    """
    info = dataset_info(dataset)
    return model_cfg.build_kwargs(list(tasks), num_classes=info.num_classes, max_depth=info.max_depth)


def build_model(model_cfg: Any, tasks: list[str], dataset: str) -> nn.Module:
    """The registered model for `model_cfg`, sized for `dataset` (classes, depth range)."""
    from densepred.models import create_model

    return create_model(model_cfg.name, **model_kwargs(model_cfg, tasks, dataset))


def build_criterion(job: JobCfg, stage: StageCfg) -> nn.Module:
    """The model's criterion for the stage's dataset, weights and options."""
    from densepred.losses import create_criterion

    return create_criterion(
        job.model.name,
        tasks=list(job.tasks),
        dataset=stage.dataset,
        weights=dict(stage.loss_weights) or None,
        **stage.loss_options,
    )


def prepared_root(data: DatasetCfg, dataset: str) -> Path:
    """The prepared-shards folder of `dataset`, with an error telling how to make it."""
    root = Path(data.prepared)
    if not root.exists():
        raise FileNotFoundError(
            f"prepared {dataset} data not found at {root}; run `densepred prepare --dataset {dataset}` first"
        )
    return root


def build_train_dataset(run: StageRun) -> Any:
    """The stage's training split with the joint train-time augmentation (crop, scale, flip, jitter)."""
    from densepred.data.shards import ShardDataset
    from densepred.data.transforms import TrainTransform

    stage = run.train_settings
    transform = TrainTransform(
        crop=tuple(stage.crop), scale=tuple(stage.scale), flip=stage.flip, jitter=stage.jitter
    )
    return ShardDataset(
        prepared_root(run.data, run.dataset),
        stage.split,
        tasks=list(run.job_cfg.tasks),
        fraction=stage.fraction,
        transform=transform,
        seed=run.seed,
    )


def build_eval_dataset(run: StageRun, tasks: list[str]) -> Any:
    """The evaluation's split with the evaluation transform (full images, no augmentation), for the
    `tasks` the checkpoint predicts."""
    from densepred.data.shards import ShardDataset
    from densepred.data.transforms import EvalTransform

    return ShardDataset(
        prepared_root(run.data, run.dataset),
        run.eval_settings.split,
        tasks=list(tasks),
        transform=EvalTransform(),
        seed=run.seed,
    )


def collate_fn() -> Any:
    """The data package's `collate` when it has one, else torch's default collation."""
    try:
        from densepred.data.transforms import collate
    except ImportError:
        from torch.utils.data import default_collate as collate
    return collate
