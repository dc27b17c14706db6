# One generic training rule for every run of the grid (SFT, OPD, RLVR, mix, controls).
# Resume state lives in results/runs/{run}/state (not an output), so a killed or
# timed-out job continues from its last saved state when retried: states are saved at
# checkpoints, every resources.state_every_min minutes, and on Slurm's early signal before the
# time limit (sbatch --signal=USR1@lead, resources.slurm_extra: geopd.workflow).
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
        "{resources.geopd:q} launch --nodes {resources.nodes} --tasks {resources.tasks} --gpus-per-node {resources.gpus} "
        "--cpus-per-task {resources.cpus_per_task} -- "
        "{resources.geopd:q} train --spec {params.spec:q} --tracking {params.tracking:q} --out {output.checkpoints:q} "
        "--metrics {output.metrics:q} --threads {threads} --state-every-min {resources.state_every_min} 2> {log:q}"
