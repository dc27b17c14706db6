# Parameter-space diagnostics of every checkpoint against its run's origin W0.


rule diagnose:
    input:
        tuned=f"{R}/runs/{{run}}/checkpoints",
        base=lambda wc: G.ref_inputs(G.runs[wc.run].w0),
    output:
        table=f"{R}/diagnostics/{{run}}/step-{{step}}.{{matrices}}.csv",
        summary=f"{R}/diagnostics/{{run}}/step-{{step}}.{{matrices}}.json",
    params:
        base=lambda wc: G.ref_source(G.runs[wc.run].w0),
        tuned=lambda wc: G.checkpoint(wc.run, int(wc.step)),
        d=config["diagnostics"],
        cache=f"{R}/cache/svd",
    threads: threads("diagnose")
    log:
        f"{R}/logs/diagnose/{{run}}.step-{{step}}.{{matrices}}.log",
    resources:
        **res("diagnose"),
    shell:
        "geopd diagnose --base {params.base} --tuned {params.tuned} --out {output.table} "
        "--summary {output.summary} --matrices {wildcards.matrices} --k {params.d[k]} "
        "--r {params.d[r]} --alpha {params.d[alpha]} --eta {params.d[eta]} "
        "--workers {threads} --cache-dir {params.cache} 2> {log}"


rule diagnose_reference:
    input:
        lambda wc: G.model_inputs(G.reference_pairs()[wc.pair]["base"])
        + G.model_inputs(G.reference_pairs()[wc.pair]["tuned"]),
    output:
        table=f"{R}/diagnostics/reference/{{pair}}.all.csv",
        summary=f"{R}/diagnostics/reference/{{pair}}.all.json",
    params:
        base=lambda wc: G.model_source(G.reference_pairs()[wc.pair]["base"]),
        tuned=lambda wc: G.model_source(G.reference_pairs()[wc.pair]["tuned"]),
        d=config["diagnostics"],
        cache=f"{R}/cache/svd",
    threads: threads("diagnose")
    log:
        f"{R}/logs/diagnose/reference.{{pair}}.log",
    resources:
        **res("diagnose"),
    shell:
        "geopd diagnose --base {params.base} --tuned {params.tuned} --out {output.table} "
        "--summary {output.summary} --matrices all --k {params.d[k]} --r {params.d[r]} "
        "--alpha {params.d[alpha]} --eta {params.d[eta]} --workers {threads} "
        "--cache-dir {params.cache} 2> {log}"


rule similarity:
    input:
        tuned=f"{R}/runs/{{run}}/checkpoints",
        base=lambda wc: G.ref_inputs(G.runs[wc.run].w0),
    output:
        f"{R}/diagnostics/{{run}}/similarity.csv",
    params:
        base=lambda wc: G.ref_source(G.runs[wc.run].w0),
        checkpoints=lambda wc: [G.checkpoint(wc.run, s) for s in G.runs[wc.run].checkpoints],
        k=config["diagnostics"]["sim_k"],
        matrices=config["diagnostics"].get("trajectory_matrices", "attention"),
    threads: threads("similarity")
    log:
        f"{R}/logs/similarity/{{run}}.log",
    resources:
        **res("similarity"),
    shell:
        "geopd similarity --init {params.base} --checkpoints {params.checkpoints} "
        "--out {output} --k {params.k} --matrices {params.matrices} --workers {threads} 2> {log}"


rule aggregate_diagnostics:
    input:
        summaries=[G.diagnostics_file(r, s, m).replace(".csv", ".json") for r, s, m in G.diagnostics_targets()],
        tables=[G.diagnostics_file(r, s, m) for r, s, m in G.diagnostics_targets()],
        similarity=[G.similarity_file(r) for r in G.similarity_runs()],
        reference=[G.reference_file(p) for p in G.reference_pairs()],
    output:
        summary=f"{R}/diagnostics/summary.csv",
        matrices=f"{R}/diagnostics/matrices.csv",
        similarity=f"{R}/diagnostics/similarity.csv",
    log:
        f"{R}/logs/aggregate_diagnostics.log",
    resources:
        **res("report"),
    shell:
        "geopd report aggregate-diagnostics --results {R} --out-summary {output.summary} "
        "--out-matrices {output.matrices} --out-similarity {output.similarity} 2> {log}"
