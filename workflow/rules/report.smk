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
    localrule: True
    run:
        # Written here rather than passed on a command line: the paper grid's list of expected
        # inputs is tens of kilobytes, near the kernel's limit for one argument.
        from geopd.report.gridfile import write_grid

        write_grid(params.spec, output[0])


rule tables:
    input:
        diagnostics=f"{R}/diagnostics/summary.csv",
        matrices=f"{R}/diagnostics/matrices.csv",
        accuracy=f"{R}/eval/accuracy.csv",
        metrics=[G.metrics_file(r) for r in G.runs],
        grid=f"{R}/grid.json",
    output:
        [report(f, caption="../report/tables.rst", category="Tables") for f in G.table_files()],
    log:
        f"{R}/logs/tables.log",
    resources:
        **res("report"),
    shell:
        "geopd report tables --results {R} --grid {input.grid} 2> {log}"


rule figures:
    input:
        diagnostics=f"{R}/diagnostics/summary.csv",
        matrices=f"{R}/diagnostics/matrices.csv",
        similarity=f"{R}/diagnostics/similarity.csv",
        accuracy=f"{R}/eval/accuracy.csv",
        metrics=[G.metrics_file(r) for r in G.runs],
        grid=f"{R}/grid.json",
    output:
        [report(f, caption="../report/figures.rst", category="Figures") for f in G.figure_files()],
    log:
        f"{R}/logs/figures.log",
    resources:
        **res("report"),
    shell:
        "geopd report figures --results {R} --grid {input.grid} 2> {log}"


rule claims:
    input:
        diagnostics=f"{R}/diagnostics/summary.csv",
        similarity=f"{R}/diagnostics/similarity.csv",
        accuracy=f"{R}/eval/accuracy.csv",
        metrics=[G.metrics_file(r) for r in G.runs],
        grid=f"{R}/grid.json",
    output:
        [report(f, caption="../report/claims.rst", category="Claims") for f in G.claims_files()],
        [report(f"{R}/tables/missing.{ext}", caption="../report/missing.rst", category="Claims")
         for ext in ("csv", "md")],
    log:
        f"{R}/logs/claims.log",
    resources:
        **res("report"),
    shell:
        "geopd report claims --results {R} --grid {input.grid} 2> {log}"


# ---- the report from what exists ---------------------------------------------------------------
# The complete DAG above needs every evaluation and diagnosis: one failed job (a hub checkpoint
# that cannot be read, a run that crashed) means no tables at all. report_partial takes as input
# only the per-checkpoint files that exist when the DAG is built, so it never waits for (or
# schedules) a missing one, and reruns when one appears or changes. Its outputs live apart, in
# results/partial/, so they never stand in for the complete report's. Typical use:
#   snakemake --keep-going ...            # some jobs fail
#   snakemake report_partial ...          # tables, figures, claims, missing.md from the rest
# (add `--rerun-triggers mtime` when config or code changed since the files were made, so
# their jobs are not rerun first).


def present_report_inputs(wildcards):
    from geopd.report.gridfile import input_files

    return [p for p in (os.path.join(R, f) for f in input_files(G.report_spec())) if os.path.exists(p)]


rule report_partial:
    input:
        present=present_report_inputs,
        grid=f"{R}/grid.json",
    output:
        directory(f"{R}/partial"),
    log:
        f"{R}/logs/report_partial.log",
    resources:
        **res("report"),
    shell:
        "geopd report partial --results {R} --grid {input.grid} --out-dir {output} 2> {log}"
