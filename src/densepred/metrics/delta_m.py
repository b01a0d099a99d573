"""The multi-task performance change Delta_m of MTI-Net / ATRC / InvPT.

Delta_m = (1/T) sum_t s_t (M_t^multi - M_t^single) / M_t^single x 100 %, with s_t = +1 when higher is
better (mIoU, odsF) and -1 when lower is better (depth RMSE, mean angular error): MQTransformer
paper Sec. IV-A "Evaluation Metrics", after ATRC, as the MTI-Net/ATRC/InvPT evaluation code computes
it (docs/protocols.md, "Delta_m"). Positive means the multi-task model beats its single-task
baselines on average.

Two entry points, one formula:

- `delta_m(multi, single, higher_is_better)`: over any named metrics, all three mappings sharing keys.
- `multitask_delta_m(multi, references, tasks)`: what the results tables need. `multi` is the flat
  evaluation result of the multi-task job, `references[task]` the flat result of that task's
  single-task job; each task contributes its `NYUD_DELTA_M_METRICS` entry.

Both are strict: a missing reference, a missing or non-finite metric, or a zero single-task value
raise ValueError naming it. A job without references at all has no Delta_m; the caller decides what
to show for it (the tables leave the cell empty), so no NaN ever stands for a broken input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

# The metric each task contributes on NYUD-v2 and its direction, as in the MTI-Net/ATRC/InvPT tables.
# Their mIoU is the mean over all classes, a class absent from prediction and ground truth counting
# 0 (`semseg/miou_all`; docs/protocols.md "Semantic segmentation").
NYUD_DELTA_M_METRICS: dict[str, tuple[str, bool]] = {
    "semseg": ("semseg/miou_all", True),
    "depth": ("depth_mtl/rms", False),
    "normals": ("normals/mean", False),
    "edge": ("edge/odsf", True),
}


def delta_m(
    multi: Mapping[str, float], single: Mapping[str, float], higher_is_better: Mapping[str, bool]
) -> float:
    """Delta_m in percent over the metrics named by `higher_is_better` (all three mappings share keys)."""
    keys = set(higher_is_better)
    if not keys:
        raise ValueError("delta_m: higher_is_better names no metric")
    for name, values in (("multi", multi), ("single", single)):
        if set(values) != keys:
            raise ValueError(f"delta_m: {name} has metrics {sorted(values)}, expected exactly {sorted(keys)}")
    total = 0.0
    for key in sorted(keys):
        m, s = float(multi[key]), float(single[key])
        if not (math.isfinite(m) and math.isfinite(s)):
            raise ValueError(f"delta_m: metric {key!r} is not finite (multi {m}, single {s})")
        if s == 0.0:
            raise ValueError(f"delta_m: single-task value of {key!r} is 0; the relative change is undefined")
        sign = 1.0 if higher_is_better[key] else -1.0
        total += sign * (m - s) / s
    return 100.0 * total / len(keys)


def multitask_delta_m(
    multi: Mapping[str, object],
    references: Mapping[str, Mapping[str, object]],
    tasks: Sequence[str],
    metrics: Mapping[str, tuple[str, bool]] = NYUD_DELTA_M_METRICS,
) -> float:
    """Delta_m in percent of a multi-task result against one single-task result per task.

    `multi` and each `references[task]` are flat evaluation results (`{"semseg/miou_all": ...}`, as
    `densepred evaluate` writes them); `metrics` maps each task to (metric key, higher is better).
    Every task of `tasks` needs a reference holding its metric, and `multi` needs them all.
    """
    if not tasks:
        raise ValueError("delta_m: no task given")
    unknown = [task for task in tasks if task not in metrics]
    if unknown:
        raise ValueError(f"delta_m: no Delta_m metric for task(s) {unknown}; known: {sorted(metrics)}")
    missing = [task for task in tasks if task not in references]
    if missing:
        raise ValueError(f"delta_m: no single-task reference for task(s) {missing}")
    multi_values: dict[str, float] = {}
    single_values: dict[str, float] = {}
    higher: dict[str, bool] = {}
    for task in tasks:
        key, higher[key] = metrics[task]
        for name, result, values in (
            ("multi-task result", multi, multi_values),
            (f"{task} reference", references[task], single_values),
        ):
            if key not in result:
                raise ValueError(f"delta_m: the {name} has no {key!r}")
            values[key] = float(result[key])  # type: ignore[arg-type]
    return delta_m(multi_values, single_values, higher)
