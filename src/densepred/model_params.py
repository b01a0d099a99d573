"""Each model's params class (`jobs.<job>.model` in a params profile): the one home of that
model's rules and defaults, and `Strict`, the base of every params model (here and in config.py).

config.py's `JobCfg` takes a `ModelCfg` (the union below, told apart by `name`) and calls the
model's `check_tasks`; engine/build.py calls its `build_kwargs`; models/polymax/model.py,
models/baselines.py and losses/polymax_criterion.py apply the rules of their own class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Base for every params model: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
