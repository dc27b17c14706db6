# One generic training rule for every run of the grid (SFT, OPD, RLVR, mix, controls).
# Resume state lives in results/runs/{run}/state (not an output), so a killed or
# timed-out job continues from its last complete checkpoint when retried.


rule train:
    input:
        unpack(lambda wc: G.train_inputs(wc.run)),
    output:
        checkpoints=directory(f"{R}/runs/{{run}}/checkpoints"),
        metrics=f"{R}/runs/{{run}}/metrics.jsonl",
    params:
        spec=lambda wc: spec_json(G.run_spec(wc.run)),
    threads: threads("train")
    log:
        f"{R}/logs/train/{{run}}.log",
    resources:
        **res("train"),
    conda:
        "../envs/geopd.yaml"
    shell:
        "geopd launch --nodes {resources.nodes} --tasks {resources.tasks} --gpus-per-node {resources.gpus} -- "
        "geopd train --spec {params.spec:q} --out {output.checkpoints} "
        "--metrics {output.metrics} --threads {threads} 2> {log}"
