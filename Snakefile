# densepred pipeline: synth -> prepare -> pretrain (Taskonomy) -> finetune (NYUD-v2) -> evaluate -> tables,
# plus the Fig. 7 data-fraction chains and the Ray Tune ablations (each table also as an HTML page for the report).
#
#   snakemake --cores all results/table2.csv                       # default profile (params/smoke.yaml)
#   snakemake --cores all --configfile params/paper.yaml results/table2.csv
#   snakemake --cores all results/all                              # every table and figure
#
# The stages are defined once, in src/densepred/pipeline.py; dvc.yaml is generated from the same list.

include: "workflow/rules/common.smk"
include: "workflow/rules/stages.smk"
