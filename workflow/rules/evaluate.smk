# Accuracy of every checkpoint (and of each teacher) on the run's benchmarks.

from geopd.plan import evaluation_spec


rule evaluate:
    input:
        checkpoints=f"{R}/runs/{{run}}/checkpoints",
        data=lambda wc: G.data_dir(G.benchmarks[wc.bench]["data"]),
    output:
        result=f"{R}/eval/{{run}}/step-{{step}}/{{bench}}.json",
        samples=f"{R}/eval/{{run}}/step-{{step}}/{{bench}}.samples.jsonl",
    params:
        model=lambda wc: G.checkpoint(wc.run, int(wc.step)),
        spec=lambda wc: spec_json(evaluation_spec(G, wc.bench, run=wc.run)),
        seed=config["seed"],
    threads: threads("evaluate")
    log:
        f"{R}/logs/evaluate/{{run}}.step-{{step}}.{{bench}}.log",
    resources:
        **res("evaluate"),
    shell:
        "geopd evaluate --model {params.model} --benchmark {params.spec:q} --seed {params.seed} "
        "--out {output.result} --samples {output.samples} --threads {threads} 2> {log}"


rule evaluate_model:
    input:
        model=lambda wc: G.model_inputs(wc.model),
        data=lambda wc: G.data_dir(G.benchmarks[wc.bench]["data"]),
    output:
        result=f"{R}/eval/models/{{model}}/{{bench}}.json",
        samples=f"{R}/eval/models/{{model}}/{{bench}}.samples.jsonl",
    params:
        model=lambda wc: G.model_source(wc.model),
        spec=lambda wc: spec_json(evaluation_spec(G, wc.bench, model=wc.model)),
        seed=config["seed"],
    threads: threads("evaluate")
    log:
        f"{R}/logs/evaluate/model.{{model}}.{{bench}}.log",
    resources:
        **res("evaluate"),
    shell:
        "geopd evaluate --model {params.model} --benchmark {params.spec:q} --seed {params.seed} "
        "--out {output.result} --samples {output.samples} --threads {threads} 2> {log}"


rule aggregate_eval:
    input:
        G.eval_files(),
    output:
        f"{R}/eval/accuracy.csv",
    log:
        f"{R}/logs/aggregate_eval.log",
    resources:
        **res("report"),
    shell:
        "geopd report aggregate-eval --results {R} --out {output} 2> {log}"
