# Training: Taskonomy pretraining and NYUD-v2 finetuning of every job (and the Fig. 7 fraction chains).
# `params` carries the job's settings, so editing one job reruns exactly that job's chain.


for _stage in stages_of("train"):

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
        shell:
            "OMP_NUM_THREADS={threads} {params.command} > {log} 2>&1"
