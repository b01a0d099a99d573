"""Task names and per-dataset facts shared by data, models, losses, metrics and tables.

Tensor conventions (docs/conventions.md): image float32 (3,H,W) in [0,1]; semseg int64 (H,W), 255 = ignore;
depth float32 (1,H,W) metres, 0 = invalid; normals float32 (3,H,W) unit vectors in the camera frame
(x right, y down, z forward), zero vector = invalid; edge float32 (1,H,W) in {0,1}.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = 255
TASKS = ("semseg", "depth", "normals", "edge")


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset that models and losses need."""

    name: str
    num_classes: int
    max_depth: float
    tasks: tuple[str, ...]


DATASETS: dict[str, DatasetInfo] = {
    # NYUD-v2: 40-class label set (Gupta et al.), depth capped at 10 m (PolyMaX Sec. 4.1).
    "nyud": DatasetInfo("nyud", num_classes=40, max_depth=10.0, tasks=TASKS),
    # Taskonomy: 17 semantic classes (COCO subset), depth up to 128 m (PolyMaX Sec. 4.1).
    "taskonomy": DatasetInfo("taskonomy", num_classes=17, max_depth=128.0, tasks=TASKS),
}


def dataset_info(name: str) -> DatasetInfo:
    """Return the facts for dataset `name`, with a clear error for an unknown one."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}") from None
