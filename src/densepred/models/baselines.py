"""Single-task and multi-task baselines of the MQTransformer paper (Tab. II-III), used for delta_m.

* `"mtl_baseline"`: one shared backbone and one head per task, trained jointly ("multi-task
  baseline", Fig. 1(a): encoder-focused, no task interaction).
* `"stl_baseline"`: the same network with exactly one task, trained alone ("single task baseline");
  delta_m compares each multi-task model with one such model per task (docs/protocols.md, "Delta_m").

Two head designs, because the paper uses two (Sec. IV-A, "Strong Multi-task baselines"):

* `head="fcn"`: for HRNet "we follow the same setting as ATRC": the four backbone scales upsampled
  to stride 4 and concatenated, then per task Conv3x3(C_in -> C_in/4)-BN-ReLU -> Conv1x1 (ATRC's
  FCNHead). With HRNet-18 (270 channels) and 4 NYUD tasks this gives 4.52 M parameters (paper:
  4.52 M), and 16.10 M for the four single-task models together (paper: 16.09 M).
* `head="project"`: for Swin "the baseline model has the same architecture as MQTransformer. However,
  it does not contain MQTransformer prediction heads": MQTransformer's per-task fusion into a
  256-channel task feature followed directly by its conv head (256 -> 64 -> K), i.e. MQTransformer
  without the encoder, cross-task attention and decoder.

`head=None` (default) picks "project" for transformer backbones (Swin, ViT, ...) and "fcn" otherwise,
which is how the paper's rows were built. `hidden_channels` (FCN hidden width, default C_in/4) and
`embed_dim` (project width, default 256) are scaled by `width_mult` when not given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from densepred.model_params import BaselineCfg
from densepred.models.heads import (
    AddFusion,
    ConcatFusion,
    ConvHead,
    build_backbone,
    check_tasks,
    concat_pyramid,
    scaled,
    task_channels,
    task_outputs,
)
from densepred.models.registry import register_model

HEADS = ("fcn", "project")
TRANSFORMER_PREFIXES = ("swin", "vit", "deit", "beit", "eva", "pvt", "twins", "cait", "xcit", "mvit")
PROJECT_DIM = 256  # MQTransformer task-feature width
PROJECT_HIDDEN = 64  # MQTransformer conv-head hidden width


def default_head(backbone: str) -> str:
    """The paper's baseline head for `backbone`: "project" for transformers, "fcn" (ATRC) otherwise."""
    return "project" if backbone.startswith(TRANSFORMER_PREFIXES) else "fcn"


class FCNTaskHead(nn.Module):
    """ATRC FCNHead on the concatenated pyramid: Conv3x3(C_in -> hidden)-BN-ReLU -> Conv1x1."""

    def __init__(self, in_channels: Sequence[int], hidden: int, out_channels: int) -> None:
        super().__init__()
        self.head = ConvHead(sum(in_channels), hidden, out_channels)

    def forward(self, features: Sequence[torch.Tensor], fused: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(fused if fused is not None else concat_pyramid(features))


class ProjectTaskHead(nn.Module):
    """MQTransformer without its transformer: task fusion to `dim` channels, then the conv head."""

    def __init__(
        self, in_channels: Sequence[int], dim: int, hidden: int, out_channels: int, fusion: str
    ) -> None:
        super().__init__()
        self.fusion = AddFusion(in_channels, dim) if fusion == "add" else ConcatFusion(in_channels, dim)
        self.head = ConvHead(dim, hidden, out_channels)

    def forward(self, features: Sequence[torch.Tensor], fused: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.fusion(features))


class MultiTaskBaseline(nn.Module):
    """Shared backbone + one independent head per task; forward(image) -> {task: prediction}."""

    def __init__(
        self,
        tasks: Sequence[str],
        backbone: str,
        num_classes: int = 40,
        max_depth: float = 10.0,
        head: str | None = None,
        width_mult: float = 1.0,
        hidden_channels: int | None = None,
        embed_dim: int | None = None,
        fusion: str = "add",
        pretrained_file: str | None = None,
        img_size: tuple[int, int] | None = None,
        depth_activation: str = "softplus",
        depth_init: float | None = None,
        backbone_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.tasks = check_tasks(tasks)
        self.head_type = head if head is not None else default_head(backbone)
        if self.head_type not in HEADS:
            raise ValueError(f"head must be one of {list(HEADS)} or None, got {head!r}")
        if fusion not in ("add", "concat"):
            raise ValueError(f"fusion must be 'add' or 'concat', got {fusion!r}")
        self.backbone = build_backbone(backbone, pretrained_file, img_size, backbone_kwargs)
        channels = self.backbone.channels
        self.heads = nn.ModuleDict()
        for t in self.tasks:
            out = task_channels(t, num_classes)
            if self.head_type == "fcn":
                hidden = (
                    hidden_channels if hidden_channels is not None else scaled(sum(channels) // 4, width_mult)
                )
                self.heads[t] = FCNTaskHead(channels, hidden, out)
            else:
                dim = embed_dim if embed_dim is not None else scaled(PROJECT_DIM, width_mult)
                hidden = (
                    hidden_channels if hidden_channels is not None else scaled(PROJECT_HIDDEN, width_mult)
                )
                self.heads[t] = ProjectTaskHead(channels, dim, hidden, out, fusion)
        self.outputs = task_outputs(self.tasks, max_depth, depth_activation, depth_init)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"baseline expects images (B,3,H,W), got {tuple(image.shape)}")
        features = self.backbone(image)
        fused = concat_pyramid(features) if self.head_type == "fcn" else None
        size = image.shape[-2:]
        return {t: self.outputs[t](self.heads[t](features, fused), size) for t in self.tasks}


@register_model("mtl_baseline")
def mtl_baseline(tasks: Sequence[str], backbone: str, **kwargs) -> MultiTaskBaseline:
    """Multi-task baseline: shared backbone, one head per task (see `MultiTaskBaseline`)."""
    return MultiTaskBaseline(tasks=tasks, backbone=backbone, **kwargs)


@register_model("stl_baseline")
def stl_baseline(tasks: Sequence[str], backbone: str, **kwargs) -> MultiTaskBaseline:
    """Single-task baseline: the multi-task baseline with exactly one task, trained alone."""
    tasks = check_tasks(tasks)
    BaselineCfg.check_model_tasks("stl_baseline", tasks)  # the rule lives in its params class
    return MultiTaskBaseline(tasks=tasks, backbone=backbone, **kwargs)
