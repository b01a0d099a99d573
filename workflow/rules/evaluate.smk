# Evaluation: NYUD-v2 test under both depth protocols (and Taskonomy test for table 3), and the
# trivial reference of table 2 scored by the same meters.


for _stage in stages_of("evaluate", "reference"):

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
        resources:
            **_stage.resources,
        shell:
            "OMP_NUM_THREADS={threads} {params.command} > {log} 2>&1"
