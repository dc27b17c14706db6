# Parameter-space diagnostics of every checkpoint against its run's origin W0.
# job_grouping.diagnose: "checkpoint" (default) runs one job per diagnosis and one similarity job
# per trajectory run; "run" makes every diagnosis of a run, and its similarity, one job
# (`geopd batch`), writing the same files into results/diagnostics/<run>/.
# The commands' arguments are built in common.smk (diagnose_args and the functions using it).

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
        conda:
            "../envs/geopd.yaml"
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
        conda:
            "../envs/geopd.yaml"
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
        conda:
            "../envs/geopd.yaml"
        shell:
            "geopd {params.args} 2> {log}"


rule diagnose_reference:
    input:
        reference_inputs,
    output:
        table=f"{R}/diagnostics/reference/{{pair}}.all.csv",
        summary=f"{R}/diagnostics/reference/{{pair}}.all.json",
    params:
        args=lambda wc, output, threads: shlex.join(reference_diagnosis(wc.pair, output.table, threads)),
    threads: threads("diagnose")
    log:
        f"{R}/logs/diagnose/reference.{{pair}}.log",
    resources:
        **res("diagnose"),
    conda:
        "../envs/geopd.yaml"
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
    params:
        results=results_root,
    log:
        f"{R}/logs/aggregate_diagnostics.log",
    resources:
        **res("report"),
    conda:
        "../envs/geopd.yaml"
    shell:
        "geopd report aggregate-diagnostics --results {params.results} --grid {input.grid} "
        "--out-summary {output.summary} --out-matrices {output.matrices} "
        "--out-similarity {output.similarity} 2> {log}"
