"""Sweep definitions: the trials of a `sweeps.<name>` section and the summary file a sweep writes.

A sweep names a job and the settings to vary: a `grid` (dotted key -> values, crossed) and/or named
`variants` (name -> {dotted key: value}); keys are relative to `jobs.<job>.`. `base` (a partial job,
nested like `jobs.<job>`) is merged into every trial. This module holds no Ray code: the runner is
tune.py, the tables that read the summaries are ablations.py; both import from here.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from densepred.config import Params, SweepCfg
from densepred.io import atomic_path
from densepred.params_loading import apply_override, flatten_keys, validate

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclasses.dataclass(frozen=True)
class Trial:
    """One setting of a sweep: a variant name and its overrides, dotted keys relative to the job."""

    variant: str
    overrides: dict[str, Any]
    shared: tuple[str, ...] = ()  # keys of `overrides` that come from the sweep's `base` (every trial)

    def setting(self) -> str:
        """Human-readable overrides that make this trial differ, e.g. `num_queries=8`; `default` for none."""
        own = {k: v for k, v in self.overrides.items() if k not in self.shared}
        if not own:
            return "default"
        return ", ".join(f"{key.rsplit('.', 1)[-1]}={value_text(v)}" for key, v in own.items())


def expand_trials(sweep: SweepCfg, name: str = "sweep") -> list[Trial]:
    """The trials of a sweep in declared order: variants crossed with the grid's cartesian product,
    the first `max_trials` of them when the sweep sets it (a rehearsal's short sweeps).

    A grid point is named after the last component of each key and its value (`num_queries_8`,
    `decoder_layers_1-1-1`; several keys joined by `__`); with variants as well, `<variant>__<point>`.
    Names must be unique and file-system safe; a grid key that a variant also sets is an error.
    """
    variants = sweep.variants or {"": {}}
    for variant in sweep.variants:
        if not _SAFE_NAME.match(variant):
            raise ValueError(
                f"sweeps.{name}.variants: name {variant!r} must start with a letter or digit and use only "
                "letters, digits, '.', '_' and '-' (it names the trial folder)"
            )
    keys = list(sweep.grid)
    empty = [k for k in keys if not sweep.grid[k]]
    if empty:
        raise ValueError(f"sweeps.{name}.grid: no values for {empty}")
    points = list(itertools.product(*(sweep.grid[k] for k in keys))) if keys else [()]
    shared_base = flatten_keys(sweep.base)
    trials: list[Trial] = []
    for variant, base in variants.items():
        for point in points:
            clash = sorted(set(base) & set(keys))
            if clash:
                raise ValueError(f"sweeps.{name}: variant {variant!r} sets grid key(s) {clash}")
            grid_name = "__".join(f"{k.rsplit('.', 1)[-1]}_{_slug(v)}" for k, v in zip(keys, point))
            label = "__".join(x for x in (variant, grid_name) if x)
            own = {**base, **dict(zip(keys, point))}
            shared = tuple(k for k in shared_base if k not in own)
            trials.append(Trial(label, {**shared_base, **own}, shared))
    seen: set[str] = set()
    for trial in trials:
        if trial.variant in seen:
            raise ValueError(f"sweeps.{name}: two settings are both named {trial.variant!r}; use variants")
        seen.add(trial.variant)
    return trials if sweep.max_trials is None else trials[: sweep.max_trials]


def _slug(value: Any) -> str:
    """A value as a file-name fragment: [1, 1, 1] -> '1-1-1', True -> 'true', 0.5 -> '0.5'."""
    if isinstance(value, list | tuple):
        return "-".join(_slug(v) for v in value)
    return re.sub(r"[^A-Za-z0-9.]+", "_", value_text(value)).strip("_") or "none"


def value_text(value: Any) -> str:
    """A value as shown in trial names, summaries and MLflow params: JSON for bools/None, lists bracketed."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    return str(value)


def trial_params(params: Params, job: str, trial: Trial, source: str = "sweep") -> Params:
    """`params` with the trial's overrides applied under `jobs.<job>.`, validated as a whole."""
    tree = params.model_dump(mode="json")
    for key, value in trial.overrides.items():
        parts = ["jobs", job, *key.split(".")]
        apply_override(tree, parts, value, source=f"{source} variant {trial.variant!r}")
    return validate(tree, f"{source} variant {trial.variant!r}")


def write_summary(frame: pd.DataFrame, path: Path) -> Path:
    """Write the summary CSV atomically with a fixed float format (byte-stable for DVC and git)."""
    with atomic_path(Path(path)) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n")
    return Path(path)


def read_summary(path: str | Path) -> pd.DataFrame:
    """Read a sweep's summary CSV, with a clear error when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"sweep summary not found: {path} (run `densepred tune` for that sweep first)"
        )
    return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"variant": str, "error": str})


__all__ = ["Trial", "expand_trials", "read_summary", "trial_params", "write_summary"]
