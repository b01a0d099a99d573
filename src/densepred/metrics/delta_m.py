"""The multi-task performance change Delta_m of MTI-Net / ATRC / InvPT.

Delta_m = (1/T) sum_t s_t (M_t^multi - M_t^single) / M_t^single x 100 %, with s_t = +1 when higher is
better (mIoU, odsF) and -1 when lower is better (depth RMSE, mean angular error)
(reference/mqtransformer-and-mtl-protocol.md §5.5). Positive means the multi-task model beats its
single-task baselines on average.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# The metric each task contributes on NYUD-v2 and its direction, as in MTI-Net/ATRC/InvPT tables.
NYUD_DELTA_M_METRICS: dict[str, tuple[str, bool]] = {
    "semseg": ("semseg/miou", True),
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
