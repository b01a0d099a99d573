"""The pipeline DAG, defined once: Snakemake rules and dvc.yaml stages are both generated from it.

`build_stages(params, params_path)` lists every stage of a profile (synth -> prepare -> pretrain ->
finetune -> evaluate -> tables, the Fig. 7 data-fraction chains and the ablation sweeps) with its
command, inputs, outputs, the params keys that should trigger a rerun, log, threads, scheduling
priority and resources.
The Snakefile turns each stage into a rule; `densepred dvc` writes the same stages to dvc.yaml
(a test checks the committed dvc.yaml is current), so the two definitions cannot drift.

Paths here are the single source of truth for where stage outputs live; `tables.py` reads evaluation
results through `eval_path`.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densepred.config import Params, read_yaml

TABLES = ("table2", "table3", "figure7", "ablations")
ABLATION_TABLES = ("ablation_k", "ablation_depth", "ablation_scales", "ablation_components")

# Snakemake starts ready jobs of higher priority first. Pretraining heads the longest chains
# (pretrain -> finetune -> evaluate), so starting every pretraining, then every finetuning, keeps
# all cores busy to the end instead of leaving one long chain to run alone; the short evaluations
# fill the gaps. On the smoke profile with 2 cores this shortens results/table2.csv by about 3 %
# and removes most of its run-to-run spread (simulated from measured job times).
PRIORITY = {"pretrain": 2, "finetune": 1}

# Source files each kind of stage depends on (so code edits rerun exactly the affected stages).
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
        "src/densepred/engine",
        "src/densepred/models",
        "src/densepred/losses",
        "src/densepred/ops.py",
        "src/densepred/metrics",
        "src/densepred/data",
    ],
    "tables": [
        "src/densepred/tables.py",
        "src/densepred/ablations.py",
        "src/densepred/reported.py",
        "src/densepred/figures.py",
    ],
}


@dataclass(frozen=True)
class Stage:
    """One pipeline step: a `densepred` command with explicit inputs and outputs."""

    name: str
    kind: str
    argv: tuple[str, ...]
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    out_dirs: frozenset[str] = frozenset()
    param_keys: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    log: str = ""
    threads: int = 1
    priority: int = 0
    resources: dict[str, int] = field(default_factory=dict, compare=False, hash=False)
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()

    @property
    def command(self) -> str:
        """The shell command (quoted), without redirection."""
        return shlex.join(self.argv)


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def _source_paths(kind: str) -> list[str]:
    """The .py files a stage kind depends on (files, not folders: a folder's mtime changes whenever
    Python writes __pycache__, which would rerun stages for nothing)."""
    paths: list[str] = []
    for s in _SOURCES[kind]:
        if Path(s).is_dir():
            paths += sorted(str(p) for p in Path(s).rglob("*.py"))
        elif Path(s).is_file():
            paths.append(s)
        elif Path(s + ".py").is_file():
            paths.append(s + ".py")
    return paths


class _Builder:
    """Accumulates the stages of one profile."""

    def __init__(self, params: Params, params_path: Path) -> None:
        self.p = params
        self.path = str(params_path)
        self.tree = read_yaml(params_path)
        self.runs = Path(params.paths.runs)
        self.results = Path(params.paths.results)
        self.logs = Path("logs") / params.profile
        self.stages: list[Stage] = []

    # -- helpers
    def add(
        self, name: str, kind: str, args: list[str], deps: list[str], outs: list[str], **kw: Any
    ) -> Stage:
        keys = tuple(kw.pop("param_keys", ()))
        values = {k: _lookup(self.tree, k) for k in keys}
        argv = ("densepred", args[0], "--params", self.path, *args[1:])
        stage = Stage(
            name=name,
            kind=kind,
            argv=argv,
            deps=tuple(deps + _source_paths(kind)),
            outs=tuple(outs),
            param_keys=keys,
            params={"settings": json.dumps(values, sort_keys=True, default=str)},
            log=str(self.logs / f"{name}.log"),
            **kw,
        )
        self.stages.append(stage)
        return stage

    def train_resources(self) -> dict[str, int]:
        rt = self.p.runtime
        return {"mem_mb": rt.mem_mb, "gpu": rt.gpus_per_job}

    # -- data
    def data(self) -> None:
        """Per dataset: synth (synthetic profiles) -> prepare.

        Each dataset is generated by its own stage, with only its own `synth.<name>` settings (and
        the shared seed) as params: the two generators run in parallel, and editing one dataset's
        settings leaves the other dataset's chain (for NYUD edits, all pretraining) in place.
        """
        for name, ds in sorted(self.p.datasets.items()):
            raw = str(ds.raw)
            if self.p.synth is not None:
                self.add(
                    f"synth_{name}",
                    "synth",
                    ["synth", "--dataset", name, "--out", raw],
                    [],
                    [raw],
                    out_dirs=frozenset({raw}),
                    param_keys=["synth.seed", f"synth.{name}"],
                )
                deps = [raw]
            else:  # real data: listed when present, so that a dry run plans the graph before the download
                deps = [raw] if Path(raw).exists() else []
            self.add(
                f"prepare_{name}",
                "prepare",
                ["prepare", "--dataset", name, "--src", raw, "--out", str(ds.prepared)],
                deps,
                [str(ds.prepared)],
                out_dirs=frozenset({str(ds.prepared)}),
                param_keys=[f"datasets.{name}"],
            )

    # -- one job's chain
    def chain(
        self,
        job: str,
        prefix: str = "",
        run_dir: Path | None = None,
        sets: tuple[str, ...] = (),
        skip_pretrain: bool = False,
    ) -> str | None:
        cfg = self.p.jobs[job]
        run_dir = run_dir or self.runs / job
        set_args = [a for s in sets for a in ("--set", s)]
        common = ["seed", "runtime", f"jobs.{job}.model", f"jobs.{job}.tasks"]
        last: str | None = None
        tag = prefix or job
        if cfg.pretrain is not None and not skip_pretrain:
            out = str(run_dir / "pretrain" / "final.pt")
            self.add(
                f"pretrain_{tag}",
                "train",
                ["train", "--job", job, "--stage", "pretrain", "--out", str(run_dir / "pretrain"), *set_args],
                [str(self.p.datasets[cfg.pretrain.dataset].prepared)],
                [out],
                param_keys=[*common, f"jobs.{job}.pretrain"],
                threads=self.p.runtime.threads,
                priority=PRIORITY["pretrain"],
                resources=self.train_resources(),
            )
            last = out
        if cfg.finetune is not None:
            out = str(run_dir / "finetune" / "final.pt")
            init = ["--init", last] if last else []
            deps = [str(self.p.datasets[cfg.finetune.dataset].prepared)] + ([last] if last else [])
            keys = [*common, f"jobs.{job}.finetune"] + ([f"jobs.{job}.pretrain"] if last else [])
            self.add(
                f"finetune_{tag}",
                "train",
                [
                    "train",
                    "--job",
                    job,
                    "--stage",
                    "finetune",
                    *init,
                    "--out",
                    str(run_dir / "finetune"),
                    *set_args,
                ],
                deps,
                [out],
                param_keys=keys,
                threads=self.p.runtime.threads,
                priority=PRIORITY["finetune"],
                resources=self.train_resources(),
            )
            last = out
        return last

    def evaluate(
        self, job: str, ckpt: str, dataset: str, out: str, tag: str, sets: tuple[str, ...] = ()
    ) -> None:
        set_args = [a for s in sets for a in ("--set", s)]
        figures = figures_dir(out)
        self.add(
            f"evaluate_{tag}_{dataset}",
            "evaluate",
            ["evaluate", "--job", job, "--ckpt", ckpt, "--dataset", dataset, "--out", out, *set_args],
            [ckpt, str(self.p.datasets[dataset].prepared)],
            [out, figures],
            out_dirs=frozenset({figures}),
            param_keys=[f"jobs.{job}.evaluate", f"jobs.{job}.tasks"],
            threads=self.p.runtime.threads,
            resources=self.train_resources(),
        )

    def jobs(self) -> None:
        for job, cfg in self.p.jobs.items():
            last = self.chain(job)
            if cfg.finetune is not None and last is not None:
                self.evaluate(
                    job, last, cfg.evaluate.dataset, eval_path(self.p, job, cfg.evaluate.dataset), job
                )
            if "table3" in cfg.tables and cfg.pretrain is not None and cfg.pretrain.dataset == "taskonomy":
                ckpt = str(self.runs / job / "pretrain" / "final.pt")
                self.evaluate(job, ckpt, "taskonomy", eval_path(self.p, job, "taskonomy"), job)

    def figure7(self) -> None:
        fig = self.p.figure7
        if fig is None:
            return
        for job in fig.jobs:
            cfg = self.p.jobs[job]
            for fraction in fig.fractions:
                if fraction == 1.0 and cfg.pretrain is not None and cfg.pretrain.fraction == 1.0:
                    continue  # the main job is the 100% point
                tag = f"{job}_frac{fraction_tag(fraction)}"
                run_dir = self.runs / "figure7" / job / f"frac{fraction_tag(fraction)}"
                sets = () if fraction == 0.0 else (f"jobs.{job}.pretrain.fraction={fraction}",)
                last = self.chain(job, prefix=tag, run_dir=run_dir, sets=sets, skip_pretrain=fraction == 0.0)
                if last is not None:
                    self.evaluate(job, last, "nyud", figure7_eval_path(self.p, job, fraction), tag)

    def sweeps(self) -> None:
        for name, sweep in sorted(self.p.sweeps.items()):
            cfg = self.p.jobs[sweep.job]
            data = sorted(
                {
                    str(self.p.datasets[s.dataset].prepared)
                    for s in (cfg.pretrain, cfg.finetune)
                    if s is not None
                }
            )
            out_dir = str(self.runs / "sweeps" / name)
            self.add(
                f"tune_{name}",
                "tune",
                ["tune", "--sweep", name, "--out", out_dir],
                data,
                [sweep_summary_path(self.p, name)],
                param_keys=["seed", "runtime", f"sweeps.{name}", f"jobs.{sweep.job}"],
                threads=0,
                resources={"mem_mb": self.p.runtime.mem_mb, "gpu": 0},
            )

    def tables(self) -> None:
        evals = [s.outs[0] for s in self.stages if s.kind == "evaluate"]
        fig8_job = figure8_job(self.p)
        figure8 = [figures_dir(eval_path(self.p, fig8_job, "nyud"))] if fig8_job else []
        main = [e for e in evals if "/figure7/" not in e]
        t2 = [e for e in main if e.endswith("/nyud.json")]
        t3 = [e for e in main if e.endswith("/taskonomy.json")]
        f7 = (
            [e for e in evals if "/figure7/" in e]
            + [eval_path(self.p, j, "nyud") for j in (self.p.figure7.jobs if self.p.figure7 else [])]
            + figure8
        )
        res = self.results
        self.add(
            "table2",
            "tables",
            ["tables", "--only", "table2", "--out", str(res)],
            t2,
            [str(res / "table2.csv")],
            param_keys=["profile"],
            metrics=(str(res / "table2.csv"),),
        )
        self.add(
            "table3",
            "tables",
            ["tables", "--only", "table3", "--out", str(res)],
            t3,
            [str(res / "table3.csv")],
            param_keys=["profile"],
            metrics=(str(res / "table3.csv"),),
        )
        if self.p.figure7 is not None:
            outs = [str(res / "figure7.csv"), str(res / "figure7.png"), str(res / "figure8.png")]
            self.add(
                "figure7",
                "tables",
                ["tables", "--only", "figure7", "--out", str(res)],
                sorted(set(f7)),
                outs,
                param_keys=["figure7"],
                plots=(str(res / "figure7.csv"),),
            )
        if self.p.sweeps:
            summaries = [sweep_summary_path(self.p, n) for n in sorted(self.p.sweeps)]
            tables = sorted({s.table for s in self.p.sweeps.values()})
            self.add(
                "ablations",
                "tables",
                ["tables", "--only", "ablations", "--out", str(res)],
                summaries,
                [str(res / f"{t}.csv") for t in tables],
                param_keys=["sweeps"],
                metrics=tuple(str(res / f"{t}.csv") for t in tables),
            )


def figures_dir(eval_json: str) -> str:
    """The folder of prediction figures written beside an evaluation JSON."""
    return str(Path(eval_json).with_suffix("")) + "_figures"


def figure8_job(params: Params) -> str | None:
    """The job whose cluster probability maps make Fig. 8: the first PolyMaX depth job (preferring
    one of the Fig. 7 jobs); None when the profile has none."""
    preferred = params.figure7.jobs if params.figure7 else []
    for name in [*preferred, *params.jobs]:
        job = params.jobs[name]
        if job.model.name == "polymax" and job.tasks == ["depth"] and job.finetune is not None:
            return name
    return None


def fraction_tag(fraction: float) -> str:
    """0.25 -> '25' (percent, for paths and stage names)."""
    return f"{round(fraction * 100):d}"


def eval_path(params: Params, job: str, dataset: str) -> str:
    """Where the evaluation of `job` on `dataset` is written."""
    return str(Path(params.paths.runs) / job / "eval" / f"{dataset}.json")


def figure7_eval_path(params: Params, job: str, fraction: float) -> str:
    """Evaluation of `job` pretrained on `fraction` of Taskonomy (Fig. 7); 100% is the main job."""
    cfg = params.jobs[job]
    if fraction == 1.0 and cfg.pretrain is not None and cfg.pretrain.fraction == 1.0:
        return eval_path(params, job, "nyud")
    return str(
        Path(params.paths.runs) / "figure7" / job / f"frac{fraction_tag(fraction)}" / "eval" / "nyud.json"
    )


def sweep_summary_path(params: Params, sweep: str) -> str:
    """The summary CSV a sweep writes."""
    return str(Path(params.paths.runs) / "sweeps" / sweep / "summary.csv")


def build_stages(params: Params, params_path: str | Path) -> list[Stage]:
    """Every stage of the profile, in dependency order."""
    b = _Builder(params, Path(params_path))
    b.data()
    b.jobs()
    b.figure7()
    b.sweeps()
    b.tables()
    names = [s.name for s in b.stages]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate stage names: {sorted(n for n in names if names.count(n) > 1)}")
    return b.stages


def dvc_yaml(stages: list[Stage], params_path: str | Path) -> dict[str, Any]:
    """The dvc.yaml document for `stages`: params tracked per key, tables as git-kept metrics."""
    doc: dict[str, Any] = {"stages": {}}
    for st in stages:
        entry: dict[str, Any] = {"cmd": st.command, "deps": list(st.deps)}
        if st.param_keys:
            entry["params"] = [{str(params_path): list(st.param_keys)}]
        outs = [_dvc_out(st, o) for o in st.outs if o not in st.metrics and o not in st.plots]
        if outs:
            entry["outs"] = outs
        if st.metrics:
            entry["metrics"] = [{m: {"cache": False}} for m in st.metrics]
        if st.plots:
            entry["plots"] = [{p: {"cache": False}} for p in st.plots]
        doc["stages"][st.name] = entry
    return doc


def _dvc_out(stage: Stage, out: str) -> Any:
    """Tables and figures stay in git (cache: false). Training outputs persist: the train command is
    idempotent (a finished final.pt with the same config is kept), so DVC must not delete what a
    Snakemake run already produced."""
    if stage.kind == "tables":
        return {out: {"cache": False}}
    if stage.kind in ("train", "tune"):
        return {out: {"persist": True}}
    return out
