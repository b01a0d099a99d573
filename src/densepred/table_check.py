"""Does a rebuilt results table reproduce a committed one? Cell by cell, within stated tolerances.

CPU kernels are chosen by instruction set and vendor (oneDNN, MKL, ATen's vectorised loops), so a
run on another x86-64 machine rounds differently and its weights drift apart over training; each
machine reproduces itself bitwise (README, "Reproducibility"). The default table is therefore
compared with the committed one within tolerances on its primary metrics:

    depth_rms, normals_mean      within 1 % of the committed value (relative)
    miou_pct, edge_odsf_pct      within 0.3 points (absolute, percent)
    delta_m_pct                  within 1 point (absolute, percent)

Every other column must be equal as text: the rows (model, job, tasks, seeds), the cost columns and,
for metric columns outside the list, nothing (they follow the primary ones and are not checked).
`densepred check-table BUILT COMMITTED` prints the cells that differ beyond tolerance and exits 1.

With `exact` (`--exact`) every cell must be equal as text: what a profile with portable CPU kernels
(`runtime.cpu_kernels: portable`, the smoke default) promises on any x86-64 machine with AVX2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class Tolerance:
    """How far a cell may move: `relative` (a fraction of the committed value) or `absolute`."""

    relative: float = 0.0
    absolute: float = 0.0

    def allows(self, built: float, committed: float) -> bool:
        if math.isnan(built) or math.isnan(committed):
            return math.isnan(built) and math.isnan(committed)
        limit = max(self.relative * abs(committed), self.absolute)
        return abs(built - committed) <= limit + 1e-9

    def __str__(self) -> str:
        return f"{self.relative:.0%} relative" if self.relative else f"{self.absolute:g} absolute"


# The primary metric of each task and Delta_m (issue-level targets, README "Reproducibility").
TOLERANCES: dict[str, Tolerance] = {
    "depth_rms": Tolerance(relative=0.01),
    "normals_mean": Tolerance(relative=0.01),
    "miou_pct": Tolerance(absolute=0.3),
    "edge_odsf_pct": Tolerance(absolute=0.3),
    "delta_m_pct": Tolerance(absolute=1.0),
}
# Describe a row (job and seed identify it); equal as text.
KEY_COLUMNS = ("model", "backbone", "pretraining", "tasks", "profile", "dataset", "job", "seeds", "seed")
# Deterministic functions of the architecture; equal as text.
EXACT_COLUMNS = ("params_m", "gmacs", "gflops_2_per_mac")


@dataclass(frozen=True)
class CellDiff:
    row: str
    column: str
    built: str
    committed: str
    allowed: str

    def __str__(self) -> str:
        return f"{self.row}: {self.column} {self.committed} -> {self.built} (allowed: {self.allowed})"


def _read(path: Path) -> pd.DataFrame:
    if not Path(path).is_file():
        raise FileNotFoundError(f"table not found: {path}")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _row_key(row: pd.Series, keys: list[str]) -> str:
    return " seed ".join(row[k] for k in keys if row[k] != "")


def _number(text: str) -> float:
    return float(text) if text != "" else math.nan


def table_differences(built: Path, committed: Path, exact: bool = False) -> tuple[list[CellDiff], int]:
    """The cells of table `built` that differ from `committed` beyond tolerance (with `exact`: at
    all), and the number of cells that differ at all (0: bitwise equal as text). Rows are matched by
    their key columns; a row or column present in one table only is a difference."""
    new, old = _read(built), _read(committed)
    diffs: list[CellDiff] = []
    if list(new.columns) != list(old.columns):
        missing = [c for c in old.columns if c not in new.columns]
        extra = [c for c in new.columns if c not in old.columns]
        diffs.append(CellDiff("header", "columns", f"+{extra}", f"-{missing}", "the same columns"))
        return diffs, len(diffs)
    keys = [k for k in ("job", "seed") if k in new.columns]
    new_rows = {_row_key(r, keys): r for _, r in new.iterrows()}
    old_rows = {_row_key(r, keys): r for _, r in old.iterrows()}
    for key in sorted(set(new_rows) ^ set(old_rows)):
        where = "built only" if key in new_rows else "committed only"
        diffs.append(CellDiff(key, "row", where, "", "the same rows"))
    changed = len(diffs)
    for key in [k for k in old_rows if k in new_rows]:
        a, b = new_rows[key], old_rows[key]
        for column in new.columns:
            if a[column] == b[column]:
                continue
            changed += 1
            if exact:
                diffs.append(CellDiff(key, column, a[column], b[column], "equal (exact)"))
            elif column in TOLERANCES:
                tol = TOLERANCES[column]
                if not tol.allows(_number(a[column]), _number(b[column])):
                    diffs.append(CellDiff(key, column, a[column], b[column], str(tol)))
            elif column in KEY_COLUMNS or column in EXACT_COLUMNS:
                diffs.append(CellDiff(key, column, a[column], b[column], "equal"))
    return diffs, changed


def check_report(built: Path, committed: Path, exact: bool = False) -> tuple[bool, str]:
    """(reproduced?, a report in words) for `densepred check-table` and the end-to-end test."""
    diffs, changed = table_differences(built, committed, exact)
    if not diffs:
        verdict = "bitwise equal" if changed == 0 else f"{changed} cells moved, all within tolerance"
        return True, f"{built} reproduces {committed}: {verdict}"
    beyond = "differ" if exact else "beyond tolerance"
    lines = [f"{built} does not reproduce {committed}: {len(diffs)} cells {beyond} ({changed} moved)"]
    lines += [f"  {d}" for d in diffs]
    return False, "\n".join(lines)


# How far a model's primary metric must beat the trivial reference of its task (table 2's reference
# rows, reference.py), in table units. Every smoke model clears these on each of seeds 0, 1 and 2,
# its mean by at least 11 standard deviations (README "Current smoke results"; bench/bench_learning.py),
# and so do the smoke sweeps' trials (results/ablation_*.csv).
REFERENCE_MARGINS = {"miou_pct": 1.0, "depth_rms": 0.05, "normals_mean": 10.0, "edge_odsf_pct": 20.0}
PRIMARY_COLUMN = {
    "semseg": "miou_pct",
    "depth": "depth_rms",
    "normals": "normals_mean",
    "edge": "edge_odsf_pct",
}
LOWER_IS_BETTER = {"depth_rms", "normals_mean"}


def margin_failures(rows: pd.DataFrame, references: pd.DataFrame, label: str = "job") -> list[str]:
    """Rows of `rows` (table 2's model rows, or an ablation table's trials) whose primary metric of
    some task does not beat that task's reference row (`references`: table 2's rows of model
    `reference`) by `REFERENCE_MARGINS`; one line each. A task is a row's when its column has a value."""
    by_task = {r["tasks"]: r for _, r in references.iterrows()}
    failures = []
    for _, row in rows.iterrows():
        for task, column in PRIMARY_COLUMN.items():
            value = pd.to_numeric(row.get(column), errors="coerce")
            if pd.isna(value):
                continue
            reference = float(by_task[task][column])
            gain = reference - value if column in LOWER_IS_BETTER else value - reference
            if not gain >= REFERENCE_MARGINS[column]:
                failures.append(f"{row[label]}: {column} {value:.4f}, reference {reference:.4f}")
    return failures
