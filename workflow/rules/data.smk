# Data sets, the hub mirror, and the miniature models (pretrained bases, fine-tuned teachers).

if G.mirror is not None:

    rule prefetch:
        output:
            f"{G.mirror}/{{kind}}/{{owner}}/{{repo}}/.geopd-prefetch.json",
        wildcard_constraints:
            kind="models|datasets",
            owner=r"[^/]+",
            repo=r"[^/]+",
        params:
            spec=lambda wc: spec_json(G.prefetch_spec(wc.kind, f"{wc.owner}/{wc.repo}")),
        log:
            L.log("prefetch", "{kind}.{owner}.{repo}.log"),
        conda:
            "../envs/geopd.yaml"
        # Runs where Snakemake runs (the login node has the network); gated repos need HF_TOKEN.
        localrule: True
        shell:
            "HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 geopd prefetch --spec {params.spec:q} 2> {log:q}"


rule prepare_data:
    input:
        lambda wc: G.data_inputs(wc.dataset),
    output:
        directory(L.data_dir("{dataset}")),
    params:
        spec=lambda wc: spec_json(G.data_spec(wc.dataset)),
    log:
        L.log("prepare_data", "{dataset}.log"),
    resources:
        **res("prepare_data"),
    conda:
        "../envs/geopd.yaml"
    shell:
        "geopd data --spec {params.spec:q} --out {output:q} 2> {log:q}"


rule pretrain_model:
    input:
        lambda wc: G.model_build_inputs(wc.model),
    output:
        directory(L.built_model_dir("{model}")),
    wildcard_constraints:
        model=built_models("pretrain"),
    params:
        spec=lambda wc: spec_json(G.model_spec(wc.model)),
    threads: threads("pretrain_model")
    log:
        L.log("models", "{model}.log"),
    resources:
        **res("pretrain_model"),
    conda:
        "../envs/geopd.yaml"
    shell:
        "geopd make-model --spec {params.spec:q} --out {output:q} --threads {threads} 2> {log:q}"


use rule pretrain_model as finetune_model with:
    wildcard_constraints:
        model=built_models("finetune"),
    resources:
        **res("finetune_model"),
