"""Snakemake reruns a stage whose output was made under other settings, whoever made it.

Snakemake decides what to run from its own ledger (`.snakemake/metadata`: the params and inputs it
last ran a job with) and from modification times. An output written by another tool (DVC's
`dvc exp run`, `dvc repro`, a hand-run command) under other settings passes both checks once the
params are restored, and Snakemake would keep it. `rerun_stale(workflow, stages)` makes the decision
from the outputs' own records instead (records.py): before Snakemake builds its DAG, every stage the
requested targets need whose output disagrees with the stage's current settings is forced to rerun,
with one line on stderr naming the output and the difference (`snakemake -n` shows it too).

Snakemake offers no public hook between reading the Snakefile and building the DAG, and the targets
are only known then, so the hook wraps `Workflow._prepare_dag` of the running workflow (Snakemake is
pinned in pyproject.toml; tests/test_staleness.py drives the real tool and fails if this stops
working). A cluster job step (`--target-jobs`) runs exactly the job it was sent and is left alone.

Stages whose outputs agree with their records but were rewritten by another tool after Snakemake's
last run of them have their benchmark record moved aside (`set_aside_outdated_benchmarks`), which
Snakemake would otherwise take as the outputs' age.

Snakemake's `--config` reaches the stages as `--set` overrides (`config_overrides`), so both ways of
overriding a setting plan and run the same stages.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from typing import Any

from densepred.records import StageLike, stale_stages


def _producers(workflow: Any) -> dict[str, Any]:
    """Output path (normalised) -> the rule that writes it."""
    found = {}
    for rule in workflow.rules:
        for out in rule.output:
            found[os.path.normpath(str(out))] = rule
    return found


def needed_rules(workflow: Any, targets: Iterable[str]) -> set[str]:
    """The names of the rules the targets (rule names, or files relative to the working directory or
    absolute, as Snakemake takes them) need, the targets' own included."""
    producers = _producers(workflow)
    todo = []
    for target in targets:
        path = os.path.relpath(target) if os.path.isabs(target) else os.path.normpath(target)
        if workflow.is_rule(target):
            todo.append(workflow.get_rule(target))
        elif path in producers:
            todo.append(producers[path])
    seen: set[str] = set()
    while todo:
        rule = todo.pop()
        if rule.name in seen:
            continue
        seen.add(rule.name)
        for item in rule.input:
            producer = producers.get(os.path.normpath(str(item)))
            if producer is not None:
                todo.append(producer)
    return seen


def set_aside_outdated_benchmarks(stages: Iterable[Any]) -> list[str]:
    """Move the benchmark records older than their stage's output to `<record>.outdated`; returns
    the records moved.

    Snakemake writes a stage's benchmark (`logs/<profile>/benchmarks/<stage>.tsv`) after the run and
    counts its time as the time of the stage's outputs. An output rewritten since by another tool
    (`dvc repro`) under the same settings is newer than that record, which then no longer describes
    it; left in place, it would make the stage look older than its inputs and rerun for nothing."""
    moved = []
    for stage in stages:
        bench, out = getattr(stage, "benchmark", ""), stage.outs[0] if stage.outs else ""
        present = bench and os.path.isfile(bench) and os.path.exists(out)
        if present and os.stat(bench).st_mtime_ns < os.stat(out).st_mtime_ns:
            os.replace(bench, f"{bench}.outdated")
            moved.append(bench)
    return moved


def rerun_stale(workflow: Any, stages: list[StageLike]) -> None:
    """Force, at DAG time, the stages the targets need whose outputs disagree with them (see above)."""
    by_name = {s.name: s for s in stages}
    prepare_dag = workflow._prepare_dag

    def prepare_dag_with_stale(*args: Any, **kwargs: Any) -> Any:
        settings = workflow.dag_settings
        if settings is not None and not settings.target_jobs:
            targets = settings.targets or [workflow.default_target]
            needed = needed_rules(workflow, targets)
            wanted = [s for s in stages if s.name in needed]
            stale = stale_stages(wanted)
            for name, why in stale.items():
                print(f"densepred: {name} is stale: {why}", file=sys.stderr)
            set_aside_outdated_benchmarks([s for s in wanted if s.name not in stale])
            # a stage `--allowed-rules` keeps from running stays stale (and out of dvc.lock)
            allowed = settings.allowed_rules or by_name.keys()
            forced = {by_name[n].outs[0] for n in stale if n in allowed}
            if forced:
                settings.forcerun = frozenset(settings.forcerun) | forced
        return prepare_dag(*args, **kwargs)

    workflow._prepare_dag = prepare_dag_with_stale


def config_overrides(config: dict[str, Any], file_tree: dict[str, Any], prefix: str = "") -> list[str]:
    """Snakemake's `--config` as `--set` overrides: one `dotted.key=value` for every leaf of
    Snakemake's `config` that differs from the params file's tree. Snakemake merges a nested
    `--config 'jobs={stl_depth: {finetune: {iterations: 20}}}'` into the file's tree key by key, so
    this yields exactly `jobs.stl_depth.finetune.iterations=20`, applied to every stage like `--set`.
    (Snakemake's own parser rejects dotted keys such as `--config jobs.stl_depth.x=1`.)"""
    overrides = []
    for key, value in config.items():
        theirs = file_tree.get(key) if isinstance(file_tree, dict) else None
        if isinstance(value, dict) and isinstance(theirs, dict):
            overrides += config_overrides(value, theirs, f"{prefix}{key}.")
        elif key not in file_tree or theirs != value:
            overrides.append(f"{prefix}{key}={_yaml_text(value)}")
    return overrides


def _yaml_text(value: Any) -> str:
    """A `--config` value as the text of a `--set` value. Snakemake hands nested values and list
    items over as strings: they are passed on unquoted, to be parsed as YAML exactly like a --set
    value ("20" -> 20, `seeds=[0, 1]` -> [0, 1] rather than ["0", "1"])."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_text(v) for v in value) + "]"
    return json.dumps(value)
