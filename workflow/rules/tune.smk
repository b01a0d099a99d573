# Ablations: one Ray Tune sweep per rule; the local Ray instance is sized by the rule's threads.


for _stage in stages_of("tune"):

    rule:
        name:
            _stage.name
        input:
            _stage.deps,
        output:
            outputs_of(_stage),
        params:
            **_stage.params,
        log:
            _stage.log,
        threads: workflow.cores
        resources:
            **_stage.resources,
        shell:
            shell_of(_stage, prefix="DENSEPRED_RAY_CPUS={threads} ")
