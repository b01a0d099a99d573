# Results: tables (CSV, versioned in git), figures and each table's HTML page for the report (so
# `snakemake --report report.html results/table2.csv` shows table 2; pages are not versioned), and the
# stage's record of what it built them from (records.py), from the evaluation outputs.


for _stage in stages_of("tables"):

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
        localrule: True
        shell:
            "{params.command} > {log} 2>&1"


rule results_all:
    """`snakemake results/all`: every table and figure, then a stamp listing them (under the profile's
    results folder: `results/rehearsal/all` for the rehearsal)."""
    input:
        rules.all.input,
    output:
        touch(str(Path(PARAMS.paths.results) / "all")),
    localrule: True
