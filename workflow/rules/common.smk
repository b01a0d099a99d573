# Loads and validates the params profile, and builds the stage list every rule file wires.
from pathlib import Path

from snakemake.utils import validate

from densepred.config import load_params
from densepred.pipeline import build_stages

if workflow.overwrite_configfiles:
    if len(workflow.overwrite_configfiles) != 1:
        raise ValueError("give exactly one params profile with --configfile (e.g. params/paper.yaml)")
    PARAMS_FILE = str(workflow.overwrite_configfiles[0])
else:
    PARAMS_FILE = "params/smoke.yaml"

    configfile: PARAMS_FILE


validate(config, "../schemas/params.schema.json", set_default=False)
PARAMS = load_params(PARAMS_FILE)
STAGES = build_stages(PARAMS, PARAMS_FILE)


def stages_of(*kinds):
    """The stages of the given kinds, in pipeline order."""
    return [s for s in STAGES if s.kind in kinds]


def outputs_of(stage):
    """Snakemake outputs: folders wrapped in directory(), tables and figures in report()."""
    outs = []
    for out in stage.outs:
        if out in stage.out_dirs:
            outs.append(directory(out))
        elif stage.kind == "tables":
            caption = f"../report/{Path(out).stem}.rst"
            category = "Figures" if out.endswith(".png") else "Tables"
            outs.append(report(out, caption=caption, category=category))
        else:
            outs.append(out)
    return outs


def params_of(stage):
    """Rule params: the command (evaluated now, not at run time when the loop variable has moved on)
    and the job settings whose change must rerun the stage."""
    return {"command": stage.command, **stage.params}


localrules:
    all,


rule all:
    """Every table and figure of the profile (also reachable as `results/all`)."""
    input:
        [o for s in stages_of("tables") for o in s.outs],
