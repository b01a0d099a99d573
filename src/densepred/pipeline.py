"""The pipeline DAG, defined once: Snakemake rules and dvc.yaml stages are both generated from it.

`build_stages(params, params_path, overrides)` lists every stage of a profile (synth -> prepare ->
pretrain -> finetune -> evaluate -> tables, the Fig. 7 data-fraction chains and the ablation sweeps)
as `Stage` records (stage.py) with their command, inputs, outputs, log, threads, scheduling priority,
resources, typed fields (job, seed, dataset, Fig. 7 fraction, the tables fed) and two views of the
settings whose change must rerun them:

* `settings`: the stage's resolved settings as canonical JSON (for training and evaluation the
  `StageRun.identity()` of stage_run.py). Snakemake's rule params hold exactly this, so naming the
  default profile explicitly, running from a moved checkout or adding an unrelated job plans nothing,
  and an edit reruns exactly the stages whose resolved settings it changes.
* `param_keys`: the keys of the params file those settings come from (the job's keys and the preset
  its stage starts from), which dvc.yaml lists as the stage's `params`.

One function per phase: `data_stages`, `reference_stages`, `job_stages` (per job and seed,
`chain_stages`: a `training_stage` per training run of `stage_run.chain_runs`, then an
`evaluation_stage`), `figure7_stages`, `sweep_stages`, `table_stages`.

Seeds: a job that runs several seeds (`seeds:`, or `jobs.<job>.seeds`) has its whole chain (pretrain
-> finetune -> evaluate, and its Fig. 7 chains) once per seed, each stage named with a `_seed<k>`
suffix, writing under a `seed<k>` folder (paths.py) and running its seed through `--set seed=<k>`
(which the stage's `StageRun` and its identity carry). A job with one seed keeps the stage names,
folders and commands it has without seeds, so a one-seed profile plans exactly what it did before.
The sweeps are not fanned out: they run with the file's `seed`.

The Snakefile turns each stage into a rule (workflow/rules/stages.smk); `densepred dvc` writes the
same stages to dvc.yaml (dvc_stages.py; a test checks the committed dvc.yaml is current), so the two
definitions cannot drift. Paths come from paths.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from densepred import paths
from densepred.config import Params, RuntimeCfg
from densepred.launch import train_argv as launch_argv
from densepred.launch import train_resources, with_kernel_env
from densepred.params_loading import (
    PRESET_KEY,
    ParamsFiles,
    merge_presets,
    profile_files,
    read_profile,
    validate,
    with_overrides,
)
from densepred.reference import reference_eval_settings, reference_tasks
from densepred.stage import PRIORITY, Stage
from densepred.stage_run import TRAIN_STAGES, StageRun, chain_runs
from densepred.sweeps import expand_trials

# The kinds of stage whose numbers depend on the CPU kernels (`runtime.cpu_kernels`, launch.py): the
# data stages through numpy's OpenBLAS (the synthetic cameras), the others through torch.
_KERNEL_KINDS = ("synth", "prepare", "train", "evaluate", "tune", "reference")
# The variable a kind's rule sets to its threads: torch's CPU threads, or the CPUs of a sweep's Ray.
_THREAD_ENV = {
    "train": "OMP_NUM_THREADS",
    "evaluate": "OMP_NUM_THREADS",
    "reference": "OMP_NUM_THREADS",
    "tune": "DENSEPRED_RAY_CPUS",
}

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


@dataclass(frozen=True)
class Profile:
    """What every phase builds stages from: the resolved params, the params files every command
    receives, the files' own tree (overrides applied, presets not merged: what dvc.yaml's `params`
    name) and the `--set` overrides passed on to every command."""

    params: Params
    files: tuple[str, ...]  # the profile, then its override sets
    tree: dict[str, Any]
    sets: tuple[str, ...]

    @property
    def source(self) -> str:
        """The files, as error messages name them."""
        return " + ".join(self.files)

    @cached_property
    def merged(self) -> dict[str, Any]:
        """The files' tree with the presets merged: the resolved value of any key."""
        return merge_presets(self.tree, self.source)

    def with_sets(self, sets: tuple[str, ...]) -> Params:
        """The params with a chain's own overrides (its seed, Fig. 7's pretraining fraction)."""
        return self.params if not sets else _with_overrides(self.tree, sets, self.source)

    def stage(
        self,
        name: str,
        kind: str,
        args: list[str],
        deps: list[str],
        outs: list[str],
        keys: list[str],
        settings: Any = None,
        launch: RuntimeCfg | None = None,
        sets: tuple[str, ...] = (),
        **fields: Any,
    ) -> Stage:
        """One stage; `settings` defaults to the resolved values of `keys`. `launch`: the runtime
        whose process count starts the command (launch.py; training stages). `sets`: the stage's own
        overrides, after the profile's."""
        if settings is None:
            settings = {k: _lookup(self.merged, k) for k in keys}
        overrides = (*self.sets, *sets)
        set_args = [a for s in overrides for a in ("--set", s)]
        argv = ("densepred", args[0], "--params", *self.files, *args[1:], *set_args)
        if launch is not None:
            argv = launch_argv(launch, argv)
        if kind in _KERNEL_KINDS:
            argv = with_kernel_env(self.params.runtime, argv)
        return Stage(
            name=name,
            kind=kind,
            argv=argv,
            overrides=overrides,
            deps=tuple(deps),
            outs=tuple(outs),
            param_keys=tuple(k for k in keys if _has(self.tree, k)),
            settings=_canonical(settings),
            log=paths.log_path(self.params, name),
            benchmark=paths.benchmark_path(self.params, name),
            thread_env=_THREAD_ENV.get(kind, ""),
            **fields,
        )

    def job_keys(self, job: str, stage: str) -> list[str]:
        """The file keys a job's stage is resolved from: its model, tasks and stage settings, the
        preset those start from, and the seed. (The runtime settings that change numbers on a GPU
        are part of the stage's `settings`, which key Snakemake's reruns, but are left out of
        dvc.yaml to keep it readable: after changing them, rerun with `dvc repro --force`.)"""
        keys = [f"jobs.{job}.model", f"jobs.{job}.tasks", f"jobs.{job}.{stage}"]
        keys += self.preset_keys(job, stage)
        return [*keys, "seed"]

    def preset_keys(self, job: str, stage: str) -> list[str]:
        """`presets.<name>` when the job's stage starts from a preset in the file."""
        preset = _lookup(self.tree, f"jobs.{job}.{stage}.{PRESET_KEY}")
        return [f"presets.{preset}"] if isinstance(preset, str) else []


@dataclass(frozen=True)
class Chain:
    """One pretrain -> finetune -> evaluate chain of a job: a main chain for one of its seeds, or a
    Fig. 7 chain pretrained on `fraction` of Taskonomy (None on a main chain)."""

    job: str
    seed: int
    run_dir: Path
    sets: tuple[str, ...]  # the chain's own overrides (its seed, its pretraining fraction)
    fraction: float | None = None

    @property
    def skip_pretrain(self) -> bool:
        """Fig. 7's 0 % point starts finetuning from scratch."""
        return self.fraction == 0.0

    @property
    def variant(self) -> str:
        """The chain's part of its stage names besides the job: `_frac<pct>` on a Fig. 7 chain."""
        return "" if self.fraction is None else f"_frac{paths.fraction_tag(self.fraction)}"

    def names(self, params: Params, head: str, tail: str = "") -> tuple[str, str]:
        """A chain stage's name (`<head>_<job><variant><tail><seed suffix>`) and its group, the same
        without the job."""
        rest = f"{self.variant}{tail}{paths.stage_suffix(params, self.job, self.seed)}"
        return f"{head}_{self.job}{rest}", f"{head}{rest}"


def seed_sets(params: Params, job: str, seed: int) -> tuple[str, ...]:
    """The override that makes a chain's commands run `seed`: `--set seed=<k>` whenever the job runs
    several seeds or its one seed is not the file's `seed` (none otherwise, so a one-seed profile's
    commands stay as they were)."""
    if paths.seeds_fanned_out(params, job) or seed != params.seed:
        return (f"seed={seed}",)
    return ()


# -- phases


def data_stages(pf: Profile) -> list[Stage]:
    """Per dataset: synth (synthetic profiles) -> prepare.

    Each dataset is generated by its own stage, with only its own `synth.<name>` settings (and the
    shared seed) as params: the two generators run in parallel, and editing one dataset's settings
    leaves the other dataset's chain (for NYUD edits, all pretraining) in place.
    """
    stages = []
    resources = {"mem_mb": pf.params.runtime.mem_mb}
    for name, ds in sorted(pf.params.datasets.items()):
        raw, prepared = str(ds.raw), str(ds.prepared)
        if pf.params.synth is not None:
            args = ["synth", "--dataset", name, "--out", raw]
            synth = pf.stage(
                f"synth_{name}",
                "synth",
                args,
                [],
                [raw],
                ["synth.seed", f"synth.{name}"],
                out_dirs=frozenset({raw}),
                resources=resources,
                dataset=name,
            )
            stages.append(synth)
            deps = [raw]
        else:  # real data: listed when present, so that a dry run plans the graph before the download
            deps = [raw] if Path(raw).exists() else []
        prepare = pf.stage(
            f"prepare_{name}",
            "prepare",
            ["prepare", "--dataset", name, "--src", raw, "--out", prepared],
            deps,
            [prepared],
            [f"datasets.{name}"],
            out_dirs=frozenset({prepared}),
            record=paths.data_record(ds.prepared),
            resources=resources,
            dataset=name,
        )
        stages.append(prepare)
    return stages


def reference_stages(pf: Profile) -> list[Stage]:
    """The trivial reference of table 2 (reference.py): the training split's prior, scored on the
    test split by the jobs' own evaluation settings."""
    p = pf.params
    if "nyud" not in p.datasets or not reference_tasks(p):
        return []
    settings = reference_eval_settings(p, "nyud")
    out = paths.reference_path(p, "nyud")
    # the tasks and evaluation settings it takes from the jobs it stands beside
    keys = ["datasets.nyud"]
    for job in (n for n, j in p.jobs.items() if "table2" in j.tables):
        keys += [f"jobs.{job}.tasks", f"jobs.{job}.evaluate"]
        keys += [k for k in pf.preset_keys(job, "evaluate") if k not in keys]
    stage = pf.stage(
        "reference_nyud",
        "reference",
        ["reference", "--dataset", "nyud", "--out", out],
        [str(p.datasets["nyud"].prepared)],
        [out],
        keys,
        settings={"tasks": reference_tasks(p), "evaluate": settings.model_dump(mode="json")},
        resources={"mem_mb": p.runtime.mem_mb},
        metrics=(out,),
        dataset="nyud",
        feeds=("table2",),
    )
    return [stage]


@dataclass(frozen=True)
class Evaluation:
    """What a chain's evaluation scores: its dataset, its metrics JSON, the tables it feeds."""

    dataset: str
    out: str
    feeds: tuple[str, ...]


def chain_stages(pf: Profile, params: Params, chain: Chain, evaluation: Evaluation | None) -> list[Stage]:
    """A chain's training stages (pretrain -> finetune, each from the previous one's final.pt) and,
    when asked, the evaluation of its last checkpoint: one stage per run of `stage_run.chain_runs`,
    which the sweep's trials (tune.py) run too. `params`: the profile with the chain's overrides."""
    out, dataset = (Path(evaluation.out), evaluation.dataset) if evaluation else (None, None)
    feeds = evaluation.feeds if evaluation else ()
    runs = chain_runs(
        params,
        chain.job,
        chain.run_dir,
        skip_pretrain=chain.skip_pretrain,
        eval_out=out,
        eval_dataset=dataset,
    )
    return [
        training_stage(pf, params, chain, run)
        if run.stage in TRAIN_STAGES
        else evaluation_stage(pf, params, chain, run, feeds)
        for run in runs
    ]


def training_stage(pf: Profile, params: Params, chain: Chain, run: StageRun) -> Stage:
    """One training stage of a chain: `densepred train` of `run` (its folder, its --init)."""
    init = str(run.init) if run.init else None
    threads, resources = train_resources(params.runtime)
    name, group = chain.names(pf.params, run.stage)
    return pf.stage(
        name,
        "train",
        [
            "train",
            "--job",
            chain.job,
            "--stage",
            run.stage,
            *(["--init", init] if init else []),
            "--out",
            str(run.out),
        ],
        [str(pf.params.datasets[run.dataset].prepared), *([init] if init else [])],
        [str(paths.final_checkpoint(run.out))],
        pf.job_keys(chain.job, run.stage),
        settings=run.identity(),
        sets=chain.sets,
        launch=params.runtime,
        threads=threads,
        priority=PRIORITY[run.stage],
        resources=resources,
        plots=((str(paths.train_log(run.out)), "step", "total"),),
        init=init,
        train_stage=run.stage,
        group=group,
        **_chain_fields(chain, run.dataset),
    )


def _chain_fields(chain: Chain, dataset: str) -> dict[str, Any]:
    """The typed fields every stage of a chain carries."""
    return {"job": chain.job, "seed": chain.seed, "dataset": dataset, "figure7_fraction": chain.fraction}


def evaluation_stage(
    pf: Profile, params: Params, chain: Chain, run: StageRun, feeds: tuple[str, ...]
) -> Stage:
    """The evaluation `run` of a checkpoint of `chain` (`densepred evaluate`): its metrics JSON and
    figures folder."""
    out, ckpt = str(run.out), str(run.init)
    figures = paths.figures_dir(out)
    # the model, tasks and seed reach an evaluation through its checkpoint
    keys = [f"jobs.{chain.job}.evaluate", *pf.preset_keys(chain.job, "evaluate")]
    own = run.dataset == params.jobs[chain.job].evaluate.dataset
    rt = pf.params.runtime
    name, group = chain.names(pf.params, "evaluate", f"_{run.dataset}")
    return pf.stage(
        name,
        "evaluate",
        [
            "evaluate",
            "--job",
            chain.job,
            "--ckpt",
            ckpt,
            *([] if own else ["--dataset", run.dataset]),
            "--out",
            out,
        ],
        [ckpt, str(pf.params.datasets[run.dataset].prepared)],
        [out, figures],
        keys,
        settings=run.identity(),
        sets=chain.sets,
        init=ckpt,
        out_dirs=frozenset({figures}),
        threads=rt.threads,
        resources={"mem_mb": rt.mem_mb, "gpu": min(rt.gpus_per_job, 1)},  # one process: one GPU at most
        metrics=(out,),
        feeds=feeds,
        group=group,
        **_chain_fields(chain, run.dataset),
    )


def job_stages(pf: Profile) -> list[Stage]:
    """Every job's chain, once per seed of the job: training, the main evaluation (table 2 on
    NYUD-v2; also a Fig. 7 point for the Fig. 7 jobs) and, for table 3, the Taskonomy-pretrained
    checkpoint scored on Taskonomy's test split."""
    p = pf.params
    figure7_jobs = p.figure7.jobs if p.figure7 else []
    stages: list[Stage] = []
    for job, cfg in p.jobs.items():
        for seed in p.job_seeds(job):
            chain = Chain(job, seed, paths.run_dir(p, job, seed), seed_sets(p, job, seed))
            dataset = cfg.evaluate.dataset
            feeds = _main_eval_feeds(dataset, job in figure7_jobs)
            main = Evaluation(dataset, paths.eval_path(p, job, dataset, seed), feeds)
            params = pf.with_sets(chain.sets)
            stages += chain_stages(pf, params, chain, main if cfg.finetune is not None else None)
            if "table3" in cfg.tables and cfg.pretrain is not None and cfg.pretrain.dataset == "taskonomy":
                stages.append(_pretraining_evaluation(pf, params, chain))
    return stages


def _pretraining_evaluation(pf: Profile, params: Params, chain: Chain) -> Stage:
    """Table 3: a chain's Taskonomy-pretrained checkpoint scored on Taskonomy's test split."""
    ckpt = paths.final_checkpoint(paths.stage_dir(chain.run_dir, "pretrain"))
    out = Path(paths.eval_path(pf.params, chain.job, "taskonomy", chain.seed))
    run = StageRun.evaluate(params, chain.job, ckpt, out, "taskonomy")
    return evaluation_stage(pf, params, chain, run, ("table3",))


def _main_eval_feeds(dataset: str, in_figure7: bool) -> tuple[str, ...]:
    """The tables a main chain's evaluation feeds: table 2 (NYUD-v2) or table 3 (Taskonomy), and
    Fig. 7 for a Fig. 7 job's NYUD-v2 evaluation (its main chain is a point of the figure)."""
    table = {"nyud": ("table2",), "taskonomy": ("table3",)}.get(dataset, ())
    return (*table, "figure7") if in_figure7 and dataset == "nyud" else table


def figure7_stages(pf: Profile) -> list[Stage]:
    """Fig. 7's data-fraction chains, once per seed of each job (100 % is the main job's chain)."""
    p = pf.params
    if p.figure7 is None:
        return []
    stages: list[Stage] = []
    for job in p.figure7.jobs:
        for fraction in p.figure7.fractions:
            if paths.is_main_figure7_point(p, job, fraction):
                continue  # the main job is the 100% point
            frac_sets = () if fraction == 0.0 else (f"jobs.{job}.pretrain.fraction={fraction}",)
            for seed in p.job_seeds(job):
                run_dir = paths.figure7_run_dir(p, job, fraction, seed)
                chain = Chain(job, seed, run_dir, (*frac_sets, *seed_sets(p, job, seed)), fraction)
                out = paths.figure7_eval_path(p, job, fraction, seed)
                evaluation = Evaluation("nyud", out, ("figure7",))
                stages += chain_stages(pf, pf.with_sets(chain.sets), chain, evaluation)
    return stages


def sweep_stages(pf: Profile) -> list[Stage]:
    """One Ray Tune stage per sweep (tune.py), run with the file's seed.

    The sweep's job (one SLURM allocation, or a share of this machine) holds the trials it runs at
    once: their CPUs become the rule's threads (which size the local Ray) and their GPUs its `gpu`
    resource."""
    p = pf.params
    stages = []
    for name, sweep in sorted(p.sweeps.items()):
        cfg = p.jobs[sweep.job]
        data = sorted(
            {str(p.datasets[s.dataset].prepared) for s in (cfg.pretrain, cfg.finetune) if s is not None}
        )
        keys = [f"sweeps.{name}", *pf.job_keys(sweep.job, "pretrain"), f"jobs.{sweep.job}.finetune"]
        keys += [k for k in pf.job_keys(sweep.job, "finetune") if k not in keys]
        keys += [f"jobs.{sweep.job}.evaluate"]
        trials = len(expand_trials(sweep, name))
        concurrent = min(trials, sweep.max_concurrent or trials)
        tune = pf.stage(
            f"tune_{name}",
            "tune",
            ["tune", "--sweep", name, "--out", str(paths.sweep_dir(p, name))],
            data,
            [paths.sweep_summary_path(p, name)],
            keys,
            threads=math.ceil(sweep.resources.cpu * concurrent),
            resources={"mem_mb": p.runtime.mem_mb, "gpu": math.ceil(sweep.resources.gpu * concurrent)},
            record=paths.sweep_record(p, name),
            job=sweep.job,
            sweep=name,
            seed=p.seed,
            feeds=("ablations",),
        )
        stages.append(tune)
    return stages


def table_stages(pf: Profile, stages: list[Stage]) -> list[Stage]:
    """The tables and figures, each from the outputs of the stages that feed it (`Stage.feeds`)."""
    p = pf.params

    def fed(table: str) -> list[str]:
        """The outputs feeding `table`, in pipeline order, the trivial reference's last."""
        feeding = [s for s in stages if table in s.feeds]
        return [s.outs[0] for s in sorted(feeding, key=lambda s: s.kind == "reference")]

    tables = [
        _table_stage(
            pf, "table2", fed("table2"), [paths.table_path(p, "table2"), paths.table_runs_path(p, "table2")]
        ),
        _table_stage(pf, "table3", fed("table3"), [paths.table_path(p, "table3")]),
    ]
    if p.figure7 is not None:
        fig8_job = figure8_job(p)
        figure8 = (
            [paths.figures_dir(paths.eval_path(p, fig8_job, "nyud", p.job_seeds(fig8_job)[0]))]
            if fig8_job
            else []
        )
        outs = [paths.table_path(p, n) for n in ("figure7", "figure7_rms")]
        outs += [paths.table_path(p, "figure7", ".png"), paths.table_path(p, "figure8", ".png")]
        lines = list(
            dict.fromkeys(s.job for s in stages if s.kind == "evaluate" and s.figure7_fraction is not None)
        )
        plots = tuple((outs[1], "taskonomy_fraction", str(job)) for job in lines)
        tables.append(_table_stage(pf, "figure7", sorted(set(fed("figure7") + figure8)), outs, plots=plots))
    if p.sweeps:
        names = sorted({s.table for s in p.sweeps.values()})
        outs = [paths.table_path(p, t) for t in names]
        tables.append(_table_stage(pf, "ablations", fed("ablations"), outs))
    return tables


# the params-file keys each table is keyed on (besides every job's seeds)
_TABLE_KEYS = {
    "table2": ["profile", "jobs"],
    "table3": ["profile", "jobs"],
    "figure7": ["figure7"],
    "ablations": ["sweeps"],
}


def _table_stage(pf: Profile, name: str, deps: list[str], outs: list[str], **fields: Any) -> Stage:
    """A tables stage, keyed on its keys' resolved values and on every job's seeds (which name the
    seed of each row); the seeds are left out of dvc.yaml's params, because a change of seeds needs
    dvc.yaml regenerated anyway (its stage list is fixed: README, "Seeds")."""
    p, keys = pf.params, _TABLE_KEYS[name]
    settings = {
        "profile": p.profile,
        "keys": {k: _lookup(pf.merged, k) for k in keys},
        "seeds": {job: p.job_seeds(job) for job in p.jobs},
    }
    # each CSV's HTML page (for `snakemake --report` of any table) and the stage's record
    # (records.py) are outputs too, so DVC's run cache restores them with the tables
    pages = [paths.table_page(o) for o in outs if o.endswith(".csv")]
    record = paths.table_record(p, name)
    return pf.stage(
        name,
        "tables",
        ["tables", "--only", name, "--out", str(p.paths.results), "--html"],
        deps,
        [*outs, *pages, record],
        [k for k in keys if k != "jobs"] or ["profile"],
        settings=settings,
        record=record,
        table=name,
        local=True,
        **fields,
    )


def _with_overrides(tree: dict[str, Any], sets: tuple[str, ...], source: str) -> Params:
    """The profile with a chain's own overrides (Fig. 7's pretraining fraction) applied."""
    return validate(with_overrides(tree, sets, f"{source} "), source)


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
    files = tuple(str(f) for f in profile_files(params_path))
    pf = Profile(params, files, tree, tuple(overrides))
    stages = data_stages(pf) + reference_stages(pf) + job_stages(pf) + figure7_stages(pf) + sweep_stages(pf)
    stages += table_stages(pf, stages)
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate stage names: {sorted(n for n in names if names.count(n) > 1)}")
    return stages
