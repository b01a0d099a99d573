# One rule per pipeline stage (src/densepred/pipeline.py builds them; src/densepred/stage.py says what
# each field means), whatever its kind:
# - data: synthetic raw datasets in the real formats (synthetic profiles only), then prepared shards;
# - train: Taskonomy pretraining and NYUD-v2 finetuning of every job (and the Fig. 7 fraction chains),
#   highest priority first (pretraining heads the longest chains);
# - evaluate / reference: NYUD-v2 test under both depth protocols (and Taskonomy test for table 3),
#   and the trivial reference of table 2 scored by the same meters;
# - tune: one Ray Tune sweep per rule; its threads (the CPUs of the trials it runs at once) size the
#   local Ray instance through DENSEPRED_RAY_CPUS, so no `--cores` is needed;
# - tables: CSVs (versioned in git), figures, each table's HTML page for the report (so `snakemake
#   --report report.html results/table2.csv` shows table 2) and the stage's record (records.py); run
#   on the submitting host (local rules).
# `params` carries a stage's settings, so editing one job reruns exactly that job's chain.


for _stage in STAGES:

    rule:
        name:
            _stage.name
        input:
            inputs_of(_stage),
        output:
            outputs_of(_stage),
        params:
            **params_of(_stage),
        log:
            _stage.log,
        benchmark:
            _stage.benchmark,
        threads: _stage.threads
        priority: _stage.priority
        resources:
            **_stage.resources,
        localrule: _stage.local
        shell:
            _stage.shell


rule results_all:
    """`snakemake results/all`: every table and figure, then a stamp listing them (under the profile's
    results folder: `results/rehearsal/all` for the rehearsal)."""
    input:
        rules.all.input,
    output:
        touch(str(Path(PARAMS.paths.results) / "all")),
    localrule: True
