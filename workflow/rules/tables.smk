# Results: tables (CSV, versioned in git) and figures, from the evaluation outputs; each table also as
# an HTML page for the report (`pages_of`), so `snakemake --report report.html results/table2.csv`
# shows table 2. The pages are written on the submit host and not versioned.

from densepred.tables import write_html_table


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
            pages=pages_of(_stage),
        log:
            _stage.log,
        localrule: True
        run:
            shell("{params.command} > {log} 2>&1")
            for page, csv in params.pages.items():
                write_html_table(csv, page)


rule results_all:
    """`snakemake results/all`: every table and figure, then a stamp listing them (under the profile's
    results folder: `results/rehearsal/all` for the rehearsal)."""
    input:
        rules.all.input,
    output:
        touch(str(Path(PARAMS.paths.results) / "all")),
    localrule: True
