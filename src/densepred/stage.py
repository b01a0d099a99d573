"""A pipeline stage as its consumers see it: `Stage`, a frozen record of one `densepred` command.

The pipeline (pipeline.py) builds every stage once; Snakemake (workflow/rules/stages.smk), dvc.yaml
(dvc_stages.py), the cost plan (plan.py) and the staleness checks (records.py) read its fields. A
stage carries what they need as fields (its kind, job, seed, dataset, Fig. 7 fraction, the tables it
feeds, how its rule starts it), so no consumer recovers them from its name, command line or paths.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TABLES = ("table2", "table3", "figure7", "ablations")
# The kinds of stage whose outputs record the settings they were made with (records.py).
RECORDED_KINDS = ("train", "evaluate", "tables")

# Snakemake starts ready jobs of higher priority first. Pretraining heads the longest chains
# (pretrain -> finetune -> evaluate), so starting every pretraining, then every finetuning, keeps
# all cores busy to the end instead of leaving one long chain to run alone (bench/NOTES.md).
PRIORITY = {"pretrain": 2, "finetune": 1}

# The packages and modules each kind of stage imports (so code edits rerun exactly the affected
# stages). dvc.yaml lists these folders and files as they are; Snakemake gets their .py files.
_SOURCES = {
    "synth": ["src/densepred/data"],
    "prepare": ["src/densepred/data"],
    "train": [
        "src/densepred/engine",
        "src/densepred/models",
        "src/densepred/losses",
        "src/densepred/ops.py",
        "src/densepred/data",
    ],
    "evaluate": [
        "src/densepred/engine",
        "src/densepred/models",
        "src/densepred/ops.py",
        "src/densepred/metrics",
        "src/densepred/data",
        "src/densepred/figures.py",
    ],
    "tune": [
        "src/densepred/tune.py",
        "src/densepred/sweeps.py",
        "src/densepred/stage_run.py",
        "src/densepred/engine",
        "src/densepred/models",
        "src/densepred/losses",
        "src/densepred/ops.py",
        "src/densepred/metrics",
        "src/densepred/data",
    ],
    "reference": [
        "src/densepred/reference.py",
        "src/densepred/engine/reference.py",
        "src/densepred/engine/evaluate.py",
        "src/densepred/ops.py",
        "src/densepred/metrics",
        "src/densepred/data",
    ],
    "tables": [
        "src/densepred/tables.py",
        "src/densepred/ablations.py",
        "src/densepred/reported.py",
        "src/densepred/seeds.py",
        "src/densepred/figures.py",
        "src/densepred/metrics/delta_m.py",
    ],
}


class Command:
    """A stage's shell command. Deliberately not a str: Snakemake leaves objects it cannot represent
    out of its params rerun trigger, so the command line (params file path, output paths) never
    decides a rerun; the stage's `settings` do."""

    def __init__(self, argv: tuple[str, ...]) -> None:
        self.argv = argv

    def __str__(self) -> str:
        return shlex.join(self.argv)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


@dataclass(frozen=True)
class Stage:
    """One pipeline step: a `densepred` command with explicit inputs and outputs.

    Besides the command and its files, the fields say what the stage is (`kind`: synth, prepare,
    train, evaluate, reference, tune, tables) and, where they apply, the job it runs, the seed of its
    chain, the dataset it reads or scores, the Fig. 7 pretraining fraction of its chain (None on a
    main chain), the tables its output feeds, and how its Snakemake rule starts it (`thread_env`:
    the variable set to the rule's threads; `local`: run on the submitting host, not on SLURM).
    """

    name: str
    kind: str
    argv: tuple[str, ...]
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    out_dirs: frozenset[str] = frozenset()
    param_keys: tuple[str, ...] = ()
    settings: str = "{}"
    log: str = ""
    benchmark: str = ""  # Snakemake's record of the stage's wall time and peak memory
    threads: int = 1
    priority: int = 0
    resources: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    metrics: tuple[str, ...] = ()
    plots: tuple[tuple[str, str, str], ...] = ()  # (file, x, y)
    job: str | None = None  # the job a training or evaluation stage runs (or a sweep varies)
    train_stage: str | None = None  # "pretrain" or "finetune" for a training stage
    sweep: str | None = None  # the sweep a tune stage runs
    overrides: tuple[str, ...] = ()  # the `--set KEY=VALUE` overrides its command passes
    init: str | None = None  # the checkpoint a training stage starts from or an evaluation evaluates
    record: str | None = None  # the record file of a tables, sweep or prepare stage (records.py)
    seed: int | None = None  # the seed of a job's chain (training, evaluation) or of a sweep
    dataset: str | None = None  # the dataset a data stage makes or an evaluation scores
    figure7_fraction: float | None = None  # the pretraining fraction of a Fig. 7 chain's stage
    feeds: tuple[str, ...] = ()  # the tables (TABLES) whose stages read this stage's output
    table: str | None = None  # the table a tables stage builds (one of TABLES)
    thread_env: str = ""  # the environment variable the rule sets to its threads, if any
    local: bool = False  # a Snakemake local rule (never submitted to a cluster)
    # the name without its job: stages of one group differ only in their job (dvc.yaml writes them
    # as one `foreach` stage, dvc_stages.py); "" for stages that run no job's chain
    group: str = ""

    @property
    def command(self) -> str:
        """The shell command (quoted), without redirection."""
        return shlex.join(self.argv)

    @property
    def sources(self) -> tuple[str, ...]:
        """The source folders and modules the stage imports (dvc.yaml dependencies)."""
        return tuple(_SOURCES[self.kind])

    @property
    def source_files(self) -> tuple[str, ...]:
        """The .py files of `sources` (Snakemake inputs: a folder's mtime changes whenever Python
        writes __pycache__, which would rerun stages for nothing)."""
        files: list[str] = []
        for s in self.sources:
            if Path(s).is_dir():
                files += sorted(str(p) for p in Path(s).rglob("*.py"))
            elif Path(s).is_file():
                files.append(s)
        return tuple(files)

    @property
    def shell(self) -> str:
        """The rule's shell command: the stage's command with its log, after its thread variable."""
        env = f"{self.thread_env}={{threads}} " if self.thread_env else ""
        return f"{env}{{params.command}} > {{log}} 2>&1"


def upstream(stages: Sequence[Stage], roots: Iterable[Stage]) -> list[Stage]:
    """`roots` and every stage whose outputs they depend on, transitively, in pipeline order."""
    producer = {out: st for st in stages for out in st.outs}
    todo, seen = list(roots), set()
    while todo:
        st = todo.pop()
        if st.name not in seen:
            seen.add(st.name)
            todo += [producer[d] for d in st.deps if d in producer]
    return [st for st in stages if st.name in seen]
