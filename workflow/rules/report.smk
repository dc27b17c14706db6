# Tables, figures and the claims check, from the aggregated diagnostics, evals and logs.
# `snakemake --report results/report.html` collects them with captions from workflow/report/
# (or add `--report results/report.html --report-after-run` to the run itself).
#
# After failed jobs: `snakemake report_partial` builds the same report from whatever
# per-checkpoint files exist, into results/partial/, and lists what is missing (see below).


rule grid_spec:
    output:
        L.grid_file(),
    params:
        spec=lambda wc: spec_json(G.report_spec()),
    log:
        L.log("grid_spec.log"),
    localrule: True
    run:
        grid_file(params.spec, output[0], log[0])


rule tables:
    input:
        diagnostics=L.diagnostics_summary(),
        matrices=L.diagnostics_matrices(),
        accuracy=L.accuracy_file(),
        metrics=[L.metrics_file(r) for r in G.runs],
        grid=L.grid_file(),
    output:
        captioned(L.table_files(), "tables"),
    params:
        results=results_root,
    log:
        L.log("tables.log"),
    resources:
        **res("report"),
    conda:
        "../envs/geopd.yaml"
    shell:
        "geopd report tables --results {params.results:q} --grid {input.grid:q} 2> {log:q}"


rule figures:
    input:
        diagnostics=L.diagnostics_summary(),
        matrices=L.diagnostics_matrices(),
        similarity=L.similarity_summary(),
        accuracy=L.accuracy_file(),
        metrics=[L.metrics_file(r) for r in G.runs],
        grid=L.grid_file(),
    output:
        captioned(L.figure_files(), "figures"),
    params:
        results=results_root,
    log:
        L.log("figures.log"),
    resources:
        **res("report"),
    conda:
        "../envs/geopd.yaml"
    shell:
        "geopd report figures --results {params.results:q} --grid {input.grid:q} 2> {log:q}"


rule claims:
    input:
        diagnostics=L.diagnostics_summary(),
        matrices=L.diagnostics_matrices(),
        similarity=L.similarity_summary(),
        accuracy=L.accuracy_file(),
        metrics=[L.metrics_file(r) for r in G.runs],
        grid=L.grid_file(),
    output:
        captioned(L.claims_files() + [f"{R}/tables/missing.{ext}" for ext in ("csv", "md")], "claims"),
    params:
        results=results_root,
    log:
        L.log("claims.log"),
    resources:
        **res("report"),
    conda:
        "../envs/geopd.yaml"
    shell:
        "geopd report claims --results {params.results:q} --grid {input.grid:q} 2> {log:q}"


# Each run's training curves, in the report's "Training curves" category beside the paper's
# tables and figures, one page per run (made as soon as the run has trained).
rule run_curves:
    input:
        metrics=L.metrics_file("{run}"),
    output:
        png=report(L.run_curves("{run}"), caption="../report/runs/run_curves.rst", category="Training curves",
                   subcategory="{run}", labels={"run": "{run}", "figure": "training curves"}),
        pdf=L.run_curves("{run}").removesuffix(".png") + ".pdf",
    log:
        L.log("run_curves", "{run}.log"),
    resources:
        **res("report"),
    conda:
        "../envs/geopd.yaml"
    shell:
        "geopd report run-curves --metrics {input.metrics:q} --run {wildcards.run:q} --out {output.png:q} 2> {log:q}"


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
        grid=L.grid_file(),
    output:
        directory(f"{R}/partial"),
    params:
        results=results_root,
    log:
        L.log("report_partial.log"),
    resources:
        **res("report"),
    conda:
        "../envs/geopd.yaml"
    shell:
        "geopd report partial --results {params.results:q} --grid {input.grid:q} --out-dir {output:q} 2> {log:q}"
