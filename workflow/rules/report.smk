# Tables, figures and the claims check, from the aggregated diagnostics, evals and logs.
# `snakemake --report results/report.html` collects them with captions from workflow/report/
# (or add `--report results/report.html --report-after-run` to the run itself).
#
# After failed jobs: `snakemake report_partial` builds the same report from whatever
# per-checkpoint files exist, into results/partial/, and lists what is missing (see below).


rule grid_spec:
    output:
        f"{R}/grid.json",
    params:
        spec=lambda wc: spec_json(G.report_spec()),
    log:
        f"{R}/logs/grid_spec.log",
    localrule: True
    run:
        grid_file(params.spec, output[0], log[0])


rule tables:
    input:
        diagnostics=f"{R}/diagnostics/summary.csv",
        matrices=f"{R}/diagnostics/matrices.csv",
        accuracy=f"{R}/eval/accuracy.csv",
        metrics=[G.metrics_file(r) for r in G.runs],
        grid=f"{R}/grid.json",
    output:
        captioned(G.table_files(), "tables"),
    params:
        results=results_root,
    log:
        f"{R}/logs/tables.log",
    resources:
        **res("report"),
    conda:
        "../envs/geopd.yaml"
    shell:
        "geopd report tables --results {params.results} --grid {input.grid} 2> {log}"


rule figures:
    input:
        diagnostics=f"{R}/diagnostics/summary.csv",
        matrices=f"{R}/diagnostics/matrices.csv",
        similarity=f"{R}/diagnostics/similarity.csv",
        accuracy=f"{R}/eval/accuracy.csv",
        metrics=[G.metrics_file(r) for r in G.runs],
        grid=f"{R}/grid.json",
    output:
        captioned(G.figure_files(), "figures"),
    params:
        results=results_root,
    log:
        f"{R}/logs/figures.log",
    resources:
        **res("report"),
    conda:
        "../envs/geopd.yaml"
    shell:
        "geopd report figures --results {params.results} --grid {input.grid} 2> {log}"


rule claims:
    input:
        diagnostics=f"{R}/diagnostics/summary.csv",
        similarity=f"{R}/diagnostics/similarity.csv",
        accuracy=f"{R}/eval/accuracy.csv",
        metrics=[G.metrics_file(r) for r in G.runs],
        grid=f"{R}/grid.json",
    output:
        captioned(G.claims_files() + [f"{R}/tables/missing.{ext}" for ext in ("csv", "md")], "claims"),
    params:
        results=results_root,
    log:
        f"{R}/logs/claims.log",
    resources:
        **res("report"),
    conda:
        "../envs/geopd.yaml"
    shell:
        "geopd report claims --results {params.results} --grid {input.grid} 2> {log}"


# ---- the report from what exists ---------------------------------------------------------------
# report_partial takes as input only the per-checkpoint files that exist when the DAG is built
# (present_report_inputs, common.smk). Its outputs live apart, in results/partial/, so they never
# stand in for the complete report's. Typical use:
#   snakemake --keep-going ...            # some jobs fail
#   snakemake report_partial ...          # tables, figures, claims, missing.md from the rest
# (add `--rerun-triggers mtime` when config or code changed since the files were made, so
# their jobs are not rerun first).


rule report_partial:
    input:
        present=present_report_inputs,
        grid=f"{R}/grid.json",
    output:
        directory(f"{R}/partial"),
    params:
        results=results_root,
    log:
        f"{R}/logs/report_partial.log",
    resources:
        **res("report"),
    conda:
        "../envs/geopd.yaml"
    shell:
        "geopd report partial --results {params.results} --grid {input.grid} --out-dir {output} 2> {log}"
