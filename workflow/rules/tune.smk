# Ablations: one Ray Tune sweep per rule; the local Ray instance is sized by the rule's threads.


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
        threads: workflow.cores
        resources:
            **_stage.resources,
        shell:
            "DENSEPRED_RAY_CPUS={threads} {params.command} > {log} 2>&1"
