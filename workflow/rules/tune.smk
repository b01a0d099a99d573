# Ablations: one Ray Tune sweep per rule. Its threads (the CPUs of the trials it runs at once, from the
# sweep's `resources` and `max_concurrent`) size the local Ray instance; no `--cores` needed.


for _stage in stages_of("tune"):

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
            "DENSEPRED_RAY_CPUS={threads} {params.command} > {log} 2>&1"
