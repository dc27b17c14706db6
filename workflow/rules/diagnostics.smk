# Parameter-space diagnostics of every checkpoint against its run's origin W0.
# job_grouping.diagnose: "checkpoint" (default) runs one job per diagnosis and one similarity job
# per trajectory run; "run" makes every diagnosis of a run, and its similarity, one job
# (`geopd batch`), writing the same files into results/diagnostics/<run>/.
# The commands' arguments are built in common.smk (diagnose_args and the functions using it).

if G.grouping("diagnose") == "run":

    rule diagnose_run:
        input:
            tuned=L.checkpoints_dir("{run}"),
            base=lambda wc: G.ref_inputs(G.runs[wc.run].w0),
        output:
            directory(L.diagnostics_run_dir("{run}")),
        params:
            commands=lambda wc, threads: json.dumps(run_diagnoses(wc.run, threads)),
        threads: threads("diagnose_run")
        log:
            L.log("diagnose", "{run}.log"),
        resources:
            **res("diagnose_run"),
        conda:
            "../envs/geopd.yaml"
        shell:
            "geopd batch --commands {params.commands:q} 2> {log:q}"


else:

    rule diagnose:
        input:
            tuned=L.checkpoints_dir("{run}"),
            base=lambda wc: G.ref_inputs(G.runs[wc.run].w0),
        output:
            table=L.diagnostics_file("{run}", "{step}", "{matrices}"),
            summary=summary_file(L.diagnostics_file("{run}", "{step}", "{matrices}")),
        params:
            args=lambda wc, threads: shlex.join(checkpoint_diagnosis(wc.run, int(wc.step), wc.matrices, threads)),
        threads: threads("diagnose")
        log:
            L.log("diagnose", "{run}.step-{step}.{matrices}.log"),
        resources:
            **res("diagnose"),
        conda:
            "../envs/geopd.yaml"
        shell:
            "geopd {params.args} 2> {log:q}"

    rule similarity:
        input:
            tuned=L.checkpoints_dir("{run}"),
            base=lambda wc: G.ref_inputs(G.runs[wc.run].w0),
        output:
            L.similarity_file("{run}"),
        params:
            args=lambda wc, threads: shlex.join(similarity_args(wc.run, threads)),
        threads: threads("similarity")
        log:
            L.log("similarity", "{run}.log"),
        resources:
            **res("similarity"),
        conda:
            "../envs/geopd.yaml"
        shell:
            "geopd {params.args} 2> {log:q}"


rule diagnose_reference:
    input:
        reference_inputs,
    output:
        table=L.reference_file("{pair}"),
        summary=summary_file(L.reference_file("{pair}")),
    params:
        args=lambda wc, output, threads: shlex.join(reference_diagnosis(wc.pair, output.table, threads)),
    threads: threads("diagnose")
    log:
        L.log("diagnose", "reference.{pair}.log"),
    resources:
        **res("diagnose"),
    conda:
        "../envs/geopd.yaml"
    shell:
        "geopd {params.args} 2> {log:q}"


rule aggregate_diagnostics:
    input:
        per_checkpoint=G.diagnostics_inputs(),
        grid=L.grid_file(),
    output:
        summary=L.diagnostics_summary(),
        matrices=L.diagnostics_matrices(),
        similarity=L.similarity_summary(),
    params:
        results=results_root,
    log:
        L.log("aggregate_diagnostics.log"),
    resources:
        **res("report"),
    conda:
        "../envs/geopd.yaml"
    shell:
        "geopd report aggregate-diagnostics --results {params.results:q} --grid {input.grid:q} "
        "--out-summary {output.summary:q} --out-matrices {output.matrices:q} "
        "--out-similarity {output.similarity:q} 2> {log:q}"
