"""dvc.yaml from the pipeline's stages (pipeline.py): the same DAG as the Snakefile, written for DVC.

Each stage lists its data and checkpoint inputs and the source folders it imports as `deps`, the
params-file keys its settings come from as `params`, its outputs (tables and figures kept in git with
`cache: false`, checkpoints `persist: true`), and evaluation JSONs as `metrics`; the training loss
curves and Fig. 7 are top-level `plots` with their axes.

Stages that differ only in their job (every main job's finetuning from its pretraining, every
evaluation on NYUD-v2, ...) are written once, as a DVC `foreach` stage over the jobs (`${key}` is
the job, `${item.preset}` the preset its settings start from), so the file stays short enough to
read. DVC then names them `<group>@<job>`, e.g. `finetune@polymax_depth` for the Snakemake rule
`finetune_polymax_depth`; `dvc_names` gives that mapping (the Snakefile's `dvc commit` uses it).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from densepred.stage import PRIORITY, Stage

KEY = "${key}"
PRESET = "${item.preset}"
_GROUPED_KINDS = ("train", "evaluate")


def stage_job(stage: Stage) -> str | None:
    """The job a training or evaluation stage runs, or None for data, sweep and table stages."""
    return stage.job if stage.kind in _GROUPED_KINDS else None


def _entry(st: Stage, params_path: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"cmd": st.command, "deps": [*st.deps, *st.sources]}
    if st.param_keys:
        entry["params"] = [{params_path: list(st.param_keys)}]
    outs = [_dvc_out(st, o) for o in st.outs if o not in st.metrics]
    if outs:
        entry["outs"] = outs
    if st.metrics:
        entry["metrics"] = [{m: {"cache": False}} for m in st.metrics]
    return entry


def _dvc_out(stage: Stage, out: str) -> Any:
    """Tables and figures stay in git (cache: false). Training outputs persist: the train command is
    idempotent (a finished final.pt with the same settings is kept), so DVC must not delete what a
    Snakemake run already produced."""
    if stage.kind == "tables":
        return {out: {"cache": False}}
    if stage.kind in ("train", "tune"):
        return {out: {"persist": True}}
    return out


def _substitute(node: Any, pattern: re.Pattern[str], repl: str) -> Any:
    """`node` (nested dicts, lists, strings) with `pattern` replaced in every string, keys included."""
    if isinstance(node, str):
        return pattern.sub(lambda _: repl, node)
    if isinstance(node, list):
        return [_substitute(v, pattern, repl) for v in node]
    if isinstance(node, dict):
        return {_substitute(k, pattern, repl): _substitute(v, pattern, repl) for k, v in node.items()}
    return node


def _template(st: Stage, entry: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, str]] | None:
    """(group name, entry with the job as `${key}` and the preset as `${item.preset}`, item) for a
    train or evaluate stage; None for the others."""
    job = stage_job(st)
    if job is None or not st.group:
        return None
    name = st.group
    body = _substitute(entry, re.compile(rf"(?<![A-Za-z0-9]){re.escape(job)}(?![A-Za-z0-9])"), KEY)
    item: dict[str, str] = {}
    for block in body.get("params", []):
        for keys in block.values():
            for i, key in enumerate(keys):
                if key.startswith("presets.") and "preset" not in item:
                    item["preset"] = key.removeprefix("presets.")
                    keys[i] = f"presets.{PRESET}"
    return name, body, item


def _layout(stages: list[Stage], params_path: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The `stages:` mapping of dvc.yaml and the DVC name of every pipeline stage."""
    entries = {st.name: _entry(st, params_path) for st in stages}
    candidates: dict[str, dict[str, list[tuple[Stage, dict[str, str]]]]] = defaultdict(dict)
    bodies: dict[str, dict[str, Any]] = {}
    for st in stages:
        shaped = _template(st, entries[st.name])
        if shaped is not None:
            name, body, item = shaped
            text = json.dumps(body, sort_keys=True)
            bodies[text] = body
            candidates[name].setdefault(text, []).append((st, item))
    grouped: dict[str, tuple[str, str]] = {}  # stage name -> (group name, body text)
    for name, classes in candidates.items():
        text, members = max(classes.items(), key=lambda kv: len(kv[1]))  # first of the largest
        if len(members) > 1 and name not in entries:
            grouped.update({st.name: (name, text) for st, _ in members})
    doc: dict[str, Any] = {}
    names: dict[str, str] = {}
    for st in stages:
        if st.name not in grouped:
            doc[st.name] = entries[st.name]
            names[st.name] = st.name
            continue
        name, text = grouped[st.name]
        names[st.name] = f"{name}@{stage_job(st)}"
        if name not in doc:
            members = candidates[name][text]
            foreach = {stage_job(m): item for m, item in members}
            doc[name] = {"foreach": foreach, "do": bodies[text]}
    return doc, names


def dvc_names(stages: list[Stage], params_path: str | Path) -> dict[str, str]:
    """Pipeline stage (Snakemake rule) name -> DVC stage name (`<group>@<job>` for grouped stages)."""
    return _layout(stages, str(params_path))[1]


def dvc_yaml(stages: list[Stage], params_path: str | Path) -> dict[str, Any]:
    """The dvc.yaml document for `stages` (see the module docstring)."""
    doc: dict[str, Any] = {"stages": _layout(stages, str(params_path))[0]}
    doc["plots"] = _loss_plots(stages)
    figure7 = next((s for s in stages if s.table == "figure7"), None)
    if figure7 is not None and figure7.plots:
        csv, x, _ = figure7.plots[0]
        doc["plots"].append(
            {
                "figure7": {
                    "title": "Fig. 7: NYUD-v2 depth RMS (m) against the share of Taskonomy pretraining",
                    "template": "linear",
                    "x": x,
                    "y": {csv: [y for _, _, y in figure7.plots]},
                }
            }
        )
    return doc


def _loss_plots(stages: list[Stage]) -> list[dict[str, Any]]:
    """One plot per training stage (pretrain, finetune): every main job's loss against the step, one
    line per job (the Fig. 7 chains are left out)."""
    plots = []
    for kind in PRIORITY:
        logs: dict[str, str] = {}
        for st in stages:
            if st.train_stage == kind and st.figure7_fraction is None:
                logs.update({f: y for f, _, y in st.plots})
        if logs:
            plots.append({f"{kind}_loss": {"title": f"{kind} loss", "x": "step", "y": logs}})
    return plots
