# One generic training rule for every run of the grid (SFT, OPD, RLVR, mix, controls).
# Resume state lives in results/runs/{run}/state (not an output), so a killed or
# timed-out job continues from its last complete checkpoint when retried.
# --tracking (TensorBoard, W&B, progress; geopd.train.tracking) is not a training setting: an
# Unversioned param, which Snakemake does not compare, so changing `tracking:` reruns nothing.


rule train:
    input:
        unpack(lambda wc: G.train_inputs(wc.run)),
    output:
        checkpoints=directory(L.checkpoints_dir("{run}")),
        metrics=L.metrics_file("{run}"),
    params:
        spec=lambda wc: spec_json(G.run_spec(wc.run)),
        tracking=lambda wc: Unversioned(spec_json(G.tracking_spec(wc.run))),
    threads: threads("train")
    log:
        L.log("train", "{run}.log"),
    resources:
        **res("train"),
    conda:
        "../envs/geopd.yaml"
    shell:
        "geopd launch --nodes {resources.nodes} --tasks {resources.tasks} --gpus-per-node {resources.gpus} -- "
        "geopd train --spec {params.spec:q} --tracking {params.tracking:q} --out {output.checkpoints:q} "
        "--metrics {output.metrics:q} --threads {threads} 2> {log:q}"
