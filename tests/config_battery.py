"""Bad configs a careful new user or a hostile tester would try (issue 23), each refused by
both `geopd plan` and `snakemake -n` before anything runs: exit status 2, no traceback, the
file named, and a fragment of the expected one-line reason.

A case is an overlay on the miniature or the paper config (`--configfile BASE OVERLAY`), or a
file on its own (base None). `expect` must appear in both commands' output; `names` is the file
the message must name ("overlay", "base", or None when the file is not the point).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SLICE = (Path(__file__).resolve().parent / "configs" / "slice.yaml").read_text()


@dataclass(frozen=True)
class Case:
    name: str
    text: str | None                  # the overlay's (or lone file's) YAML; None: see `kind`
    expect: str
    base: str | None = "mini"         # mini | paper | None
    names: str | None = "overlay"
    kind: str = "file"                # file | dir | missing | binary


CASES = [
    # ---- YAML itself (the file and its line) ----
    Case("yaml-syntax", "name: x\nruns: [a, b\nseed: 1\n", "not valid YAML", base=None),
    Case("yaml-tab", "runs:\n\tsft-8b: {steps: 5}\n", "a tab character"),
    Case("yaml-undefined-alias", "runs:\n  sft-8b: *nope\n", "undefined alias"),
    Case("yaml-empty", "", "empty"),
    Case("yaml-comment-only", "# nothing here\n", "empty"),
    Case("yaml-list-top", "- name: x\n- seed: 1\n", "top level is a list"),
    Case("yaml-scalar-top", "just words\n", "top level is a str"),
    Case("yaml-duplicate-top", "seed: 1\nseed: 2\n", "appears twice"),
    Case("yaml-duplicate-nested", "runs:\n  sft-8b: {steps: 10, steps: 20}\n", "appears twice"),
    Case("yaml-duplicate-run", "runs:\n  sft-8b: {steps: 10}\n  sft-8b: {steps: 20}\n", "appears twice"),
    Case("yaml-int-key", "runs:\n  1: {method: sft}\n", "is not a string"),
    Case("yaml-unterminated-quote", "name: 'miniature\nseed: 0\n", "not valid YAML"),
    Case("yaml-null-key", "null: 1\n", "key null is not a string"),
    Case("yaml-alias-loop", "runs:\n  sft-8b: &r {steps: 10, self: *r}\n", "runs.sft-8b.self: an alias refers"),
    Case("yaml-alias-bomb", "".join(f"{k}: &{k} [{', '.join([f'*{p}' if p else '1'] * 9)}]\n"
                                    for p, k in zip(["", "a", "b", "c", "d", "e"], "abcdef")),
         "more than 100,000 values"),
    Case("path-directory", None, "is a directory", kind="dir"),
    Case("path-missing", None, "not found", kind="missing"),
    Case("path-binary", None, "not UTF-8", kind="binary"),
    # ---- schema, numbers, types ----
    Case("nan-lr", "method_defaults:\n  opd:\n    optim: {lr: .nan}\n", "not a finite number"),
    Case("inf-eta", "diagnostics: {eta: .inf}\n", "not a finite number"),
    Case("neg-inf-coef", "runs:\n  opd-8b-t32b: {objective: {coef: -.inf}}\n", "not a finite number"),
    Case("negative-steps", "runs:\n  sft-8b: {steps: -5}\n", "runs.sft-8b.steps"),
    Case("zero-samples", "benchmarks:\n  math-heldout: {samples: 0}\n", "benchmarks.math-heldout.samples"),
    Case("zero-prompts", "method_defaults:\n  rlvr:\n    rollout: {prompts_per_step: 0}\n", "prompts_per_step"),
    Case("steps-as-text", "runs:\n  sft-8b: {steps: ten}\n", "runs.sft-8b.steps"),
    Case("steps-as-bool", "runs:\n  sft-8b: {steps: true}\n", "runs.sft-8b.steps"),
    Case("float-samples", "benchmarks:\n  math-heldout: {samples: 1.5}\n", "samples"),
    Case("misspelt-key", "runs:\n  sft-8b: {stpes: 10}\n", "'stpes'"),
    Case("huge-seed", "seed: 99999999999999999999999\n", "seed"),
    Case("huge-mem", "resources:\n  default: {mem_mb: 99999999999}\n", "mem_mb"),
    Case("too-many-gpus", "resources:\n  train: {gpus: 1000}\n", "gpus"),
    Case("empty-hub-mirror", "hub_mirror: ''\n", "hub_mirror"),
    Case("empty-results", "results: ''\n", "results"),
    Case("runs-as-list", "runs: [sft-8b]\n", "runs"),
    Case("uppercase-run", "runs:\n  SFT-8B: {method: sft, init: qwen3-8b-base}\n", "SFT-8B"),
    Case("dataset-path-name", "datasets:\n  ../evil: {kind: synthetic-math, n_train: 5, n_test: 5}\n", "../evil"),
    Case("bad-device", "device: gpu\n", "device"),
    Case("bad-grouping", "job_grouping: {evaluate: step}\n", "job_grouping.evaluate"),
    Case("checkpoints-not-list", "runs:\n  sft-8b: {checkpoints: 5}\n", "runs.sft-8b.checkpoints"),
    Case("checkpoint-zero", "runs:\n  sft-8b: {checkpoints: [0, 800]}\n", "runs.sft-8b.checkpoints"),
    Case("duplicate-eval", "runs:\n  sft-4b: {eval: [math-heldout, math-heldout]}\n", "runs.sft-4b.eval"),
    Case("negative-temperature", "benchmarks:\n  math-heldout: {temperature: -1}\n", "temperature"),
    Case("model-without-source", "models:\n  new-model: {params_b: 1.0}\n", "models.new-model"),
    # ---- names and references ----
    Case("run-named-like-model", "runs:\n  qwen3-8b-base: {method: sft, init: qwen3-4b-base}\n",
         "names both a run and a model"),
    Case("run-named-like-dataset", "runs:\n  math: {method: sft, init: qwen3-4b-base}\n",
         "names both a run and a data set"),
    Case("model-named-like-dataset", "models:\n  math: {build: {size: s8b, pretrain: {corpus: pretrain-corpus}}}\n",
         "names both a model and a data set"),
    Case("run-named-models", "runs:\n  models: {method: sft, init: qwen3-4b-base}\n", "results layout"),
    Case("unknown-init", "runs:\n  opd-8b-t32b: {init: sft-9b}\n", "unknown run or model 'sft-9b'"),
    Case("unknown-teacher", "runs:\n  opd-8b-t32b: {teacher: qwen3-99b}\n", "unknown model 'qwen3-99b'"),
    Case("unknown-eval", "runs:\n  sft-8b: {eval: [aime99]}\n", "unknown benchmark 'aime99'"),
    Case("unknown-extends", "runs:\n  opd-4b-t14b: {extends: opd-nope}\n", "unknown run 'opd-nope'"),
    Case("unknown-projection-run", "runs:\n  rank16-opd: {projection: {run: nope, step: 10, rank: 16}}\n",
         "unknown run 'nope'"),
    Case("unknown-build-from", "models:\n  qwen3-8b: {build: {from: qwen3-7b-tbase}}\n", "unknown model"),
    Case("unknown-size", "models:\n  qwen3-8b-base: {build: {size: s9b}}\n", "unknown size"),
    Case("unknown-reference-model",
         "reference_pairs:\n  - {name: pair, base: qwen3-8b-base, tuned: qwen3-8b-rl, method: rlvr}\n",
         "unknown model 'qwen3-8b-rl'"),
    Case("benchmark-unknown-data", "benchmarks:\n  math-heldout: {data: math500}\n",
         "benchmarks.math-heldout.data: unknown data set 'math500'"),
    Case("benchmark-missing-split", "datasets:\n  math: {n_test: 0}\n", "has no test split", names="base"),
    Case("benchmark-demo-split",
         "benchmarks:\n  math-heldout: {data: sft-demos}\n", "cannot feed a math benchmark"),
    Case("sft-on-problems", "runs:\n  sft-4b: {data: math}\n", "cannot feed sft"),
    Case("rlvr-on-corpus", "runs:\n  rlvr-8b: {data: pretrain-corpus}\n", "cannot feed rlvr"),
    Case("training-set-empty", "datasets:\n  sft-demos: {n_train: 0}\n", "has no train split", names=None),
    Case("self-cycle", "runs:\n  rlvr-8b: {init: rlvr-8b@20}\n", "cycle between runs: rlvr-8b -> rlvr-8b"),
    Case("two-run-cycle", "runs:\n  sft-8b: {init: opd-8b-t32b}\n", "cycle between runs"),
    Case("extends-cycle", "runs:\n  opd-8b-t32b: {extends: opd-4b-t8b}\n", "cycle between runs"),
    Case("checkpoint-past-steps", "runs:\n  sft-8b: {checkpoints: [900]}\n", "outside"),
    Case("init-step-not-saved", "runs:\n  rank16-opd: {init: opd-8b-t32b@11}\n", "saves no checkpoint at step 11"),
    Case("steps-before-start", "runs:\n  rank16-sft: {steps: 100, checkpoints: [100]}\n", "not after the step"),
    Case("new-run-without-method", "runs:\n  new-run: {init: qwen3-8b-base}\n", "runs.new-run.method: missing"),
    Case("new-run-without-init", "runs:\n  new-run: {method: sft}\n", "runs.new-run.init: missing"),
    Case("teacher-on-sft", "runs:\n  sft-4b: {teacher: qwen3-8b}\n", "takes no teacher"),
    Case("mix-without-alpha", "runs:\n  new-mix: {method: mix, init: sft-8b, teacher: qwen3-32b}\n", "needs alpha"),
    Case("alpha-on-opd", "runs:\n  opd-8b-t32b: {objective: {alpha: 0.5}}\n", "alpha is only used by 'mix'"),
    Case("sparsify-on-rlvr", "runs:\n  rlvr-8b: {objective: {sparsify: {mode: topkl, rho: 0.5}}}\n", "sparsify"),
    Case("off-policy-without-teacher", "runs:\n  rlvr-8b: {rollout: {source: teacher}}\n", "need a teacher"),
    # ---- what no job could carry out ----
    Case("batch-above-samples", "method_defaults:\n  opd:\n    rollout: {global_batch_size: 1000}\n",
         "global_batch_size", names=None),
    Case("runtime-above-cap", "resources:\n  train: {runtime: 5000}\n", "exceeds max_runtime"),
    Case("memory-above-cap", "resources:\n  default: {max_mem_mb: 1000}\n", "exceeds max_mem_mb"),
    Case("nodes-huge", "resources:\n  train: {nodes: 100000}\n", "exceeds max_nodes"),
    Case("cuda-without-gpus", "device: cuda\n", "gpus 0", names="base"),
    Case("bench-tokens-beyond-len", "benchmarks:\n  math-heldout: {max_model_len: 16}\n", "max_model_len 16"),
    Case("rollout-tokens-beyond-len",
         "method_defaults:\n  rlvr:\n    rollout: {backend: vllm, vllm: {max_model_len: 8}}\n", "max_model_len 8",
         names=None),
    Case("results-in-src", "results: {repo}/src/geopd/out\n", "inside the source tree"),
    Case("results-is-repo", "results: {repo}\n", "is the repository"),
    Case("results-above-repo", "results: /\n", "above the repository"),
    Case("results-is-file", "results: {repo}/README.md\n", "is a file"),
    Case("no-runtime-anywhere", SLICE.replace(" runtime: 10}", "}"), "no runtime for rule", base=None),
    Case("rlvr-one-sample", "runs:\n  rlvr-8b: {rollout: {samples: 1}}\n", "never updates"),
    Case("w0-other-architecture", "runs:\n  rank16-sft: {w0: qwen3-4b-base}\n", "architectures differ"),
    Case("local-model-missing", "models:\n  local-model: {path: /nonexistent/model}\n", "no such file or folder"),
    Case("reference-pair-twice",
         "reference_pairs:\n  - {name: p, base: qwen3-8b-base, tuned: qwen3-8b, method: sft}\n"
         "  - {name: p, base: qwen3-4b-base, tuned: qwen3-8b, method: sft}\n", "two pairs named 'p'"),
    Case("demo-mix-not-tasks", "datasets:\n  teacher-demos-math: {mix: {math: 0.5, code: 0.5}}\n", "but the tasks"),
    Case("unknown-task", "benchmarks:\n  math-heldout: {task: geopd_nope}\n", "not a shipped task"),
    Case("empty-name", "name: ''\n", "name"),
    Case("extends-itself", "runs:\n  sft-4b: {extends: sft-4b}\n", "cycle between runs: sft-4b -> sft-4b"),
    Case("effopd-on-sft", "runs:\n  sft-4b: {extrapolation: {candidates: 3}}\n", "an sft run has none"),
    Case("heads-not-grouped", "model_sizes:\n  s8b: {heads: 3}\n", "do not divide 3 attention heads"),
    Case("hidden-not-whole-heads", "model_sizes:\n  s9b: {arch: qwen3, hidden: 66, layers: 2, heads: 4, kv_heads: 2, "
         "intermediate: 256}\n", "not a whole number of 4 heads"),
    Case("more-experts-per-token", "model_sizes:\n  t30ba3b: {experts_per_tok: 9}\n", "9 experts per token of 8"),
    Case("effopd-teacher-samples", "runs:\n  effopd: {rollout: {source: teacher}}\n", "not with rollout.source teacher"),
    Case("lr-as-text", "method_defaults:\n  sft:\n    optim: {lr: 1e-5}\n", "YAML reads 1e-5 as text"),
    Case("partition-empty", "resources:\n  default: {partition: ''}\n", "resources.default.partition"),
    Case("projection-step-absent", "runs:\n  rank16-sft: {projection: {step: 7}}\n", "saves no checkpoint at step 7"),
    Case("init-step-beyond-steps", "runs:\n  rlvr-8b: {init: sft-8b@999999}\n", "nothing to train"),
    Case("build-size-and-from", "models:\n  qwen3-8b: {build: {size: s8b}}\n", "not finetune + from + size"),
    Case("mirror-in-src", "hub_mirror: {repo}/src/mirror\n", "inside the source tree"),
    # ---- the paper config (its cost model) ----
    Case("paper-gpu-memory-tiny", "resources:\n  train: {gpu_memory_gb: 10}\n", "GiB per GPU", base="paper", names=None),
    Case("paper-runtime-short", "runs:\n  rlvr-8b: {resources: {runtime: 600}}\n", "time", base="paper",
         names=None),
    Case("paper-bench-len-below-prompt", "benchmarks:\n  aime24: {max_model_len: 31000}\n", "shorter than a prompt",
         base="paper", names=None),
    Case("paper-eval-without-gpus", "resources:\n  evaluate: {gpus: 0}\n", "gpus 0", base="paper"),
    Case("paper-train-node-cap", "resources:\n  train: {max_nodes: 4}\n", "exceeds max_nodes", base="paper",
         names=None),
    Case("paper-empty-mirror", "hub_mirror: ''\n", "hub_mirror", base="paper"),
    Case("paper-teacher-vocabulary", "models:\n  qwen3-32b: {shape: {vocab: 1000}}\n", "vocabulary", base="paper"),
    Case("paper-tasks-split-gpus", "resources:\n  train: {tasks: 7}\n", "do not divide", base="paper"),
    Case("paper-bench-split-absent", "benchmarks:\n  aime24: {split: train}\n", "has no train split", base="paper"),
    Case("paper-eval-fixed-parallelism", "benchmarks:\n  aime24: {tensor_parallel: 1, data_parallel: 1}\n",
         "= 1 GPUs, but an evaluate job has 2", base="paper"),
]
