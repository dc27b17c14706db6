# Parameter-space diagnostics of every checkpoint against its run's origin W0.
# job_grouping.diagnose: "checkpoint" (default) runs one job per diagnosis and one similarity job
# per trajectory run; "run" makes every diagnosis of a run, and its similarity, one job
# (`geopd batch`), writing the same files into results/diagnostics/<run>/.

import json
import shlex


def diagnose_args(base, tuned, out, matrices, threads):
    """`geopd diagnose`'s arguments for one checkpoint pair (every grouping, and reference pairs)."""
    d = config["diagnostics"]
    return ["diagnose", "--base", base, "--tuned", tuned, "--out", out, "--summary", out[:-len(".csv")] + ".json",
            "--matrices", matrices, "--k", str(d["k"]), "--r", str(d["r"]), "--alpha", str(d["alpha"]),
            "--eta", str(d["eta"]), "--workers", str(threads), "--cache-dir", f"{R}/cache/svd"]


def checkpoint_diagnosis(run, step, matrices, threads):
    return diagnose_args(G.ref_source(G.runs[run].w0), G.checkpoint(run, step), G.diagnostics_file(run, step, matrices),
                         matrices, threads)


def similarity_args(run, threads):
    d = config["diagnostics"]
    return ["similarity", "--init", G.ref_source(G.runs[run].w0),
            "--checkpoints", *[G.checkpoint(run, s) for s in G.runs[run].checkpoints], "--out", G.similarity_file(run),
            "--k", str(d["sim_k"]), "--matrices", d.get("trajectory_matrices", "attention"), "--workers", str(threads)]


def run_diagnoses(run, threads):
    commands = [checkpoint_diagnosis(run, step, matrices, threads) for step, matrices in G.diagnose_run_targets(run)]
    if run in G.similarity_runs():
        commands.append(similarity_args(run, threads))
    return commands


if G.grouping("diagnose") == "run":

    rule diagnose_run:
        input:
            tuned=f"{R}/runs/{{run}}/checkpoints",
            base=lambda wc: G.ref_inputs(G.runs[wc.run].w0),
        output:
            directory(f"{R}/diagnostics/{{run}}"),
        params:
            commands=lambda wc, threads: json.dumps(run_diagnoses(wc.run, threads)),
        threads: threads("diagnose_run")
        log:
            f"{R}/logs/diagnose/{{run}}.log",
        resources:
            **res("diagnose_run"),
        shell:
            "geopd batch --commands {params.commands:q} 2> {log}"


else:

    rule diagnose:
        input:
            tuned=f"{R}/runs/{{run}}/checkpoints",
            base=lambda wc: G.ref_inputs(G.runs[wc.run].w0),
        output:
            table=f"{R}/diagnostics/{{run}}/step-{{step}}.{{matrices}}.csv",
            summary=f"{R}/diagnostics/{{run}}/step-{{step}}.{{matrices}}.json",
        params:
            args=lambda wc, threads: shlex.join(checkpoint_diagnosis(wc.run, int(wc.step), wc.matrices, threads)),
        threads: threads("diagnose")
        log:
            f"{R}/logs/diagnose/{{run}}.step-{{step}}.{{matrices}}.log",
        resources:
            **res("diagnose"),
        shell:
            "geopd {params.args} 2> {log}"

    rule similarity:
        input:
            tuned=f"{R}/runs/{{run}}/checkpoints",
            base=lambda wc: G.ref_inputs(G.runs[wc.run].w0),
        output:
            f"{R}/diagnostics/{{run}}/similarity.csv",
        params:
            args=lambda wc, threads: shlex.join(similarity_args(wc.run, threads)),
        threads: threads("similarity")
        log:
            f"{R}/logs/similarity/{{run}}.log",
        resources:
            **res("similarity"),
        shell:
            "geopd {params.args} 2> {log}"


rule diagnose_reference:
    input:
        lambda wc: G.model_inputs(G.reference_pairs()[wc.pair]["base"])
        + G.model_inputs(G.reference_pairs()[wc.pair]["tuned"]),
    output:
        table=f"{R}/diagnostics/reference/{{pair}}.all.csv",
        summary=f"{R}/diagnostics/reference/{{pair}}.all.json",
    params:
        args=lambda wc, output, threads: shlex.join(diagnose_args(
            G.model_source(G.reference_pairs()[wc.pair]["base"]), G.model_source(G.reference_pairs()[wc.pair]["tuned"]),
            output.table, "all", threads)),
    threads: threads("diagnose")
    log:
        f"{R}/logs/diagnose/reference.{{pair}}.log",
    resources:
        **res("diagnose"),
    shell:
        "geopd {params.args} 2> {log}"


rule aggregate_diagnostics:
    input:
        per_checkpoint=G.diagnostics_inputs(),
        grid=f"{R}/grid.json",
    output:
        summary=f"{R}/diagnostics/summary.csv",
        matrices=f"{R}/diagnostics/matrices.csv",
        similarity=f"{R}/diagnostics/similarity.csv",
    log:
        f"{R}/logs/aggregate_diagnostics.log",
    resources:
        **res("report"),
    shell:
        "geopd report aggregate-diagnostics --results {R} --grid {input.grid} --out-summary {output.summary} "
        "--out-matrices {output.matrices} --out-similarity {output.similarity} 2> {log}"
