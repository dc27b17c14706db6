# Accuracy of every checkpoint (and of each teacher) on the run's benchmarks.
# job_grouping.evaluate: "checkpoint" (default, the paper's GPU jobs) runs one job per checkpoint
# and benchmark; "run" evaluates all checkpoints of a run in one job (`geopd batch`: one process
# start-up and import per run instead of per checkpoint), writing the same files.

import json
import shlex

from geopd.plan import evaluation_spec


def evaluate_args(model, spec, out, threads):
    """`geopd evaluate`'s arguments for one model on one benchmark (both groupings)."""
    return ["evaluate", "--model", str(model), "--benchmark", spec_json(spec), "--seed", str(config["seed"]),
            "--out", out, "--samples", out[:-len(".json")] + ".samples.jsonl", "--threads", str(threads)]


def run_evaluations(run, threads):
    return [evaluate_args(G.checkpoint(run, step), evaluation_spec(G, bench, run=run), G.eval_file(run, step, bench),
                          threads) for step, bench in G.eval_run_targets(run)]


if G.grouping("evaluate") == "run":

    rule evaluate_run:
        input:
            checkpoints=f"{R}/runs/{{run}}/checkpoints",
            data=lambda wc: sorted({G.data_dir(G.benchmarks[b]["data"]) for b in G.runs[wc.run].eval}),
        output:
            directory(f"{R}/eval/{{run}}"),
        params:
            commands=lambda wc, threads: json.dumps(run_evaluations(wc.run, threads)),
        threads: threads("evaluate_run")
        log:
            f"{R}/logs/evaluate/{{run}}.log",
        resources:
            **res("evaluate_run"),
        shell:
            "geopd batch --commands {params.commands:q} 2> {log}"

else:

    rule evaluate:
        input:
            checkpoints=f"{R}/runs/{{run}}/checkpoints",
            data=lambda wc: G.data_dir(G.benchmarks[wc.bench]["data"]),
        output:
            result=f"{R}/eval/{{run}}/step-{{step}}/{{bench}}.json",
            samples=f"{R}/eval/{{run}}/step-{{step}}/{{bench}}.samples.jsonl",
        params:
            args=lambda wc, output, threads: shlex.join(evaluate_args(
                G.checkpoint(wc.run, int(wc.step)), evaluation_spec(G, wc.bench, run=wc.run), output.result, threads)),
        threads: threads("evaluate")
        log:
            f"{R}/logs/evaluate/{{run}}.step-{{step}}.{{bench}}.log",
        resources:
            **res("evaluate"),
        shell:
            "geopd {params.args} 2> {log}"


rule evaluate_model:
    input:
        model=lambda wc: G.model_inputs(wc.model),
        data=lambda wc: G.data_dir(G.benchmarks[wc.bench]["data"]),
    output:
        result=f"{R}/eval/models/{{model}}/{{bench}}.json",
        samples=f"{R}/eval/models/{{model}}/{{bench}}.samples.jsonl",
    params:
        args=lambda wc, output, threads: shlex.join(evaluate_args(
            G.model_source(wc.model), evaluation_spec(G, wc.bench, model=wc.model), output.result, threads)),
    threads: threads("evaluate")
    log:
        f"{R}/logs/evaluate/model.{{model}}.{{bench}}.log",
    resources:
        **res("evaluate"),
    shell:
        "geopd {params.args} 2> {log}"


rule aggregate_eval:
    input:
        per_checkpoint=G.eval_inputs(),
        grid=f"{R}/grid.json",
    output:
        f"{R}/eval/accuracy.csv",
    log:
        f"{R}/logs/aggregate_eval.log",
    resources:
        **res("report"),
    shell:
        "geopd report aggregate-eval --results {R} --grid {input.grid} --out {output} 2> {log}"
