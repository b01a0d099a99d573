# Data: synthetic raw datasets in the real formats (synthetic profiles only), then prepared shards.


for _stage in stages_of("synth", "prepare"):

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
            mem_mb=PARAMS.runtime.mem_mb,
        shell:
            "{params.command} > {log} 2>&1"
