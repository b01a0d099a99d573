# Training: Taskonomy pretraining and NYUD-v2 finetuning of every job (and the Fig. 7 fraction chains).
# `params` carries the job's settings, so editing one job reruns exactly that job's chain.


for _stage in stages_of("train"):

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
        threads: _stage.threads
        resources:
            **_stage.resources,
        shell:
            shell_of(_stage, prefix="OMP_NUM_THREADS={threads} ")
