"""Criteria of the per-pixel models: MQTransformer, the multi-task baselines and DeepLabv3+.

One `TaskLossCriterion` class, two registered factories that differ only in their defaults:

| model | semseg | depth | normals | edge |
|---|---|---|---|---|
| mqtransformer, mtl/stl_baseline | CE x1 | L1 x1 | L1, normalised prediction, x10 | balanced BCE x50 |
| deeplabv3plus | CE x1 | Charbonnier x1 | squared L2, unit vectors, x1 | balanced BCE x50 |

MQTransformer (Sec. III-C, Eq. 9) and its ATRC code base (`get_criterion` in `src/model/builder.py`) set
the first row, with ignore label 255 and edge positive weight 0.95 (`edge_pos_weight`; 0.8 in the released
code). The PolyMaX paper trains its DeepLabv3+ baseline with "the same configuration" as PolyMaX per task
except that depth "requires the robust Charbonnier loss" (Sec. 4.3); PolyMaX's normal loss is "simply L2
loss" (Sec. 4.1), so the baseline's normals loss is the squared L2 distance between unit vectors. The
PolyMaX paper has no edge task; DeepLabv3+ reuses the balanced BCE x50 of the first row if asked for
edges. `depth_loss` ("l1" | "charbonnier") and `normals_loss` ("l1" | "l2") switch either model to the
other variant.

Returned dict (losses/__init__.py contract): one entry per term, named "<task>/<term>" ("semseg/ce",
"depth/l1", "depth/charbonnier", "normals/l1", "normals/l2", "edge/bce"), holding the *weighted* term,
and "total", their sum. `weights` overrides the weight of any of this criterion's term names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from densepred.losses.depth import charbonnier, depth_l1, depth_valid_mask
from densepred.losses.edges import balanced_bce, edge_valid_mask
from densepred.losses.normals import normals_l1, normals_l2, normals_valid_mask
from densepred.losses.registry import register_criterion
from densepred.tasks import IGNORE_INDEX, TASKS, dataset_info

DEPTH_LOSSES = ("l1", "charbonnier")
NORMALS_LOSSES = ("l1", "l2")
MTL_TASK_WEIGHTS = {"semseg": 1.0, "depth": 1.0, "normals": 10.0, "edge": 50.0}
DEEPLAB_TASK_WEIGHTS = {"semseg": 1.0, "depth": 1.0, "normals": 1.0, "edge": 50.0}


def semseg_ce(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Pixel cross-entropy averaged over labelled pixels (label 255 ignored).

    `logits` (B,C,H,W) with C = `num_classes`, `labels` (B,H,W) int64 in [0, C) or 255. Out-of-range
    labels raise ValueError instead of a device assert; a batch with no labelled pixel gives a zero
    connected to the graph (PyTorch's mean would be NaN).
    """
    if logits.dim() != 4 or logits.shape[1] != num_classes:
        raise ValueError(f"semseg: logits must be (B,{num_classes},H,W), got {tuple(logits.shape)}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(labels.shape) != expected or labels.dtype != torch.int64:
        raise ValueError(
            f"semseg: labels must be int64 {expected} (255 = ignore), "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )
    labelled = labels != IGNORE_INDEX
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    bad = labelled & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        raise ValueError(
            f"semseg: label {int(labels[bad][0])} outside [0, {num_classes}) and not the ignore value 255"
        )
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)


class TaskLossCriterion(nn.Module):
    """Weighted sum of one loss term per task (see the module docstring for the terms and weights)."""

    def __init__(
        self,
        tasks: Sequence[str],
        dataset: str,
        task_weights: Mapping[str, float],
        weights: Mapping[str, float] | None = None,
        depth_loss: str = "l1",
        normals_loss: str = "l1",
        edge_pos_weight: float = 0.95,
        charbonnier_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        self.tasks = _check_tasks(tasks)
        self.num_classes = dataset_info(dataset).num_classes
        self.dataset = dataset
        if depth_loss not in DEPTH_LOSSES:
            raise ValueError(f"depth_loss must be one of {list(DEPTH_LOSSES)}, got {depth_loss!r}")
        if normals_loss not in NORMALS_LOSSES:
            raise ValueError(f"normals_loss must be one of {list(NORMALS_LOSSES)}, got {normals_loss!r}")
        if not 0.0 < edge_pos_weight < 1.0:
            raise ValueError(f"edge_pos_weight must be in (0, 1), got {edge_pos_weight}")
        if charbonnier_eps <= 0:
            raise ValueError(f"charbonnier_eps must be > 0, got {charbonnier_eps}")
        self.depth_loss, self.normals_loss = depth_loss, normals_loss
        self.edge_pos_weight, self.charbonnier_eps = float(edge_pos_weight), float(charbonnier_eps)
        self.term_names = {t: f"{t}/{self._term(t)}" for t in self.tasks}
        self.weights = {self.term_names[t]: float(task_weights[t]) for t in self.tasks}
        for key, value in (weights or {}).items():
            if key not in self.weights:
                raise ValueError(
                    f"unknown loss weight {key!r}; this criterion's terms are {sorted(self.weights)}"
                )
            self.weights[key] = float(value)

    def _term(self, task: str) -> str:
        return {"semseg": "ce", "depth": self.depth_loss, "normals": self.normals_loss, "edge": "bce"}[task]

    def _task_loss(self, task: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if task == "semseg":
            return semseg_ce(pred, target, self.num_classes)
        if task == "depth":
            valid = depth_valid_mask(target)
            if self.depth_loss == "l1":
                return depth_l1(pred, target, valid)
            return charbonnier(pred, target, valid, eps=self.charbonnier_eps)
        if task == "normals":
            loss = normals_l1 if self.normals_loss == "l1" else normals_l2
            return loss(pred, target, normals_valid_mask(target), normalize=True)
        return balanced_bce(pred, target, edge_valid_mask(target), pos_weight=self.edge_pos_weight)

    def forward(
        self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        for task in self.tasks:
            if task not in outputs:
                raise ValueError(f"model outputs have no {task!r} prediction (keys: {sorted(outputs)})")
            if task not in batch:
                raise ValueError(f"batch has no {task!r} ground truth (keys: {sorted(batch)})")
            name = self.term_names[task]
            losses[name] = self.weights[name] * self._task_loss(task, outputs[task], batch[task])
        losses["total"] = torch.stack(list(losses.values())).sum()
        return losses

    def extra_repr(self) -> str:
        return f"dataset={self.dataset!r}, weights={self.weights}, edge_pos_weight={self.edge_pos_weight}"


def _check_tasks(tasks: Sequence[str]) -> list[str]:
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    if not tasks or any(t not in TASKS for t in tasks) or len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must be distinct names from {list(TASKS)}, got {tasks}")
    return tasks


@register_criterion("mqtransformer", "mtl_baseline", "stl_baseline")
def multitask_criterion(
    tasks: Sequence[str],
    dataset: str,
    weights: Mapping[str, float] | None = None,
    edge_pos_weight: float = 0.95,
    depth_loss: str = "l1",
    normals_loss: str = "l1",
    charbonnier_eps: float = 1e-3,
) -> TaskLossCriterion:
    """MQTransformer / baselines: CE 1, depth L1 1, normals L1 (normalised) 10, edge balanced BCE 50."""
    return TaskLossCriterion(
        tasks, dataset, MTL_TASK_WEIGHTS, weights, depth_loss, normals_loss, edge_pos_weight, charbonnier_eps
    )


@register_criterion("deeplabv3plus")
def deeplab_criterion(
    tasks: Sequence[str],
    dataset: str,
    weights: Mapping[str, float] | None = None,
    edge_pos_weight: float = 0.95,
    depth_loss: str = "charbonnier",
    normals_loss: str = "l2",
    charbonnier_eps: float = 1e-3,
) -> TaskLossCriterion:
    """DeepLabv3+ (PolyMaX baseline): CE 1, depth Charbonnier 1, normals L2 1, edge balanced BCE 50."""
    return TaskLossCriterion(
        tasks,
        dataset,
        DEEPLAB_TASK_WEIGHTS,
        weights,
        depth_loss,
        normals_loss,
        edge_pos_weight,
        charbonnier_eps,
    )
