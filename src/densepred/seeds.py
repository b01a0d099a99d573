"""Statistics over seeds: the mean, spread and confidence the results tables report.

Every training chain of a job runs once per seed of the job (`seeds:` in the params, config.py), and
the tables summarise the per-seed results of each metric as three columns:

* `<column>`: the mean over the seeds that have a finite value;
* `<column>_std`: their sample standard deviation (ddof=1, the unbiased variance's square root),
  empty with fewer than two values;
* `<column>_n`: how many seeds contributed (empty where no seed has the metric).

Delta_m (MQTransformer Sec. IV-A, after ATRC) is computed per seed, pairing the multi-task run of seed
k with the single-task reference runs of the same seed k, and the table reports the mean of those
per-seed values with a 95 % confidence interval `mean -/+ t_{0.975, n-1} * std / sqrt(n)` (Student's
t, n - 1 degrees of freedom; `t_interval`). Pairing by seed removes the variation that a seed's data
order and initialisation share across the jobs of that seed. ATRC reports its NYUD-v2 numbers as
means over 5 seeds; this adds the spread to the mean.

`welch` answers the question a reader of Table 2 asks, whether two jobs differ beyond seed noise on
one metric: Welch's unequal-variance t-test over the two jobs' per-seed values
(`scipy.stats.ttest_ind(equal_var=False)`), which needs at least two seeds of each job.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Spread:
    """The summary of one metric over seeds (NaN where undefined, see the module docstring)."""

    mean: float
    std: float
    n: int


def finite(values: Sequence[float]) -> list[float]:
    """The finite values (a seed without the metric, or with an undefined one, contributes nothing)."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def spread(values: Sequence[float]) -> Spread:
    """Mean, sample standard deviation (ddof=1; NaN for fewer than two) and count of the finite values."""
    kept = finite(values)
    n = len(kept)
    if n == 0:
        return Spread(math.nan, math.nan, 0)
    mean = math.fsum(kept) / n
    if n < 2:
        return Spread(mean, math.nan, n)
    variance = math.fsum((v - mean) ** 2 for v in kept) / (n - 1)
    return Spread(mean, math.sqrt(variance), n)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The two-sided Student-t confidence interval of the mean of the finite values:
    mean -/+ t_{(1+confidence)/2, n-1} * std / sqrt(n). (NaN, NaN) with fewer than two values."""
    from scipy import stats

    s = spread(values)
    if s.n < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, df=s.n - 1)) * s.std / math.sqrt(s.n)
    return s.mean - half, s.mean + half


@dataclass(frozen=True)
class Comparison:
    """Welch's t-test of two jobs' per-seed values of one metric."""

    a: Spread
    b: Spread
    t: float
    p: float
    df: float

    def differ(self, alpha: float) -> bool:
        """True when the means differ at level `alpha` (two-sided)."""
        return self.p < alpha


def welch(a: Sequence[float], b: Sequence[float]) -> Comparison | None:
    """Welch's unequal-variance t-test of the finite values of `a` against `b` (two-sided), with the
    Welch-Satterthwaite degrees of freedom; None when either side has fewer than two values, where
    seed noise cannot be estimated."""
    from scipy import stats

    xa, xb = finite(a), finite(b)
    if len(xa) < 2 or len(xb) < 2:
        return None
    result = stats.ttest_ind(xa, xb, equal_var=False)
    df = float(getattr(result, "df", math.nan))
    return Comparison(spread(xa), spread(xb), float(result.statistic), float(result.pvalue), df)


def aggregate(runs: pd.DataFrame, keys: list[str], columns: list[str], first: list[str]) -> pd.DataFrame:
    """One row per `keys` group of the long-format `runs` (one row per seed): the `first` columns
    (the same in every seed, e.g. the model's name and size) from the group's first row, and every
    metric of `columns` as its mean, `<column>_std` and `<column>_n` (see `spread`). The groups keep
    the order in which they first appear in `runs`."""
    rows = []
    for _, group in runs.groupby(keys, sort=False, dropna=False):
        row = {c: group[c].iloc[0] for c in [*keys, *first]}
        for column in columns:
            s = spread(list(group[column]))
            row[column] = s.mean
            row[f"{column}_std"] = s.std
            row[f"{column}_n"] = s.n if s.n else pd.NA
        rows.append(row)
    out = pd.DataFrame(rows, columns=[*keys, *first, *spread_columns(columns)])
    for column in columns:
        out[f"{column}_n"] = out[f"{column}_n"].astype("Int64")  # a count, or empty
    return out


def spread_columns(columns: list[str]) -> list[str]:
    """`[c, c_std, c_n]` for each column, in order."""
    return [name for c in columns for name in (c, f"{c}_std", f"{c}_n")]
