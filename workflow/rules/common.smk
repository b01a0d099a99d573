# Loads and validates the params profile (with Snakemake's --config applied like --set), and builds
# the stage list that stages.smk turns into rules.
import os
import subprocess
import sys
from pathlib import Path

from snakemake.utils import validate

from densepred.config import ParamsError
from densepred.params_loading import load_params, read_profile
from densepred.dvc_stages import dvc_names
from densepred.pipeline import build_stages
from densepred.stage import RECORDED_KINDS, Command, upstream
from densepred.records import stale_stages
from densepred.snakemake_hooks import config_overrides, rerun_stale

# `--configfile PROFILE [OVERRIDE_SET ...]`: the first file is the profile, any further ones are override
# sets merged over it in order (params/rehearse.yaml); every stage's command gets the same files
# (`--params PROFILE OVERRIDE_SET...`).
if workflow.overwrite_configfiles:
    PARAMS_FILES = [os.path.relpath(f) for f in workflow.overwrite_configfiles]
else:
    PARAMS_FILES = ["params/smoke.yaml"]

    configfile: PARAMS_FILES[0]


PARAMS_FILE = PARAMS_FILES[0]
try:
    OVERRIDES = config_overrides(config, read_profile(PARAMS_FILES))
    PARAMS = load_params(PARAMS_FILES, OVERRIDES)
except ParamsError as exc:
    sys.exit(f"densepred: {exc}")
# the resolved profile (presets merged, overrides applied) against the exported schema
validate(PARAMS.model_dump(mode="json"), "../schemas/params.schema.json", set_default=False)
STAGES = build_stages(PARAMS, PARAMS_FILES, OVERRIDES)
# an output made under other settings than its stage's current ones (by DVC, by hand) reruns
rerun_stale(workflow, STAGES)


def stages_of(*kinds):
    """The stages of the given kinds, in pipeline order."""
    return [s for s in STAGES if s.kind in kinds]


def outputs_of(stage):
    """Snakemake outputs: folders wrapped in directory(), figures and the tables' HTML pages in
    report(), so the report of any table's path shows that table (its viewer renders HTML, images
    and PDF; a CSV would only be a download link)."""
    outs = []
    for out in stage.outs:
        if out in stage.out_dirs:
            outs.append(directory(out))
        elif stage.kind == "tables" and out.endswith(".png"):
            outs.append(report(out, caption=f"../report/{Path(out).stem}.rst", category="Figures"))
        elif stage.kind == "tables" and out.endswith(".html"):
            outs.append(report(out, caption=f"../report/{Path(out).stem}.rst", category="Tables"))
        else:
            outs.append(out)
    return outs


def inputs_of(stage):
    """Data and checkpoint inputs, and the .py files of the packages the stage imports."""
    return [*stage.deps, *stage.source_files]


def params_of(stage):
    """Rule params: the stage's command and, for stages whose outputs record nothing, its resolved
    settings (Snakemake's params rerun trigger). Training, evaluation and tables outputs record the
    settings they were made with, which decide their reruns (rerun_stale), whichever tool made them:
    Snakemake's own record of its last run would disagree with a file DVC rewrote since. The command
    is a `Command` object, which Snakemake cannot represent and so leaves out of the params trigger:
    the params file's path and the checkout's location never rerun a stage."""
    if stage.kind in RECORDED_KINDS:
        return {"command": Command(stage.argv)}
    return {"settings": stage.settings, "command": Command(stage.argv)}


def dvc_commit(log):
    """After a successful run, record what Snakemake built in dvc.lock (`dvc commit`), so that
    `dvc status` agrees. Only for the profile and overrides dvc.yaml was generated for: the default
    profile with no --config."""
    if not Path(".dvc").is_dir() or not Path("dvc.yaml").is_file():
        return
    if OVERRIDES or PARAMS_FILES != ["params/smoke.yaml"]:
        print("dvc.lock not updated: dvc.yaml describes params/smoke.yaml without overrides", file=sys.stderr)
        return
    names = dvc_names(STAGES, PARAMS_FILE)  # rule -> DVC stage (`finetune@polymax_depth`)
    jobs = {job.rule.name for job in workflow.dag.jobs}
    built = sorted(names[name] for name in jobs if name in names)
    # never record an output made from, or with, an output whose own record disagrees with its
    # stage's settings (records.py); stages kept from rerunning by --allowed-rules are not in the DAG
    stale = stale_stages(upstream(STAGES, [s for s in STAGES if s.name in jobs]))
    if stale:
        name, why = next(iter(stale.items()))
        sys.exit(f"densepred: dvc.lock not updated: stage {names.get(name, name)}: {why}")
    if built:
        # --no-relink: record and cache the outputs without rewriting them, so their modification
        # times (which Snakemake compares) stay as Snakemake left them
        cmd = ["dvc", "commit", "--force", "--no-relink", "--quiet", *built]
        done = subprocess.run(cmd, check=False)
        if done.returncode != 0:
            print(f"dvc commit failed (exit {done.returncode}); run `dvc commit` by hand", file=sys.stderr)


onsuccess:
    dvc_commit(log)


localrules:
    all,


rule all:
    """Every table and figure of the profile, and the tables' HTML pages (also reachable as
    `results/all`)."""
    input:
        [o for s in stages_of("tables") for o in s.outs],
