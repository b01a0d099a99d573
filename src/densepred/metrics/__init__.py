"""Evaluation metrics: streaming meters for the dense-prediction protocols of PolyMaX and MQTransformer.

Each meter has `update(pred, target)` (one batch; tensors on any device, computed on that device
without per-pixel Python loops), `compute() -> dict`, `reset()`, and the summable-state protocol
`state()` / `merge(state)` / `sync(group)` for DDP (see `densepred.metrics.base`).

    SemsegMeter(num_classes)          confusion matrix over the dataset       (semseg.py)
    DepthMeter("eigen" | "mtl")       per-image (Eigen) / global (MTL) depth  (depth.py)
    NormalsMeter()                    angular error pooled over the dataset   (normals.py)
    BoundaryMeter()                   SEISM odsF/oisF/AP                      (boundary.py)
    delta_m(multi, single, higher)    multi-task performance change           (delta_m.py)
    multitask_delta_m(multi, refs, tasks)  the same from flat results, per task (delta_m.py)
    build_meters(...), MetricSuite    one evaluation run's meters             (suite.py)

Units follow the papers' tables; `UNITS` lists them per key.
"""

from densepred.metrics.base import Meter
from densepred.metrics.boundary import BoundaryMeter
from densepred.metrics.boundary_ops import HED_THRESHOLDS, boundary_thresholds
from densepred.metrics.delta_m import NYUD_DELTA_M_METRICS, delta_m, multitask_delta_m
from densepred.metrics.depth import DepthMeter
from densepred.metrics.normals import NormalsMeter
from densepred.metrics.semseg import SemsegMeter
from densepred.metrics.suite import METER_TASKS, MetricSuite, build_meters

UNITS: dict[str, dict[str, str]] = {
    "semseg": {
        "miou": "percent",
        "miou_all": "percent",
        "pixel_acc": "percent",
        "iou_per_class": "percent (NaN: class absent from prediction and ground truth)",
    },
    "depth_eigen": {
        "rms": "metres",
        "abs_rel": "ratio",
        "sq_rel": 'metres (a ratio with sq_rel="relative_squared")',
        "log10": "log10 units",
        "log_rms": "natural-log units",
        "silog": "100 x natural-log units",
        "delta1": "fraction",
        "delta2": "fraction",
        "delta3": "fraction",
    },
    "depth_mtl": {"rms": "metres", "log_rms": "natural-log units", "abs_rel": "ratio"},
    "normals": {
        "mean": "degrees",
        "median": "degrees",
        "rms": "degrees",
        "a11_25": "percent",
        "a22_5": "percent",
        "a30": "percent",
    },
    "edge": {"odsf": "percent", "oisf": "percent", "ap": "percent"},
}

__all__ = [
    "HED_THRESHOLDS",
    "METER_TASKS",
    "NYUD_DELTA_M_METRICS",
    "UNITS",
    "BoundaryMeter",
    "DepthMeter",
    "Meter",
    "MetricSuite",
    "NormalsMeter",
    "SemsegMeter",
    "boundary_thresholds",
    "build_meters",
    "delta_m",
    "multitask_delta_m",
]
