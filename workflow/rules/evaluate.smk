# Accuracy of every checkpoint (and of each teacher) on the run's benchmarks.
# job_grouping.evaluate: "checkpoint" (default, the paper's GPU jobs) runs one job per checkpoint
# and benchmark; "run" evaluates all checkpoints of a run in one job (`geopd batch`: one process
# start-up and import per run instead of per checkpoint), writing the same files.
# The commands' arguments are built in common.smk (evaluate_args and the functions using it).

if G.grouping("evaluate") == "run":

    rule evaluate_run:
        input:
            checkpoints=L.checkpoints_dir("{run}"),
            data=lambda wc: sorted({benchmark_data(b) for b in G.runs[wc.run].benchmarks}),
        output:
            directory(L.eval_run_dir("{run}")),
        params:
            commands=lambda wc, threads: json.dumps(run_evaluations(wc.run, threads)),
        threads: threads("evaluate_run")
        log:
            L.log("evaluate", "{run}.log"),
        resources:
            **res("evaluate_run"),
        conda:
            "../envs/geopd.yaml"
        shell:
            "{resources.geopd:q} batch --commands {params.commands:q} 2> {log:q}"

else:

    rule evaluate:
        input:
            checkpoints=L.checkpoints_dir("{run}"),
            data=lambda wc: benchmark_data(wc.bench),
        output:
            result=L.eval_file("{run}", "{step}", "{bench}"),
            samples=samples_file(L.eval_file("{run}", "{step}", "{bench}")),
        params:
            args=lambda wc, output, threads: shlex.join(evaluate_args(
                G.checkpoint(wc.run, int(wc.step)), evaluation_spec(G, wc.bench, run=wc.run), output.result, threads)),
        threads: threads("evaluate")
        log:
            L.log("evaluate", "{run}.step-{step}.{bench}.log"),
        resources:
            **res("evaluate"),
        conda:
            "../envs/geopd.yaml"
        shell:
            "{resources.geopd:q} {params.args} 2> {log:q}"


rule evaluate_model:
    input:
        model=lambda wc: G.model_inputs(wc.model),
        data=lambda wc: benchmark_data(wc.bench),
    output:
        result=L.model_eval_file("{model}", "{bench}"),
        samples=samples_file(L.model_eval_file("{model}", "{bench}")),
    params:
        args=lambda wc, output, threads: shlex.join(evaluate_args(
            G.model_source(wc.model), evaluation_spec(G, wc.bench, model=wc.model), output.result, threads)),
    threads: threads("evaluate")
    log:
        L.log("evaluate", "model.{model}.{bench}.log"),
    resources:
        **res("evaluate"),
    conda:
        "../envs/geopd.yaml"
    shell:
        "{resources.geopd:q} {params.args} 2> {log:q}"


rule aggregate_eval:
    input:
        per_checkpoint=G.eval_inputs(),
        grid=L.grid_file(),
    output:
        L.accuracy_file(),
    params:
        results=results_root,
    log:
        L.log("aggregate_eval.log"),
    resources:
        **res("report"),
    conda:
        "../envs/geopd.yaml"
    shell:
        "geopd report aggregate-eval --results {params.results:q} --grid {input.grid:q} --out {output:q} 2> {log:q}"
