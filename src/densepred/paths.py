"""Where every stage output lives: the one owner of run folders, checkpoint, evaluation, sweep,
table and log paths and file names. The pipeline (Snakemake and DVC), the CLI commands, the
trainer, the evaluation, the sweeps and the tables all ask this module.

    <runs>/<job>/{pretrain,finetune}/final.pt             a training stage's output
    <runs>/<job>/{pretrain,finetune}/checkpoints/last.pt   its rolling, resumable checkpoint
    <runs>/<job>/{pretrain,finetune}/{config.yaml,train_log.csv,init_report.json,tracking.json}
    <runs>/<job>/eval/<dataset>.json                       evaluation metrics (+ <dataset>_figures/)
    <folder>/tracking_pending.jsonl, <eval>.tracking_pending.jsonl   MLflow records kept while the
                                                           tracking server is unreachable
    <runs>/figure7/<job>/frac<pct>/...                     the Fig. 7 data-fraction chains
    <runs>/<job>/seed<k>/...                               seed k of a job that runs several seeds
    <runs>/figure7/<job>/frac<pct>/seed<k>/...             (and of its Fig. 7 chains)
    <runs>/sweeps/<sweep>/summary.csv                      a sweep's per-trial results
    <sweep>/{sweep.json,ray/,stale/,ray_local.json}        a sweep's state, Ray Tune storage, the
                                                           outputs of a changed definition, its local Ray
    <sweep>/trials/<variant>/{pretrain,finetune,metrics.json}   one trial's job chain
    <sweep>/trials/<variant>/{result.json,attempts.log,log.txt,mlflow_run_id}   its result and records
    <results>/<table>.csv                                  results tables and figures
    <results>/table2_runs.csv                              table 2 with one row per (job, seed)
    logs/<profile>/<stage>.log                             a pipeline stage's log

Relative paths in a params file (`paths.runs`, `paths.results`, the datasets' folders) are relative
to the directory a command runs in; `project_root` finds the project's own directory (where the
default MLflow store is, whose git commit a run records, which the sweeps pass to their trials).

A job that runs one seed (`seeds: [0]`, the smoke profile) keeps the folders and stage names above
whatever its seed; only a job with several seeds gets a `seed<k>` folder per seed and a `_seed<k>`
suffix on its stage names. The functions below take the seed and decide (`seeds_fanned_out`).
"""

from __future__ import annotations

import os
from pathlib import Path

from densepred.config import Params

FINAL_CHECKPOINT = "final.pt"
LAST_CHECKPOINT = Path("checkpoints") / "last.pt"
SWEEP_SUMMARY = "summary.csv"
TRAIN_LOG = "train_log.csv"
RESOLVED_CONFIG = "config.yaml"
INIT_REPORT = "init_report.json"
TRACKING_RECORD = "tracking.json"
TRACKING_JOURNAL = "tracking_pending.jsonl"
TRIAL_METRICS = "metrics.json"
SWEEP_STATE = "sweep.json"
SWEEP_RAY = "ray"
SWEEP_TRIALS = "trials"
SWEEP_STALE = "stale"
LOCAL_RAY = "ray_local.json"
TRIAL_RESULT = "result.json"
TRIAL_ATTEMPTS = "attempts.log"
TRIAL_LOG = "log.txt"
TRIAL_RUN_ID = "mlflow_run_id"


def project_root() -> Path:
    """The project root: DENSEPRED_ROOT, else the nearest parent with pyproject.toml, else the cwd."""
    env = os.environ.get("DENSEPRED_ROOT")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").is_file() and (candidate / "params").is_dir():
            return candidate
    return here


def seeds_fanned_out(params: Params, job: str) -> bool:
    """True when `job` runs several seeds, so each seed has its own folders and stages."""
    return len(params.job_seeds(job)) > 1


def seed_tag(seed: int) -> str:
    """3 -> 'seed3' (a per-seed folder; with a leading '_', a stage-name suffix)."""
    return f"seed{seed:d}"


def _seed_part(params: Params, job: str, seed: int | None) -> str:
    """'' for a job with one seed, else 'seed<k>' (an error when no seed or a foreign one is given)."""
    seeds = params.job_seeds(job)
    if seed is not None and seed not in seeds:
        raise ValueError(f"jobs.{job} runs seeds {seeds}; it has no seed {seed}")
    if len(seeds) == 1:
        return ""
    if seed is None:
        raise ValueError(f"jobs.{job} runs seeds {seeds}: name the seed of the run folder")
    return seed_tag(seed)


def stage_suffix(params: Params, job: str, seed: int | None) -> str:
    """'' for a job with one seed, else '_seed<k>': the suffix of its per-seed stage names."""
    part = _seed_part(params, job, seed)
    return f"_{part}" if part else ""


def run_dir(params: Params, job: str, seed: int | None = None) -> Path:
    """The folder of one job's main chain (for a job with several seeds, of its chain `seed`)."""
    return Path(params.paths.runs) / job / _seed_part(params, job, seed)


def stage_dir(run: Path, stage: str) -> Path:
    """A training stage's folder inside a chain's run folder."""
    return Path(run) / stage


def final_checkpoint(stage_folder: Path) -> Path:
    """A training stage's output; its existence means the stage is complete."""
    return Path(stage_folder) / FINAL_CHECKPOINT


def last_checkpoint(stage_folder: Path) -> Path:
    """A training stage's rolling, resumable checkpoint."""
    return Path(stage_folder) / LAST_CHECKPOINT


def train_log(stage_folder: Path) -> Path:
    """A training stage's per-log-step CSV (step, lr, losses)."""
    return Path(stage_folder) / TRAIN_LOG


def config_file(stage_folder: Path) -> Path:
    """A training stage's resolved config (profile, seed, job config, git commit, world size)."""
    return Path(stage_folder) / RESOLVED_CONFIG


def init_report(stage_folder: Path) -> Path:
    """What `--init` loaded, reset and missed (written only by a stage started from a checkpoint)."""
    return Path(stage_folder) / INIT_REPORT


def tracking_record(stage_folder: Path) -> Path:
    """The MLflow run id of a training stage, so that a resumed stage continues the same run."""
    return Path(stage_folder) / TRACKING_RECORD


def tracking_journal(folder: Path) -> Path:
    """What a run in `folder` (a training stage, a sweep, a trial) would have sent to MLflow while
    the tracking server was unreachable; `densepred sync-tracking` uploads and removes it."""
    return Path(folder) / TRACKING_JOURNAL


def eval_tracking_journal(eval_json: Path) -> Path:
    """The pending MLflow record of an evaluation, beside its metrics JSON (`nyud.json` ->
    `nyud.tracking_pending.jsonl`): while it exists the evaluation is not yet in MLflow."""
    eval_json = Path(eval_json)
    return eval_json.with_name(f"{eval_json.stem}.{TRACKING_JOURNAL}")


def find_tracking_journals(root: Path) -> list[Path]:
    """Every pending MLflow record under `root` (or `root` itself when it is one), parents first:
    a sweep's record before its trials', a trial's before its stages'."""
    root = Path(root)
    if root.is_file():
        return [root]
    found = root.rglob(f"*{TRACKING_JOURNAL}")
    return sorted(found, key=lambda p: (len(p.parts), p.name != TRACKING_JOURNAL, str(p)))


def trial_metrics(trial_folder: Path) -> Path:
    """The evaluation metrics of a sweep trial's job chain (written last by its evaluation)."""
    return Path(trial_folder) / TRIAL_METRICS


def sweep_state(sweep_folder: Path) -> Path:
    """A sweep's state: its fingerprint, Ray experiment name and MLflow parent run (tune.py)."""
    return Path(sweep_folder) / SWEEP_STATE


def sweep_ray_storage(sweep_folder: Path) -> Path:
    """Ray Tune's storage of a sweep unless another is given (DENSEPRED_RAY_STORAGE)."""
    return Path(sweep_folder) / SWEEP_RAY


def sweep_summary(sweep_folder: Path) -> Path:
    """The per-trial summary CSV in a sweep's folder."""
    return Path(sweep_folder) / SWEEP_SUMMARY


def sweep_trials_dir(sweep_folder: Path) -> Path:
    """The folder holding one folder per trial of a sweep."""
    return Path(sweep_folder) / SWEEP_TRIALS


def sweep_stale_dir(sweep_folder: Path) -> Path:
    """Where the outputs of a sweep's earlier, changed definitions are set aside (never deleted)."""
    return Path(sweep_folder) / SWEEP_STALE


def local_ray_record(sweep_folder: Path) -> Path:
    """The session and driver of the local Ray a running sweep started (ray_cluster.py), so that
    the next sweep on the folder stops what a killed driver left behind."""
    return Path(sweep_folder) / LOCAL_RAY


def trial_result(trial_folder: Path) -> Path:
    """A finished trial's variant, overrides and metrics; its existence means the trial is done."""
    return Path(trial_folder) / TRIAL_RESULT


def trial_attempts(trial_folder: Path) -> Path:
    """One line per start of a trial."""
    return Path(trial_folder) / TRIAL_ATTEMPTS


def trial_log(trial_folder: Path) -> Path:
    """A trial's stdout and stderr."""
    return Path(trial_folder) / TRIAL_LOG


def trial_run_id(trial_folder: Path) -> Path:
    """The MLflow run id of a trial, so that a retry reopens the same run."""
    return Path(trial_folder) / TRIAL_RUN_ID


def eval_path(params: Params, job: str, dataset: str, seed: int | None = None) -> str:
    """Where the evaluation of `job` (its chain `seed`, with several seeds) on `dataset` is written."""
    return str(run_dir(params, job, seed) / "eval" / f"{dataset}.json")


def reference_path(params: Params, dataset: str) -> str:
    """The trivial reference's evaluation on `dataset` (engine/reference.py), under the runs folder."""
    return str(Path(params.paths.runs) / "reference" / f"{dataset}.json")


def figures_dir(eval_json: str | Path) -> str:
    """The folder of prediction figures written beside an evaluation JSON."""
    return str(Path(eval_json).with_suffix("")) + "_figures"


def fraction_tag(fraction: float) -> str:
    """0.25 -> '25' (percent, for paths and stage names)."""
    return f"{round(fraction * 100):d}"


def is_main_figure7_point(params: Params, job: str, fraction: float) -> bool:
    """True when the main job is Fig. 7's point at `fraction` (100% of its pretraining data)."""
    cfg = params.jobs[job]
    return fraction == 1.0 and cfg.pretrain is not None and cfg.pretrain.fraction == 1.0


def figure7_run_dir(params: Params, job: str, fraction: float, seed: int | None = None) -> Path:
    """The run folder of `job` pretrained on `fraction` of Taskonomy (Fig. 7), of its chain `seed`."""
    folder = Path(params.paths.runs) / "figure7" / job / f"frac{fraction_tag(fraction)}"
    return folder / _seed_part(params, job, seed)


def figure7_eval_path(params: Params, job: str, fraction: float, seed: int | None = None) -> str:
    """Evaluation of `job` pretrained on `fraction` of Taskonomy (Fig. 7); 100% is the main job."""
    if is_main_figure7_point(params, job, fraction):
        return eval_path(params, job, "nyud", seed)
    return str(figure7_run_dir(params, job, fraction, seed) / "eval" / "nyud.json")


def sweep_dir(params: Params, sweep: str) -> Path:
    """A sweep's folder (Ray storage, trial folders, summary)."""
    return Path(params.paths.runs) / "sweeps" / sweep


def sweep_summary_path(params: Params, sweep: str) -> str:
    """The summary CSV a sweep of the profile writes."""
    return str(sweep_summary(sweep_dir(params, sweep)))


def table_path(params: Params, name: str, suffix: str = ".csv") -> str:
    """A results table or figure, e.g. results/table2.csv."""
    return str(Path(params.paths.results) / f"{name}{suffix}")


def table_runs_path(params: Params, name: str) -> str:
    """The long form of a results table, one row per (job, seed), e.g. results/table2_runs.csv."""
    return table_path(params, f"{name}_runs")


def table_page(csv: str | Path) -> str:
    """A table CSV's HTML page for the Snakemake report: `<its folder>/html/<table>.html` (not
    versioned; written by `densepred tables --html`)."""
    return str(Path(csv).parent / "html" / f"{Path(csv).stem}.html")


def sweep_record(params: Params, sweep: str) -> str:
    """What a sweep's summary was made with (records.py), beside it."""
    return str(sweep_dir(params, sweep) / "record.json")


def data_record(prepared: str | Path) -> str:
    """What a prepared dataset was made with (records.py), inside its folder (so that it moves with
    it, through DVC's cache too); the readers open only the files its index names."""
    return str(Path(prepared) / "densepred-record.json")


def table_record(params: Params, stage_name: str) -> str:
    """What a tables stage built its outputs from (records.py): <results>/records/<stage>.json. Not
    versioned: it names the digests of this machine's evaluation files."""
    return str(Path(params.paths.results) / "records" / f"{stage_name}.json")


def log_path(params: Params, stage_name: str) -> str:
    """A pipeline stage's log file."""
    return str(Path("logs") / params.profile / f"{stage_name}.log")


def benchmark_path(params: Params, stage_name: str) -> str:
    """Snakemake's benchmark record of a stage (wall time, peak resident memory `max_rss` in MB)."""
    return str(Path("logs") / params.profile / "benchmarks" / f"{stage_name}.tsv")
