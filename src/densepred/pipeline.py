"""The pipeline DAG, defined once: Snakemake rules and dvc.yaml stages are both generated from it.

`build_stages(params, params_path, overrides)` lists every stage of a profile (synth -> prepare ->
pretrain -> finetune -> evaluate -> tables, the Fig. 7 data-fraction chains and the ablation sweeps)
with its command, inputs, outputs, log, threads, scheduling priority and resources, and two views of
the settings whose change must rerun it:

* `settings`: the stage's resolved settings as canonical JSON (for training and evaluation the
  `StageRun.identity()` of stage_run.py). Snakemake's rule params hold exactly this, so naming the
  default profile explicitly, running from a moved checkout or adding an unrelated job plans nothing,
  and an edit reruns exactly the stages whose resolved settings it changes.
* `param_keys`: the keys of the params file those settings come from (the job's keys and the preset
  its stage starts from), which dvc.yaml lists as the stage's `params`.

Seeds: a job that runs several seeds (`seeds:`, or `jobs.<job>.seeds`) has its whole chain (pretrain
-> finetune -> evaluate, and its Fig. 7 chains) once per seed, each stage named with a `_seed<k>`
suffix, writing under a `seed<k>` folder (paths.py) and running its seed through `--set seed=<k>`
(which the stage's `StageRun` and its identity carry). A job with one seed keeps the stage names,
folders and commands it has without seeds, so a one-seed profile plans exactly what it did before.
The sweeps are not fanned out: they run with the file's `seed`.

The Snakefile turns each stage into a rule; `densepred dvc` writes the same stages to dvc.yaml
(dvc_stages.py; a test checks the committed dvc.yaml is current), so the two definitions cannot
drift. Paths come from paths.py.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densepred import paths
from densepred.config import (
    PRESET_KEY,
    Params,
    ParamsFiles,
    RuntimeCfg,
    merge_presets,
    profile_files,
    read_profile,
    validate,
    with_overrides,
)
from densepred.launch import train_argv as launch_argv
from densepred.launch import train_resources, with_kernel_env
from densepred.reference import reference_eval_settings, reference_tasks
from densepred.stage_run import StageRun
from densepred.sweeps import expand_trials

TABLES = ("table2", "table3", "figure7", "ablations")
# The kinds of stage whose numbers depend on the CPU kernels (`runtime.cpu_kernels`, launch.py).
_KERNEL_KINDS = ("train", "evaluate", "tune", "reference")
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
    """One pipeline step: a `densepred` command with explicit inputs and outputs."""

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


_MISSING = object()


def _lookup(tree: dict[str, Any], dotted: str, default: Any = None) -> Any:
    """The value at a dotted key of a nested mapping, or `default` when a part is missing."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _has(tree: dict[str, Any], dotted: str) -> bool:
    return _lookup(tree, dotted, _MISSING) is not _MISSING


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class _Builder:
    """Accumulates the stages of one profile."""

    def __init__(
        self, params: Params, files: list[Path], tree: dict[str, Any], sets: tuple[str, ...]
    ) -> None:
        self.p = params
        self.files = tuple(str(f) for f in files)  # the profile, then its override sets
        self.path = " + ".join(self.files)  # names the files in error messages
        self.tree = tree  # the params files' own tree (overrides applied, presets not merged)
        self.merged = merge_presets(tree, self.path)
        self.sets = sets
        self.stages: list[Stage] = []

    # -- helpers
    def add(
        self,
        name: str,
        kind: str,
        args: list[str],
        deps: list[str],
        outs: list[str],
        keys: list[str],
        settings: Any = None,
        launch: RuntimeCfg | None = None,
        **kw: Any,
    ) -> Stage:
        """One stage; `settings` defaults to the resolved values of `keys`. `launch`: the runtime
        whose process count starts the command (launch.py; training stages)."""
        if settings is None:
            settings = {k: _lookup(self.merged, k) for k in keys}
        overrides = (*self.sets, *kw.pop("sets", ()))
        set_args = [a for s in overrides for a in ("--set", s)]
        argv = ("densepred", args[0], "--params", *self.files, *args[1:], *set_args)
        stage = Stage(
            name=name,
            kind=kind,
            argv=self.command(kind, argv, launch),
            overrides=overrides,
            deps=tuple(deps),
            outs=tuple(outs),
            param_keys=tuple(k for k in keys if _has(self.tree, k)),
            settings=_canonical(settings),
            log=paths.log_path(self.p, name),
            benchmark=paths.benchmark_path(self.p, name),
            **kw,
        )
        self.stages.append(stage)
        return stage

    def command(self, kind: str, argv: tuple[str, ...], launch: RuntimeCfg | None) -> tuple[str, ...]:
        """The stage's command line: started with its process count (training, launch.py) and, for
        the kinds whose numbers depend on them, under the profile's CPU kernel pins."""
        if launch is not None:
            argv = launch_argv(launch, argv)
        return with_kernel_env(self.p.runtime, argv) if kind in _KERNEL_KINDS else argv

    def job_keys(self, job: str, stage: str) -> list[str]:
        """The file keys a job's stage is resolved from: its model, tasks and stage settings, the
        preset those start from, and the seed. (The runtime settings that change numbers on a GPU
        are part of the stage's `settings`, which key Snakemake's reruns, but are left out of
        dvc.yaml to keep it readable: after changing them, rerun with `dvc repro --force`.)"""
        keys = [f"jobs.{job}.model", f"jobs.{job}.tasks", f"jobs.{job}.{stage}"]
        preset = _lookup(self.tree, f"jobs.{job}.{stage}.{PRESET_KEY}")
        if isinstance(preset, str):
            keys.append(f"presets.{preset}")
        return [*keys, "seed"]

    def eval_resources(self) -> dict[str, Any]:
        """An evaluation is one process: one GPU at most."""
        rt = self.p.runtime
        return {"mem_mb": rt.mem_mb, "gpu": min(rt.gpus_per_job, 1)}

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
                    ["synth.seed", f"synth.{name}"],
                    out_dirs=frozenset({raw}),
                    resources={"mem_mb": self.p.runtime.mem_mb},
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
                [f"datasets.{name}"],
                out_dirs=frozenset({str(ds.prepared)}),
                record=paths.data_record(ds.prepared),
                resources={"mem_mb": self.p.runtime.mem_mb},
            )

    def reference(self) -> None:
        """The trivial reference of table 2 (reference.py): the training split's prior, scored on
        the test split by the jobs' own evaluation settings."""
        if "nyud" not in self.p.datasets or not reference_tasks(self.p):
            return
        settings = reference_eval_settings(self.p, "nyud")
        out = paths.reference_path(self.p, "nyud")
        # the tasks and evaluation settings it takes from the jobs it stands beside
        keys = ["datasets.nyud"]
        for job in (n for n, j in self.p.jobs.items() if "table2" in j.tables):
            keys += [f"jobs.{job}.tasks", f"jobs.{job}.evaluate"]
            preset = _lookup(self.tree, f"jobs.{job}.evaluate.{PRESET_KEY}")
            if isinstance(preset, str) and f"presets.{preset}" not in keys:
                keys.append(f"presets.{preset}")
        self.add(
            "reference_nyud",
            "reference",
            ["reference", "--dataset", "nyud", "--out", out],
            [str(self.p.datasets["nyud"].prepared)],
            [out],
            keys,
            settings={"tasks": reference_tasks(self.p), "evaluate": settings.model_dump(mode="json")},
            resources={"mem_mb": self.p.runtime.mem_mb},
            metrics=(out,),
        )

    # -- one job's chain
    def seed_sets(self, job: str, seed: int) -> tuple[str, ...]:
        """The override that makes a chain's commands run `seed`: `--set seed=<k>` whenever the job
        runs several seeds or its one seed is not the file's `seed` (none otherwise, so a one-seed
        profile's commands stay as they were)."""
        if paths.seeds_fanned_out(self.p, job) or seed != self.p.seed:
            return (f"seed={seed}",)
        return ()

    def chain(
        self,
        job: str,
        seed: int,
        prefix: str = "",
        run_dir: Path | None = None,
        sets: tuple[str, ...] = (),
        skip_pretrain: bool = False,
    ) -> str | None:
        """A job's training stages (pretrain -> finetune) for one of its seeds; returns the last
        stage's final.pt. `sets` are the chain's own overrides, the seed's included."""
        params = self.p if not sets else _with_overrides(self.tree, sets, self.path)
        cfg = params.jobs[job]
        run_dir = run_dir or paths.run_dir(self.p, job, seed)
        suffix = paths.stage_suffix(self.p, job, seed)
        last: str | None = None
        tag = prefix or job
        for stage in ("pretrain", "finetune"):
            scfg = getattr(cfg, stage)
            if scfg is None or (stage == "pretrain" and skip_pretrain):
                continue
            folder = paths.stage_dir(run_dir, stage)
            out = str(paths.final_checkpoint(folder))
            run = StageRun.train(params, job, stage, folder, Path(last) if last else None)
            init = ["--init", last] if last else []
            threads, resources = train_resources(params.runtime)
            self.add(
                f"{stage}_{tag}{suffix}",
                "train",
                ["train", "--job", job, "--stage", stage, *init, "--out", str(folder)],
                [str(self.p.datasets[scfg.dataset].prepared), *([last] if last else [])],
                [out],
                self.job_keys(job, stage),
                settings=run.identity(),
                sets=sets,
                job=job,
                train_stage=stage,
                init=last,
                launch=params.runtime,
                threads=threads,
                priority=PRIORITY[stage],
                resources=resources,
                plots=((str(paths.train_log(folder)), "step", "total"),),
            )
            last = out
        return last

    def evaluate(
        self, job: str, seed: int, ckpt: str, dataset: str, out: str, tag: str, sets: tuple[str, ...] = ()
    ) -> None:
        params = self.p if not sets else _with_overrides(self.tree, sets, self.path)
        run = StageRun.evaluate(params, job, Path(ckpt), Path(out), dataset)
        figures = paths.figures_dir(out)
        # the model, tasks and seed reach an evaluation through its checkpoint
        keys = [
            k for k in self.job_keys(job, "evaluate") if k.endswith(".evaluate") or k.startswith("presets.")
        ]
        own = dataset == params.jobs[job].evaluate.dataset
        self.add(
            f"evaluate_{tag}_{dataset}{paths.stage_suffix(self.p, job, seed)}",
            "evaluate",
            [
                "evaluate",
                "--job",
                job,
                "--ckpt",
                ckpt,
                *([] if own else ["--dataset", dataset]),
                "--out",
                out,
            ],
            [ckpt, str(self.p.datasets[dataset].prepared)],
            [out, figures],
            keys,
            settings=run.identity(),
            sets=sets,
            job=job,
            init=ckpt,
            out_dirs=frozenset({figures}),
            threads=self.p.runtime.threads,
            resources=self.eval_resources(),
            metrics=(out,),
        )

    def jobs(self) -> None:
        """Every job's chain and evaluations, once per seed of the job."""
        for job, cfg in self.p.jobs.items():
            for seed in self.p.job_seeds(job):
                sets = self.seed_sets(job, seed)
                last = self.chain(job, seed, sets=sets)
                if cfg.finetune is not None and last is not None:
                    dataset = cfg.evaluate.dataset
                    out = paths.eval_path(self.p, job, dataset, seed)
                    self.evaluate(job, seed, last, dataset, out, job, sets=sets)
                pretrained = cfg.pretrain is not None and cfg.pretrain.dataset == "taskonomy"
                if "table3" in cfg.tables and pretrained:
                    folder = paths.stage_dir(paths.run_dir(self.p, job, seed), "pretrain")
                    ckpt = str(paths.final_checkpoint(folder))
                    out = paths.eval_path(self.p, job, "taskonomy", seed)
                    self.evaluate(job, seed, ckpt, "taskonomy", out, job, sets=sets)

    def figure7(self) -> None:
        """Fig. 7's data-fraction chains, once per seed of each job (100% is the main job's chain)."""
        fig = self.p.figure7
        if fig is None:
            return
        for job in fig.jobs:
            for fraction in fig.fractions:
                if paths.is_main_figure7_point(self.p, job, fraction):
                    continue  # the main job is the 100% point
                tag = f"{job}_frac{paths.fraction_tag(fraction)}"
                frac_sets = () if fraction == 0.0 else (f"jobs.{job}.pretrain.fraction={fraction}",)
                for seed in self.p.job_seeds(job):
                    run_dir = paths.figure7_run_dir(self.p, job, fraction, seed)
                    sets = (*frac_sets, *self.seed_sets(job, seed))
                    last = self.chain(
                        job, seed, prefix=tag, run_dir=run_dir, sets=sets, skip_pretrain=fraction == 0.0
                    )
                    if last is not None:
                        out = paths.figure7_eval_path(self.p, job, fraction, seed)
                        self.evaluate(job, seed, last, "nyud", out, tag, sets=sets)

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
            keys = [f"sweeps.{name}", *self.job_keys(sweep.job, "pretrain"), f"jobs.{sweep.job}.finetune"]
            keys += [k for k in self.job_keys(sweep.job, "finetune") if k not in keys]
            keys += [f"jobs.{sweep.job}.evaluate"]
            # the sweep's job (one SLURM allocation, or a share of this machine) holds the trials it
            # runs at once: their CPUs become the rule's threads (which size the local Ray) and their
            # GPUs its `gpu` resource
            trials = len(expand_trials(sweep, name))
            concurrent = min(trials, sweep.max_concurrent or trials)
            cpus = math.ceil(sweep.resources.cpu * concurrent)
            gpus = math.ceil(sweep.resources.gpu * concurrent)
            self.add(
                f"tune_{name}",
                "tune",
                ["tune", "--sweep", name, "--out", str(paths.sweep_dir(self.p, name))],
                data,
                [paths.sweep_summary_path(self.p, name)],
                keys,
                threads=cpus,
                resources={"mem_mb": self.p.runtime.mem_mb, "gpu": gpus},
                record=paths.sweep_record(self.p, name),
                job=sweep.job,
                sweep=name,
            )

    def tables(self) -> None:
        evals = [s.outs[0] for s in self.stages if s.kind == "evaluate"]  # the reference is not one
        fig8_job = figure8_job(self.p)
        figure8 = []
        if fig8_job:
            first_seed = self.p.job_seeds(fig8_job)[0]
            figure8 = [paths.figures_dir(paths.eval_path(self.p, fig8_job, "nyud", first_seed))]
        main = [e for e in evals if "/figure7/" not in e]
        t2 = [e for e in main if e.endswith("/nyud.json")]
        t3 = [e for e in main if e.endswith("/taskonomy.json")]
        figure7_jobs = self.p.figure7.jobs if self.p.figure7 else []
        f7 = (
            [e for e in evals if "/figure7/" in e]
            + [paths.eval_path(self.p, j, "nyud", s) for j in figure7_jobs for s in self.p.job_seeds(j)]
            + figure8
        )
        table = self.table_stage
        t2_outs = [paths.table_path(self.p, "table2"), paths.table_runs_path(self.p, "table2")]
        references = [s.outs[0] for s in self.stages if s.kind == "reference"]
        table("table2", [*t2, *references], t2_outs, ["profile", "jobs"])
        table("table3", t3, [paths.table_path(self.p, "table3")], ["profile", "jobs"])
        if self.p.figure7 is not None:
            outs = [paths.table_path(self.p, n) for n in ("figure7", "figure7_rms")]
            outs.append(paths.table_path(self.p, "figure7", ".png"))
            outs.append(paths.table_path(self.p, "figure8", ".png"))
            table("figure7", sorted(set(f7)), outs, ["figure7"])
        if self.p.sweeps:
            summaries = [paths.sweep_summary_path(self.p, n) for n in sorted(self.p.sweeps)]
            names = sorted({s.table for s in self.p.sweeps.values()})
            table("ablations", summaries, [paths.table_path(self.p, t) for t in names], ["sweeps"])

    def table_stage(self, name: str, deps: list[str], outs: list[str], keys: list[str]) -> None:
        """A tables stage, keyed on its keys' resolved values and on every job's seeds (which name
        the seed of each row); the seeds are left out of dvc.yaml's params, because a change of seeds
        needs dvc.yaml regenerated anyway (its stage list is fixed: README, "Seeds")."""
        settings = {
            "profile": self.p.profile,
            "keys": {k: _lookup(self.merged, k) for k in keys},
            "seeds": {job: self.p.job_seeds(job) for job in self.p.jobs},
        }
        # each CSV's HTML page (for `snakemake --report` of any table) and the stage's record
        # (records.py) are outputs too, so DVC's run cache restores them with the tables
        pages = [paths.table_page(o) for o in outs if o.endswith(".csv")]
        record = paths.table_record(self.p, name)
        self.add(
            name,
            "tables",
            ["tables", "--only", name, "--out", str(self.p.paths.results), "--html"],
            deps,
            [*outs, *pages, record],
            [k for k in keys if k != "jobs"] or ["profile"],
            settings=settings,
            record=record,
        )


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


def _with_overrides(tree: dict[str, Any], sets: tuple[str, ...], source: str) -> Params:
    """The profile with a chain's own overrides (Fig. 7's pretraining fraction) applied."""
    return validate(with_overrides(tree, sets, f"{source} "), source)


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


def figure8_job(params: Params) -> str | None:
    """The job whose cluster probability maps make Fig. 8: the first PolyMaX depth job (preferring
    one of the Fig. 7 jobs); None when the profile has none."""
    preferred = params.figure7.jobs if params.figure7 else []
    for name in [*preferred, *params.jobs]:
        job = params.jobs[name]
        if job.model.name == "polymax" and job.tasks == ["depth"] and job.finetune is not None:
            return name
    return None


def build_stages(
    params: Params, params_path: ParamsFiles, overrides: list[str] | tuple[str, ...] = ()
) -> list[Stage]:
    """Every stage of the profile, in dependency order. `params_path` is the profile's file, or the
    profile followed by its override sets (params/rehearse.yaml), which every command receives as
    `--params PROFILE SET...`. `overrides` (KEY=VALUE, as `--set`) were applied to `params` already;
    they are passed on to every stage's command."""
    tree = with_overrides(read_profile(params_path), overrides)
    b = _Builder(params, profile_files(params_path), tree, tuple(overrides))
    b.data()
    b.reference()
    b.jobs()
    b.figure7()
    b.sweeps()
    b.tables()
    names = [s.name for s in b.stages]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate stage names: {sorted(n for n in names if names.count(n) > 1)}")
    return b.stages
