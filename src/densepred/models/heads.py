"""Building blocks shared by the per-pixel models (MQTransformer, DeepLabv3+, multi-task baselines).

* `check_tasks`, `task_channels`: which tasks a model predicts and how many output channels each has.
* `build_backbone`: the timm backbone with the defaults these models need (HRNet branch outputs).
* `ConvHead`: the conv prediction head of ATRC/MQTransformer (Conv3x3-BN-ReLU, Conv1x1).
* `TaskOutput`: turns a head's raw map into the output contract (input resolution; positive depth in
  metres; unit normals; logits for semseg and edge).
* `concat_pyramid`: resize every backbone scale to the stride-4 size and concatenate (ATRC input fusion).
* `AddFusion`, `ConcatFusion`: the two ways MQTransformer turns the pyramid into a stride-4 feature.

Output contract (models/registry.py): semseg logits (B,C,H,W), depth (B,1,H,W) positive metres,
normals (B,3,H,W) unit vectors, edge logits (B,1,H,W), all at the input resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from densepred.models.backbones import Backbone, create_backbone
from densepred.ops import l2_normalize
from densepred.tasks import TASKS

# Smallest depth a model can output (metres): keeps depth strictly positive, so log-depth metrics and
# losses never meet log(0), while staying far below any real depth (NYUD-v2 minimum is ~0.5 m).
MIN_DEPTH = 1e-3

DEPTH_ACTIVATIONS = ("softplus", "sigmoid")


def depth_offset(activation: str, depth_init: float | None, min_depth: float, max_depth: float) -> float:
    """The constant added to a raw depth value before its activation so that raw 0 gives `depth_init`.

    A depth head whose last layer starts near zero predicts softplus(0) = 0.69 m (softplus) or
    max_depth / 2 (sigmoid: 5 m on NYUD-v2, 64 m on Taskonomy) at initialisation. Adam moves a bias by
    about the learning rate per step, so a short schedule spends most of its steps shifting that
    constant towards the scene's typical depth. `depth_init` (metres) starts the head there instead;
    None keeps the plain activation (offset 0), which is what the papers' heads do.
    """
    if activation not in DEPTH_ACTIVATIONS:
        raise ValueError(f"depth_activation must be one of {list(DEPTH_ACTIVATIONS)}, got {activation!r}")
    if depth_init is None:
        return 0.0
    if not min_depth < depth_init < max_depth:
        raise ValueError(f"depth_init must lie in ({min_depth}, {max_depth}) m, got {depth_init}")
    if activation == "softplus":
        v = depth_init - min_depth
        return v + math.log(-math.expm1(-v))  # inverse of softplus
    p = (depth_init - min_depth) / (max_depth - min_depth)
    return math.log(p / (1.0 - p))


def positive_depth(
    x: torch.Tensor, activation: str, min_depth: float, max_depth: float, offset: float = 0.0
) -> torch.Tensor:
    """Raw values -> metres: min + softplus(x + offset), or min + sigmoid(x + offset) * (max - min)."""
    if offset:
        x = x + offset
    if activation == "softplus":
        return min_depth + F.softplus(x)
    return min_depth + torch.sigmoid(x) * (max_depth - min_depth)


def check_tasks(tasks: Sequence[str]) -> list[str]:
    """Return `tasks` as a list after checking it is a non-empty list of distinct known task names."""
    if isinstance(tasks, str) or not isinstance(tasks, Sequence):
        raise ValueError(f"tasks must be a list of task names from {list(TASKS)}, got {tasks!r}")
    tasks = list(tasks)
    if not tasks:
        raise ValueError(f"tasks must name at least one of {list(TASKS)}, got an empty list")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; expected names from {list(TASKS)}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must be distinct, got {tasks}")
    return tasks


def task_channels(task: str, num_classes: int) -> int:
    """Output channels of `task`: num_classes logits for semseg, 1 for depth and edge, 3 for normals."""
    if task == "semseg":
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 for semseg, got {num_classes}")
        return num_classes
    return {"depth": 1, "normals": 3, "edge": 1}[task]


def scaled(channels: int, width_mult: float, divisor: int = 1) -> int:
    """`channels * width_mult`, rounded to a positive multiple of `divisor` (smoke-width models)."""
    if width_mult <= 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    return max(divisor, round(channels * width_mult / divisor) * divisor)


def build_backbone(
    name: str,
    pretrained_file: str | None = None,
    img_size: tuple[int, int] | None = None,
    backbone_kwargs: dict | None = None,
) -> Backbone:
    """Build the timm backbone `name` (random init unless `pretrained_file`).

    For HRNet the default timm feature output goes through the classification "incre" modules
    (128/256/512/1024 channels for W18); MQTransformer and ATRC take the raw high-resolution branches
    (18/36/72/144 channels for HRNet-18, 270 concatenated; released `src/model/backbones/hrnet.py`), so
    `feature_location=""` is set unless `backbone_kwargs` says otherwise.
    """
    kwargs = dict(backbone_kwargs or {})
    if name.startswith("hrnet"):
        kwargs.setdefault("feature_location", "")
    return create_backbone(name, pretrained_file=pretrained_file, img_size=img_size, **kwargs)


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False, as the released MQTransformer/ATRC code); no-op if equal."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def concat_pyramid(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Resize every feature map to the size of the first (stride 4) and concatenate along channels.

    This is the input fusion of the released MQTransformer/ATRC code (`_transform_inputs` in
    `src/model/heads/base.py`): e.g. 96+192+384+768 = 1440 channels for Swin-T, 18+36+72+144 = 270 for
    HRNet-18.
    """
    size = features[0].shape[-2:]
    return torch.cat([resize(f, size) for f in features], dim=1)


class ConvHead(nn.Sequential):
    """Conv3x3 (no bias) -> BatchNorm -> ReLU -> Conv1x1, the prediction head of ATRC/MQTransformer.

    MQTransformer (released `mqformer_head.py`): 256 -> 64 -> K_t. ATRC's FCNHead baseline is the same
    with hidden = in/4. The last conv is initialised N(0, 0.01) with zero bias as in that code, so the
    raw outputs start near zero.
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, out_channels, 1),
        )
        nn.init.normal_(self[-1].weight, std=0.01)
        nn.init.zeros_(self[-1].bias)


class TaskOutput(nn.Module):
    """Map a head's raw (B,K,h,w) output to the output contract at the input size.

    The raw map is first resized bilinearly to `size` (the released code upsamples logits the same
    way), then:

    * semseg, edge: unchanged logits.
    * depth: positive metres. `depth_activation="softplus"` (default): MIN_DEPTH + softplus(x). The
      released MQTransformer/ATRC code regresses metres with no activation and only clamps at >= 0 at
      evaluation; softplus is the smallest change that guarantees a positive output (it is the
      identity for large x), and it does not depend on the dataset's depth range, so a Taskonomy
      (128 m) checkpoint finetunes on NYUD (10 m) unchanged. `"sigmoid"`: MIN_DEPTH + sigmoid(x) *
      (max_depth - MIN_DEPTH), the bounded head of ViP-DeepLab in deeplab2 (an option).
      `depth_init` (metres, default None = off) shifts the raw value so that the untrained head
      predicts that depth (`depth_offset`; a departure for short schedules, off in the paper profile).
    * normals: L2-normalised over channels, so they are unit vectors in train and eval mode (the
      released code normalises inside the loss and at evaluation; normalising twice is idempotent).
    """

    def __init__(
        self,
        task: str,
        max_depth: float = 10.0,
        depth_activation: str = "softplus",
        depth_init: float | None = None,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}")
        if max_depth <= MIN_DEPTH:
            raise ValueError(f"max_depth must be > {MIN_DEPTH} m, got {max_depth}")
        self.task = task
        self.max_depth = float(max_depth)
        self.depth_activation = depth_activation
        self.depth_offset = depth_offset(depth_activation, depth_init, MIN_DEPTH, self.max_depth)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        x = resize(x, size)
        if self.task == "depth":
            return positive_depth(x, self.depth_activation, MIN_DEPTH, self.max_depth, self.depth_offset)
        if self.task == "normals":
            return l2_normalize(x, dim=1, eps=1e-12)
        return x

    def extra_repr(self) -> str:
        return (
            f"task={self.task!r}, max_depth={self.max_depth}, depth_activation={self.depth_activation!r}, "
            f"depth_offset={self.depth_offset:.4g}"
        )


def task_outputs(
    tasks: Sequence[str], max_depth: float, depth_activation: str, depth_init: float | None
) -> nn.ModuleDict:
    """One `TaskOutput` per task, keyed by task name."""
    return nn.ModuleDict({t: TaskOutput(t, max_depth, depth_activation, depth_init) for t in tasks})


class AddFusion(nn.Module):
    """Paper fusion (Sec. III-B) into one task-specific feature: a 1x1 projection of each scale to
    `dim` (at that scale's resolution), bilinear upsampling to the stride-4 size, element-wise sum."""

    def __init__(self, in_channels: Sequence[int], dim: int) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        return sum(resize(p(f), size) for p, f in zip(self.proj, features, strict=True))


class ConcatFusion(nn.Module):
    """Released-code fusion (`base.py` and `mqformer_head.py`): upsample every scale to stride 4,
    concatenate, and project to `dim` with one per-pixel linear map (1x1 conv)."""

    def __init__(self, in_channels: Sequence[int], dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(sum(in_channels), dim, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.proj(concat_pyramid(features))


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of `module` (trainable or not)."""
    return sum(p.numel() for p in module.parameters())
