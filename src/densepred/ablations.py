"""Ablation tables (results/ablation_*.csv) from the Ray Tune sweep summaries.

Each sweep under `sweeps:` in the params names the table it feeds (`table: ablation_k`, ...). A table
gets one row per sweep setting: which sweep, job, model and backbone, the variant, its setting in
words (`num_queries=8`), the trial status, and the metrics of MQTransformer Tables IV-VI (mIoU over
all classes, plus the present-classes mean as `miou_present_pct`; depth RMSE, normals mean error,
boundary odsF; PolyMaX sweeps add the Eigen-protocol depth RMSE that PolyMaX reports). Only the
columns of tasks that the table's jobs predict are present.

With a real-data profile (no `synth:` section, e.g. params/paper.yaml) the papers' numbers from
`densepred.reported.ABLATIONS` appear beside ours as `<column>_paper` and `<column>_diff`, plus
`paper_source` naming the table; the MQTransformer ablations were run with Swin-S (see reported.py).

Rows are sorted (sweeps by name, settings in declared order) and columns fixed for a given profile,
so the files are byte-stable for git and DVC diffs. Inputs: `<sweeps_dir>/<sweep>/summary.csv` as
written by `densepred tune --out <sweeps_dir>/<sweep>`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from densepred.config import Params
from densepred.io import atomic_path
from densepred.paths import SWEEP_SUMMARY
from densepred.reported import ABLATION_SOURCES, reported_ablation
from densepred.sweeps import expand_trials, read_summary

# (column, metric key in the sweep summary, task). Units as in the results tables: percent for mIoU
# and odsF, metres for depth, degrees for normals. `miou_pct` is the mean over all classes (absent
# ones count 0), the convention of MQTransformer's Tables IV-VI; `miou_present_pct` the mean over the
# classes that occur (see `densepred.tables`).
ABLATION_METRICS: list[tuple[str, str, str]] = [
    ("miou_pct", "semseg/miou_all", "semseg"),
    ("miou_present_pct", "semseg/miou", "semseg"),
    ("depth_rms", "depth_eigen/rms", "depth"),
    ("depth_rms_mtl", "depth_mtl/rms", "depth"),
    ("normals_mean", "normals/mean", "normals"),
    ("edge_odsf_pct", "edge/odsf", "edge"),
]
META_COLUMNS = ["sweep", "job", "model", "backbone", "variant", "setting", "status"]
FLOAT_FORMAT = "%.4f"


def table_names(params: Params) -> list[str]:
    """The ablation tables the profile's sweeps feed, sorted."""
    return sorted({s.table for s in params.sweeps.values()})


def ablation_table(params: Params, table: str, sweeps_dir: str | Path) -> pd.DataFrame:
    """The rows of one ablation table from the summaries of the sweeps that feed it."""
    sweeps = sorted(name for name, s in params.sweeps.items() if s.table == table)
    if not sweeps:
        raise ValueError(f"no sweep feeds table {table!r}; tables: {table_names(params)}")
    tasks = {t for name in sweeps for t in params.jobs[params.sweeps[name].job].tasks}
    metrics = [(c, k) for c, k, task in ABLATION_METRICS if task in tasks]
    rows = [row for name in sweeps for row in _sweep_rows(params, name, Path(sweeps_dir), metrics)]
    frame = pd.DataFrame(rows, columns=META_COLUMNS + [c for c, _ in metrics])
    if params.compares_to_papers:
        frame = _with_reported(frame, [c for c, _ in metrics])
    return frame


def _sweep_rows(
    params: Params, sweep: str, sweeps_dir: Path, metrics: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    """One row per setting of `sweep`, in declared order, checked against the sweep's summary."""
    cfg = params.sweeps[sweep]
    job = params.jobs[cfg.job]
    path = sweeps_dir / sweep / SWEEP_SUMMARY
    summary = read_summary(path)
    trials = expand_trials(cfg, sweep)
    expected = [t.variant for t in trials]
    found = list(summary["variant"])
    if sorted(found) != sorted(expected):
        raise ValueError(
            f"{path}: variants {found} do not match sweeps.{sweep} in the params ({expected}); "
            "rerun the sweep"
        )
    by_variant = summary.set_index("variant")
    rows = []
    for trial in trials:
        result = by_variant.loc[trial.variant]
        row: dict[str, Any] = {
            "sweep": sweep,
            "job": cfg.job,
            "model": job.model.name,
            "backbone": job.model.backbone,
            "variant": trial.variant,
            "setting": trial.setting(),
            "status": result["status"],
        }
        for column, key in metrics:
            value = result[key] if key in result.index else math.nan
            row[column] = float(value) if pd.notna(value) else math.nan
        rows.append(row)
    return rows


def _with_reported(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Add `<col>_paper` and `<col>_diff` beside each metric the papers report, and `paper_source`."""
    out = frame.copy()
    reported = [reported_ablation(s, v) for s, v in zip(frame["sweep"], frame["variant"])]
    for column in columns:
        paper = [r.get(column, math.nan) for r in reported]
        if all(math.isnan(v) for v in paper):
            continue
        position = out.columns.get_loc(column) + 1
        out.insert(position, f"{column}_paper", paper)
        out.insert(position + 1, f"{column}_diff", out[column] - out[f"{column}_paper"])
    out["paper_source"] = [ABLATION_SOURCES.get(s, "") if r else "" for s, r in zip(frame["sweep"], reported)]
    return out


def write_ablation_tables(params: Params, sweeps_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write `<out_dir>/<table>.csv` for every ablation table of the profile; returns the paths."""
    written = []
    for table in table_names(params):
        frame = ablation_table(params, table, sweeps_dir)
        path = Path(out_dir) / f"{table}.csv"
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False, float_format=FLOAT_FORMAT, lineterminator="\n")
        written.append(path)
    return written


__all__ = ["ABLATION_METRICS", "ablation_table", "table_names", "write_ablation_tables"]
