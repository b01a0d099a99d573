# Results: tables (CSV, versioned in git) and figures, from the evaluation outputs; with `--html` the
# command also writes each table as an HTML page for the report (`pages_of`), so
# `snakemake --report report.html results/table2.csv` shows table 2. The pages are not versioned.


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
            "{params.command} --html > {log} 2>&1"


rule results_all:
    """`snakemake results/all`: every table and figure, then a stamp listing them (under the profile's
    results folder: `results/rehearsal/all` for the rehearsal)."""
    input:
        rules.all.input,
    output:
        touch(str(Path(PARAMS.paths.results) / "all")),
    localrule: True
