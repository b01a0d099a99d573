"""The meters of an evaluation run, built from (tasks, dataset) and fed from model outputs and batches.

`build_meters` names each meter by what it reports; `MetricSuite` routes the model's eval-mode
output dict and the batch dict to them and flattens their results into one dict of floats:

    meter name     reads           keys (examples)
    semseg         semseg          semseg/miou, semseg/miou_all, semseg/pixel_acc, semseg/iou_per_class/<c>
    depth_eigen    depth           depth_eigen/rms, depth_eigen/abs_rel, ..., depth_eigen/delta3
    depth_mtl      depth           depth_mtl/rms, depth_mtl/log_rms, depth_mtl/abs_rel
    normals        normals         normals/mean, normals/median, normals/rms, normals/a11_25, ...
    edge           edge (logits)   edge/odsf, edge/oisf, edge/ap

Every model is thus reported under both depth protocols. For DDP, call `suite.sync()` on every
rank after the last update and before `compute()` (see `densepred.metrics.base`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from densepred.metrics.base import Meter
from densepred.metrics.boundary import BoundaryMeter
from densepred.metrics.depth import DepthMeter
from densepred.metrics.normals import NormalsMeter
from densepred.metrics.semseg import SemsegMeter
from densepred.tasks import TASKS, dataset_info

# meter name -> the task (key of the output and batch dicts) it reads
METER_TASKS = {
    "semseg": "semseg",
    "depth_eigen": "depth",
    "depth_mtl": "depth",
    "normals": "normals",
    "edge": "edge",
}


def build_meters(
    tasks: Sequence[str],
    dataset: str,
    num_classes: int,
    boundary_thresholds: int | list[float] = 101,
    eigen_crop: bool = False,
) -> dict[str, Meter]:
    """The meters for `tasks` on `dataset`: depth gets both protocols, edges are read as logits.

    The eigen protocol caps depth at the dataset's maximum (NYUD 10 m, Taskonomy 128 m); the Eigen
    crop exists only for NYUD 480x640 frames.
    """
    info = dataset_info(dataset)
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        raise ValueError(
            f"build_meters: unknown or missing tasks {unknown or list(tasks)}; expected some of {TASKS}"
        )
    if eigen_crop and dataset != "nyud":
        raise ValueError(f"build_meters: the Eigen crop is defined for NYUD-v2 only, not {dataset!r}")
    meters: dict[str, Meter] = {}
    if "semseg" in tasks:
        meters["semseg"] = SemsegMeter(num_classes)
    if "depth" in tasks:
        meters["depth_eigen"] = DepthMeter("eigen", max_depth=info.max_depth, eigen_crop=eigen_crop)
        meters["depth_mtl"] = DepthMeter("mtl")
    if "normals" in tasks:
        meters["normals"] = NormalsMeter()
    if "edge" in tasks:
        meters["edge"] = BoundaryMeter(thresholds=boundary_thresholds, from_logits=True)
    return meters


def _flatten(prefix: str, values: Mapping[str, object]) -> dict[str, float]:
    """{"miou": 1, "iou_per_class": [a, b]} -> {"p/miou": 1.0, "p/iou_per_class/0": a, ...}."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, list | tuple):
            for index, item in enumerate(value):
                flat[f"{prefix}/{key}/{index}"] = float(item)
        else:
            flat[f"{prefix}/{key}"] = float(value)
    return flat


class MetricSuite:
    """A named set of meters updated together from (model outputs, batch) dicts."""

    def __init__(self, meters: Mapping[str, Meter]) -> None:
        unknown = sorted(set(meters) - set(METER_TASKS))
        if unknown:
            raise ValueError(
                f"MetricSuite: unknown meter name(s) {unknown}; expected some of {sorted(METER_TASKS)}"
            )
        if not meters:
            raise ValueError("MetricSuite: no meter given")
        self.meters = dict(meters)

    @classmethod
    def build(
        cls,
        tasks: Sequence[str],
        dataset: str,
        num_classes: int,
        boundary_thresholds: int | list[float] = 101,
        eigen_crop: bool = False,
    ) -> MetricSuite:
        """`MetricSuite(build_meters(...))`."""
        return cls(build_meters(tasks, dataset, num_classes, boundary_thresholds, eigen_crop))

    def update(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> None:
        """Feed each meter its task's prediction (eval-mode output) and ground truth (batch)."""
        for name, meter in self.meters.items():
            task = METER_TASKS[name]
            if task not in outputs:
                raise ValueError(
                    f"MetricSuite: model outputs have no {task!r} entry (keys: {sorted(outputs)})"
                )
            if task not in batch:
                raise ValueError(f"MetricSuite: batch has no {task!r} entry (keys: {sorted(batch)})")
            meter.update(outputs[task], batch[task])

    def compute(self) -> dict[str, float]:
        """One flat dict "<meter>/<key>" -> float over all meters."""
        result: dict[str, float] = {}
        for name, meter in self.meters.items():
            result.update(_flatten(name, meter.compute()))
        return result

    def reset(self) -> None:
        """Reset every meter."""
        for meter in self.meters.values():
            meter.reset()

    def state(self) -> dict[str, dict[str, Tensor]]:
        """Every meter's summable state, by meter name."""
        return {name: meter.state() for name, meter in self.meters.items()}

    def merge(self, other: Mapping[str, Mapping[str, Tensor]]) -> None:
        """Add another suite's `state()` (same meters)."""
        if set(other) != set(self.meters):
            raise ValueError(f"MetricSuite: cannot merge meters {sorted(other)} into {sorted(self.meters)}")
        for name, meter in self.meters.items():
            meter.merge(other[name])

    def sync(self, group=None) -> None:
        """All-reduce every meter's state over `group` (meters in sorted-name order on every rank)."""
        for name in sorted(self.meters):
            self.meters[name].sync(group)
