"""What table 2's trivial reference shares with the jobs beside it: tasks and evaluation settings.

Torch-free, because the pipeline (and so every Snakefile parse) reads it; the predictor itself and
its evaluation are in densepred/engine/reference.py.
"""

from __future__ import annotations

from densepred.config import EvalCfg, Params
from densepred.tasks import TASKS

REFERENCE_JOB = "reference"  # the `job` of the reference rows' evaluation JSON


def reference_tasks(params: Params, table: str = "table2") -> list[str]:
    """The tasks of the jobs that feed `table`, in the canonical task order."""
    used = {t for job in params.jobs.values() if table in job.tables for t in job.tasks}
    return [t for t in TASKS if t in used]


def reference_eval_settings(params: Params, dataset: str, table: str = "table2") -> EvalCfg:
    """The evaluation settings the reference shares with the jobs it stands beside: those of the
    jobs feeding `table` on `dataset`, which must agree on split and boundary thresholds."""
    settings = [
        j.evaluate for j in params.jobs.values() if table in j.tables and j.evaluate.dataset == dataset
    ]
    if not settings:
        raise ValueError(f"no job of profile {params.profile!r} feeds {table} on {dataset}")
    keys = {(s.split, str(s.boundary_thresholds), s.eigen_crop) for s in settings}
    if len(keys) > 1:
        raise ValueError(
            f"the jobs feeding {table} evaluate {dataset} with different settings {sorted(keys)}; "
            "a trivial reference needs one split and one set of boundary thresholds"
        )
    return settings[0]
