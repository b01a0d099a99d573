"""Results tables and figures from evaluation outputs (metrics JSON files written by `densepred evaluate`).

- table2.csv: NYUD-v2 test (PolyMaX Table 2 + MQTransformer Table II columns), one row per job;
  table2_runs.csv: the same with one row per (job, seed).
- table3.csv: Taskonomy test (PolyMaX Table 3).
- figure7.csv/.png: NYUD-v2 metrics after pretraining on fractions of Taskonomy (PolyMaX Fig. 7);
  figure7_rms.csv: its mean depth RMS with one column per job (the DVC plot);
  figure8.png: PolyMaX depth cluster probability maps (Fig. 8 style), from the evaluation figures.
- ablation_*.csv: from the Ray Tune sweep summaries (`densepred.tune`).

Seeds: every job runs each of its seeds (`seeds:` in the params), and table 2, table 3 and Fig. 7
report each metric over them as the mean, `<column>_std` (sample standard deviation, ddof=1; empty
for one seed) and `<column>_n` (the number of seeds), from `densepred.seeds`. Delta_m is computed per
seed against the single-task references of the same seed, and table 2 gives its mean with
`delta_m_pct_ci95_low` / `delta_m_pct_ci95_high`, the 95 % Student-t interval over the seeds.

Rows are sorted and columns fixed, so the CSVs are byte-stable for git and DVC diffs. With a real-data
profile (no `synth:` section) or a rehearsal of one (`rehearsal: true`, params/rehearse.yaml; its
`profile` column reads `paper-rehearsal`), the papers' reported numbers and our difference appear beside
each metric as `<column>_paper` and `<column>_diff`.

`miou_pct` is the published multi-task convention: the mean IoU over all classes of the dataset, a
class absent from both prediction and ground truth counting 0 (`semseg/miou_all`, as MTI-Net, ATRC,
MQTransformer and InvPT compute it; docs/protocols.md). `miou_present_pct` is the mean over the
classes that occur (`semseg/miou`). The two agree when every class occurs in the test split, and
differ on subsets and on the synthetic smoke data, which never contains 11 of the 40 NYUD-v2 classes.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from densepred.config import JobCfg, Params
from densepred.io import atomic_path
from densepred.metrics import multitask_delta_m
from densepred.metrics.suite import METER_TASKS
from densepred.paths import (
    eval_path,
    figure7_eval_path,
    figures_dir,
    reference_path,
    table_page,
    table_runs_path,
)
from densepred.pipeline import figure8_job
from densepred.reported import reported_table2, reported_table3
from densepred.seeds import aggregate, spread, spread_columns, t_interval, welch

# (column, metrics-JSON key, higher is better). Units: percent for mIoU / %<t / odsF.
METRIC_COLUMNS: list[tuple[str, str, bool]] = [
    ("miou_pct", "semseg/miou_all", True),
    ("miou_present_pct", "semseg/miou", True),
    ("depth_rms", "depth_eigen/rms", False),
    ("depth_abs_rel", "depth_eigen/abs_rel", False),
    ("depth_log10", "depth_eigen/log10", False),
    ("depth_delta1", "depth_eigen/delta1", True),
    ("depth_rms_mtl", "depth_mtl/rms", False),
    ("normals_mean", "normals/mean", False),
    ("normals_median", "normals/median", False),
    ("normals_rms", "normals/rms", False),
    ("normals_a11_25_pct", "normals/a11_25", True),
    ("normals_a22_5_pct", "normals/a22_5", True),
    ("normals_a30_pct", "normals/a30", True),
    ("edge_odsf_pct", "edge/odsf", True),
]
META_COLUMNS = ["model", "backbone", "pretraining", "tasks", "profile", "dataset", "job"]
# Cost of one eval-mode forward at the evaluation input size (the same for every seed of a job):
# `gmacs`, billions of multiply-accumulates, is what the papers call "GFLOPs" (fvcore's count) and is
# compared with them; `gflops_2_per_mac` is torch's FLOP counter, which counts a MAC as 2 FLOPs.
COST_COLUMNS = ["params_m", "gmacs", "gflops_2_per_mac"]
TAIL_COLUMNS = ["delta_m_pct", *COST_COLUMNS]
DELTA_M_CI = ["delta_m_pct_ci95_low", "delta_m_pct_ci95_high"]


def read_metrics(path: str | Path) -> dict[str, Any]:
    """Read one evaluation JSON, with a clear error when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation result not found: {path} (run the evaluate stage first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def pretraining_label(job: JobCfg) -> str:
    """What the weights saw before the final stage: backbone init + Taskonomy share."""
    init = "ImageNet" if job.model.pretrained_file else "random init"
    if job.pretrain is None:
        return init
    return f"{init} + Taskonomy {round(job.pretrain.fraction * 100)}%"


def metric_row(params: Params, name: str, result: dict[str, Any], dataset: str) -> dict[str, Any]:
    """One table row: meta columns, every metric column (NaN where the job has no such task)."""
    job = params.jobs[name]
    meta = result.get("meta", {})
    row: dict[str, Any] = {
        "model": job.model.name,
        "backbone": job.model.backbone,
        "pretraining": pretraining_label(job),
        "tasks": "+".join(job.tasks),
        "profile": params.profile,
        "dataset": dataset,
        "job": name,
    }
    for column, key, _ in METRIC_COLUMNS:
        row[column] = result.get(key, math.nan)
    row["params_m"] = meta.get("params_m", math.nan)
    flops = meta.get("gflops", math.nan)  # evaluate.count_cost: torch's counter, 2 FLOPs per MAC
    row["gmacs"] = meta.get("gmacs", flops / 2)
    row["gflops_2_per_mac"] = flops
    return row


REFERENCE_MODEL = "reference"  # the `model` of table 2's trivial reference rows


def reference_rows(params: Params, dataset: str = "nyud") -> pd.DataFrame:
    """Table 2's reference rows: one per task, the trivial predictor fitted to the training split
    (engine/reference.py), scored by the same meters as the jobs. Job `reference_<task>`, model
    `reference`, pretraining `none (training-split prior)`; no seeds, Delta_m or cost."""
    path = Path(reference_path(params, dataset))
    if not path.is_file():
        raise FileNotFoundError(
            f"trivial reference not found: {path} (run the pipeline's reference_{dataset} stage, or "
            f"`densepred reference --dataset {dataset} --out {path}`)"
        )
    result = read_metrics(path)
    rows = []
    for task in result.get("meta", {}).get("tasks", []):
        row: dict[str, Any] = {
            "model": REFERENCE_MODEL,
            "backbone": "none",
            "pretraining": "none (training-split prior)",
            "tasks": task,
            "profile": params.profile,
            "dataset": dataset,
            "job": f"reference_{task}",
            "seeds": "",
        }
        for column, key, _ in METRIC_COLUMNS:
            own = METER_TASKS[key.split("/")[0]] == task  # the meter that wrote the key reads `task`
            row[column] = result.get(key, math.nan) if own else math.nan
            row[f"{column}_std"], row[f"{column}_n"] = math.nan, (1 if own else pd.NA)
        rows.append(row)
    return pd.DataFrame(rows)


def _append_rows(frame: pd.DataFrame, extra: pd.DataFrame) -> pd.DataFrame:
    """`frame` with the rows of `extra` below it, in `frame`'s columns and dtypes (counts stay
    integers, missing cells empty)."""
    if extra.empty:
        return frame
    extra = extra.reindex(columns=frame.columns)
    for column, dtype in frame.dtypes.items():
        if str(dtype) == "Int64":
            extra[column] = extra[column].astype("Int64")
    return pd.concat([frame, extra], ignore_index=True)


def _with_reported(frame: pd.DataFrame, reported: Any) -> pd.DataFrame:
    """Add `<col>_paper` and `<col>_diff` beside every metric column that a paper reports."""
    out = frame.copy()
    for column in [c for c, _, _ in METRIC_COLUMNS] + TAIL_COLUMNS:
        paper = [reported(m, b).get(column, math.nan) for m, b in zip(frame["model"], frame["backbone"])]
        if all(math.isnan(v) for v in paper):
            continue
        position = out.columns.get_loc(column) + 1
        out.insert(position, f"{column}_paper", paper)
        out.insert(position + 1, f"{column}_diff", out[column] - out[f"{column}_paper"])
    return out


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.4f")


def table2_delta_m(
    params: Params, name: str, seed: int, results: dict[tuple[str, int], dict[str, Any]]
) -> float:
    """The `delta_m_pct` of job `name`'s run `seed` in table 2, from the NYUD-v2 results of its
    references' runs of the same seed (paired by seed).

    - a job that other jobs name in `delta_m_refs` is a single-task baseline: 0 by definition;
    - a job with `delta_m_refs` gets `densepred.metrics.multitask_delta_m` over its tasks (every task
      needs a reference that ran this seed; a missing one, or a metric that makes Delta_m undefined,
      is an error);
    - any other job has no Delta_m: NaN, an empty cell in the CSV.

    `results` holds the evaluation results already read ((job, seed) -> flat metrics); a reference
    outside table 2 is read from its own evaluation file and added to it.
    """
    job = params.jobs[name]
    if any(name in other.delta_m_refs.values() for other in params.jobs.values()):
        return 0.0
    if not job.delta_m_refs:
        return math.nan
    references = {}
    for task, ref_job in job.delta_m_refs.items():
        if seed not in params.job_seeds(ref_job):
            raise ValueError(
                f"jobs.{name}: Delta_m pairs seed {seed} with the same seed of its reference {ref_job!r}, "
                f"which runs seeds {params.job_seeds(ref_job)}; give jobs.{ref_job}.seeds the seeds "
                f"{params.job_seeds(name)} as well"
            )
        if (ref_job, seed) not in results:
            results[ref_job, seed] = read_metrics(eval_path(params, ref_job, "nyud", seed))
        references[task] = results[ref_job, seed]
    try:
        return multitask_delta_m(results[name, seed], references, job.tasks)
    except ValueError as exc:
        raise ValueError(f"jobs.{name}: {exc} (delta_m_refs {job.delta_m_refs})") from None


def _sorted(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return frame.sort_values(by, kind="stable").reset_index(drop=True)


def _metric_names() -> list[str]:
    return [c for c, _, _ in METRIC_COLUMNS]


def table2_runs(params: Params) -> pd.DataFrame:
    """NYUD-v2 test results of every job that feeds table 2, one row per (job, seed), each with the
    Delta_m of that seed (paired with the references' runs of the same seed)."""
    names = [n for n, j in params.jobs.items() if "table2" in j.tables and j.finetune is not None]
    runs = [(n, seed) for n in names for seed in params.job_seeds(n)]
    results = {(n, seed): read_metrics(eval_path(params, n, "nyud", seed)) for n, seed in runs}
    rows = []
    for name, seed in runs:
        row = metric_row(params, name, results[name, seed], "nyud")
        row["seed"] = seed
        row["delta_m_pct"] = table2_delta_m(params, name, seed, results)
        rows.append(row)
    columns = [*META_COLUMNS, "seed", *_metric_names(), *TAIL_COLUMNS]
    return _sorted(pd.DataFrame(rows, columns=columns), ["model", "tasks", "job", "seed"])


def _seeds_column(runs: pd.DataFrame, frame: pd.DataFrame, keys: list[str]) -> list[str]:
    """The seeds behind each row of an aggregated `frame`, as '0+1+2' (like the tasks column)."""
    seeds = runs.groupby(keys, sort=False)["seed"].agg(lambda s: "+".join(str(int(v)) for v in s))
    return [seeds[tuple(r) if len(keys) > 1 else r[0]] for r in frame[keys].itertuples(index=False)]


def _over_seeds(runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """A long table (one row per job and seed) summarised per job: meta columns, the seeds, each
    metric's mean, std and count, then the model's size."""
    meta = [c for c in META_COLUMNS if c != "job"]
    frame = aggregate(runs, ["job"], metrics, first=[*meta, *COST_COLUMNS])
    frame["seeds"] = _seeds_column(runs, frame, ["job"])
    return frame[[*META_COLUMNS, "seeds", *spread_columns(metrics), *COST_COLUMNS]]


def table2(params: Params, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 2 over seeds: per job the mean, std and count of each metric and of Delta_m, with Delta_m's
    95 % t-interval over the seeds (`densepred.seeds`); `runs` is `table2_runs(params)` when given."""
    runs = table2_runs(params) if runs is None else runs
    frame = _over_seeds(runs, [*_metric_names(), "delta_m_pct"])
    intervals = [t_interval(list(group["delta_m_pct"])) for _, group in runs.groupby("job", sort=False)]
    by_job = dict(zip(runs["job"].drop_duplicates(), intervals))
    position = frame.columns.get_loc("delta_m_pct_n") + 1
    for i, column in enumerate(DELTA_M_CI):
        frame.insert(position + i, column, [by_job[j][i] for j in frame["job"]])
    frame = _sorted(frame, ["model", "tasks", "job"])
    frame = _append_rows(frame, reference_rows(params))  # last, below the models they put in perspective
    return _with_reported(frame, reported_table2) if params.compares_to_papers else frame


def table3(params: Params) -> pd.DataFrame:
    """Taskonomy test results of the pretrained checkpoints (PolyMaX Table 3), over seeds."""
    names = [
        n
        for n, j in params.jobs.items()
        if "table3" in j.tables and j.pretrain is not None and j.pretrain.dataset == "taskonomy"
    ]
    rows = []
    for name in names:
        for seed in params.job_seeds(name):
            result = read_metrics(eval_path(params, name, "taskonomy", seed))
            rows.append({**metric_row(params, name, result, "taskonomy"), "seed": seed})
    runs = pd.DataFrame(rows, columns=[*META_COLUMNS, "seed", *_metric_names(), *COST_COLUMNS])
    frame = _sorted(_over_seeds(runs, _metric_names()), ["model", "tasks", "job"])
    return _with_reported(frame, reported_table3) if params.compares_to_papers else frame


def figure7_runs(params: Params) -> pd.DataFrame:
    """NYUD-v2 metrics per Taskonomy pretraining fraction and seed for the Fig. 7 jobs."""
    if params.figure7 is None:
        raise ValueError(f"profile {params.profile!r} has no `figure7:` section")
    rows = []
    for name in params.figure7.jobs:
        for fraction in params.figure7.fractions:
            for seed in params.job_seeds(name):
                result = read_metrics(figure7_eval_path(params, name, fraction, seed))
                row = metric_row(params, name, result, "nyud")
                rows.append({**row, "taskonomy_fraction": fraction, "seed": seed})
    return pd.DataFrame(rows)


def figure7(params: Params) -> pd.DataFrame:
    """Fig. 7 over seeds: per job and fraction, the mean, std and count of each metric the jobs have."""
    runs = figure7_runs(params)
    metrics = [c for c in _metric_names() if runs[c].notna().any()]
    keys = ["job", "taskonomy_fraction"]
    frame = aggregate(runs, keys, metrics, first=["model", "backbone", "tasks"])
    frame = frame[["job", "model", "backbone", "tasks", "taskonomy_fraction", *spread_columns(metrics)]]
    return _sorted(frame, keys)


def figure7_rms(frame: pd.DataFrame) -> pd.DataFrame:
    """Fig. 7's (mean) depth RMS in wide form, one column per job (the DVC plot `figure7` draws one line per
    column against `taskonomy_fraction`)."""
    depth = frame[frame["depth_rms"].notna()] if "depth_rms" in frame else frame.iloc[0:0]
    wide = depth.pivot(index="taskonomy_fraction", columns="job", values="depth_rms")
    wide = wide[[j for j in dict.fromkeys(depth["job"])]]  # the profile's job order
    return wide.reset_index().rename_axis(columns=None)


def plot_figure7(frame: pd.DataFrame, path: Path) -> None:
    """One panel per task metric (mIoU, depth RMS, normals mean), one line per model (Fig. 7 style):
    the mean over seeds, with error bars of one sample standard deviation where a point has several
    seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [c for c in ("miou_pct", "depth_rms", "normals_mean") if c in frame and frame[c].notna().any()]
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(max(4.2 * n, 6.0), 3.6), squeeze=False)
    for ax, column in zip(axes[0], panels):
        for _, group in frame.groupby("job", sort=True):
            if group[column].notna().any():
                label = f"{group['model'].iloc[0]} ({group['backbone'].iloc[0]})"
                x = 100 * group["taskonomy_fraction"]
                std = group.get(f"{column}_std")
                if std is not None and std.notna().any():
                    ax.errorbar(x, group[column], yerr=std.fillna(0.0), marker="o", capsize=3, label=label)
                else:
                    ax.plot(x, group[column], marker="o", label=label)
        ax.set_xlabel("Taskonomy data in pretraining (%)")
        ax.set_ylabel(column)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("NYUD-v2 after pretraining on a share of Taskonomy (PolyMaX Fig. 7)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def copy_figure8(params: Params, path: Path) -> None:
    """The PolyMaX depth model's cluster probability maps (Fig. 8 style), from its evaluation figures."""
    job = figure8_job(params)
    if job is None:
        raise ValueError(f"profile {params.profile!r} has no PolyMaX depth job for the Fig. 8 maps")
    folder = Path(figures_dir(eval_path(params, job, "nyud", params.job_seeds(job)[0])))
    candidates = sorted(folder.glob("*cluster*.png")) if folder.is_dir() else []
    if not candidates:
        raise FileNotFoundError(f"no cluster probability-map figure under {folder}")
    with atomic_path(path) as tmp:
        shutil.copyfile(candidates[0], tmp)


def seed_values(params: Params, job: str, column: str, dataset: str = "nyud") -> dict[int, float]:
    """Seed -> the value of table column `column` (a metric column, or `delta_m_pct` on NYUD-v2) of
    `job`'s evaluation of that seed on `dataset`."""
    keys = {c: k for c, k, _ in METRIC_COLUMNS}
    if column == "delta_m_pct":
        if dataset != "nyud":
            raise ValueError("delta_m_pct is defined on nyud only (table 2)")
        results: dict[tuple[str, int], dict[str, Any]] = {}
        values = {}
        for seed in params.job_seeds(job):
            results[job, seed] = read_metrics(eval_path(params, job, dataset, seed))
            values[seed] = table2_delta_m(params, job, seed, results)
        return values
    if column not in keys:
        raise ValueError(f"no table column {column!r}; columns: {[*keys, 'delta_m_pct']}")
    return {
        seed: float(read_metrics(eval_path(params, job, dataset, seed)).get(keys[column], math.nan))
        for seed in params.job_seeds(job)
    }


def compare(params: Params, a: str, b: str, column: str, dataset: str = "nyud", alpha: float = 0.05) -> str:
    """Whether jobs `a` and `b` differ on `column` beyond seed noise: Welch's t-test over their
    per-seed values (`densepred.seeds.welch`), in words. With fewer than two seeds of either job the
    seed noise cannot be estimated, and the answer says so."""
    values = {job: seed_values(params, job, column, dataset) for job in (a, b)}
    lines = [f"{column} on {dataset}, over seeds:"]
    for job, by_seed in values.items():
        s = spread(list(by_seed.values()))
        seeds = "+".join(str(k) for k in by_seed)
        lines.append(f"  {job}: mean {s.mean:.4f}, std {s.std:.4f}, n {s.n} (seeds {seeds})")
    result = welch(list(values[a].values()), list(values[b].values()))
    if result is None:
        lines.append(
            "cannot tell: Welch's t-test needs at least two seeds of each job with the metric "
            "(set `seeds:` or `jobs.<job>.seeds` to two or more seeds and rerun)"
        )
        return "\n".join(lines)
    verdict = (
        f"they differ beyond seed noise (p < {alpha:g})"
        if result.differ(alpha)
        else f"no difference beyond seed noise (p >= {alpha:g})"
    )
    lines.append(f"Welch's t-test: t = {result.t:.3f}, df = {result.df:.1f}, p = {result.p:.4f}: {verdict}")
    return "\n".join(lines)


_HTML_STYLE = (
    "body{font-family:sans-serif;margin:1em}"
    "table{border-collapse:collapse;font-size:13px}"
    "th,td{border:1px solid #ccc;padding:3px 6px;white-space:nowrap}"
    "th{background:#eee;position:sticky;top:0}"
    "tr:nth-child(even) td{background:#f8f8f8}"
)


def write_html_table(csv: str | Path, html: str | Path) -> None:
    """A table CSV as a standalone HTML page, its cells exactly as in the CSV (for the Snakemake
    report, whose viewer shows HTML, images and PDF but offers a CSV only as a download)."""
    csv = Path(csv)
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    table = frame.to_html(index=False, border=0)
    page = (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{csv.name}</title>'
        f"<style>{_HTML_STYLE}</style></head>\n<body><h1>{csv.name}</h1>\n{table}\n</body></html>\n"
    )
    with atomic_path(Path(html)) as tmp:
        tmp.write_text(page)


def write_html_pages(written: list[Path]) -> list[Path]:
    """The HTML page (`paths.table_page`) of every CSV among `written`, for the Snakemake report; returns
    the pages."""
    pages = []
    for csv in (Path(p) for p in written if Path(p).suffix == ".csv"):
        page = Path(table_page(csv))
        page.parent.mkdir(parents=True, exist_ok=True)
        write_html_table(csv, page)
        pages.append(page)
    return pages


def write_tables(params: Params, out: Path, runs: Path | None = None, only: str | None = None) -> list[Path]:
    """Write the requested tables (all by default) into `out`; returns the written paths."""
    if runs is not None:
        params = params.model_copy(update={"paths": params.paths.model_copy(update={"runs": runs})})
    out = Path(out)
    written: list[Path] = []
    wanted = {only} if only else {"table2", "table3", "figure7", "ablations"}
    if "table2" in wanted:
        runs_frame = table2_runs(params)
        runs_csv = Path(table_runs_path(params, "table2")).name
        _write_csv(table2(params, runs_frame), out / "table2.csv")
        _write_csv(runs_frame, out / runs_csv)
        written += [out / "table2.csv", out / runs_csv]
    if "table3" in wanted:
        _write_csv(table3(params), out / "table3.csv")
        written.append(out / "table3.csv")
    if "figure7" in wanted and params.figure7 is not None:
        frame = figure7(params)
        _write_csv(frame, out / "figure7.csv")
        _write_csv(figure7_rms(frame), out / "figure7_rms.csv")
        plot_figure7(frame, out / "figure7.png")
        copy_figure8(params, out / "figure8.png")
        written += [out / n for n in ("figure7.csv", "figure7_rms.csv", "figure7.png", "figure8.png")]
    if "ablations" in wanted and params.sweeps:
        from densepred.ablations import write_ablation_tables

        written += list(write_ablation_tables(params, Path(params.paths.runs) / "sweeps", out))
    for path in written:
        print(f"wrote {path}")
    return written
