"""The vLLM engine of a process's evaluations: one engine, kept from one evaluation to the next.

`geopd batch` evaluates every checkpoint of a run in one process (job_grouping.evaluate: run).
A vLLM engine per evaluation was both slow (start-up: seconds on CPU, minutes with CUDA graphs
on a GPU) and a leak: vLLM 0.32 freezes the objects of an engine's start-up from the garbage
collector until the engine is shut down, so every evaluation left its engine and KV cache behind
(the fixture's sft-8b batch ran out of memory at evaluation 41 of 42). Here the process holds at
most one engine (`engine_for`):

- the same vLLM settings and a checkpoint of the same architecture and tokenizer (`identity`):
  the held engine takes the checkpoint's weights (Engine.load_checkpoint) and is reseeded, so it
  samples exactly as a freshly started engine would (tests/with_vllm/test_grouped_evaluation.py);
- anything else: the held engine is shut down first (Engine.close), then a new one starts;
- `close()` at the end (the CLI calls it after `geopd evaluate` and after a batch).

Both paths share it: lm-eval's vLLM wrapper is built around the held engine (geopd.evaluate.harness)
and the code kinds sample through VLLMRollout.on_engine (geopd.evaluate.generation). The engine is
started with the trainer's processed log-probs mode (what VLLMRollout reads); lm-eval's generation
asks for no log-probs, so its sampling distribution is unchanged, but on CUDA vLLM then samples
top-k / top-p with its native sampler instead of FlashInfer's (vllm/v1/sample/ops/
topk_topp_sampler.py), so the draws differ from an engine in the default mode.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from geopd.engines.vllm_engine import Engine, check_settings
from geopd.spec import EVAL_GPU_MEMORY_UTILIZATION

# The benchmark spec's keys that configure its engine (geopd.engines.vllm_engine.SETTINGS).
VLLM_KEYS = ("tensor_parallel", "gpu_memory_utilization", "dtype", "max_model_len", "enforce_eager", "kv_cache_gib")
# config.json fields that name the folder or the writer, not the architecture.
CONFIG_NOISE = ("_name_or_path", "transformers_version")
# What a tokenizer is made of in a Hugging Face folder (those present are compared).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "tokenizer.model")


def vllm_settings(spec: dict) -> dict:
    """A benchmark spec's vLLM engine settings (geopd.engines.vllm_engine's keys)."""
    return {"gpu_memory_utilization": EVAL_GPU_MEMORY_UTILIZATION, **{k: spec[k] for k in VLLM_KEYS if k in spec}}


def identity(model: str | Path) -> str:
    """What an engine needs unchanged to serve another checkpoint by loading only its weights: the
    architecture (config.json less CONFIG_NOISE; its dtype too, which "auto" reads) and the
    tokenizer's files (vLLM detokenizes with the tokenizer it started with). A model that is not a
    local folder (a hub id) is identified by its name."""
    path = Path(model)
    if not (path / "config.json").is_file():
        return f"name:{model}"
    config = {k: v for k, v in json.loads((path / "config.json").read_text()).items() if k not in CONFIG_NOISE}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name in TOKENIZER_FILES:
        f = path / name
        digest.update(name.encode() + b"\0" + (f.read_bytes() if f.is_file() else b"(absent)") + b"\0")
    return digest.hexdigest()


@dataclass
class Held:
    key: tuple           # (settings, identity)
    model: str           # whose weights the engine holds now
    engine: Engine


_held: Held | None = None
_counts = {"started": 0, "loaded": 0}  # engines started, checkpoints loaded into a running one


def engine_for(model: str | Path, spec: dict, seed: int) -> Engine:
    """The process's evaluation engine with `model`'s weights and `spec`'s settings, reseeded."""
    global _held
    where = f"benchmark {spec.get('name')}"
    settings = check_settings(vllm_settings(spec), where)
    key = (json.dumps(settings, sort_keys=True), identity(model))
    if _held is not None and _held.key == key:
        if _held.model != str(model):
            _held.engine.load_checkpoint(model)
            _held.model = str(model)
            _counts["loaded"] += 1
            _log(f"loaded {model} into the running engine")
    else:
        if _held is not None:
            _log(f"{where} needs other engine settings or another architecture: shutting the engine down")
        close()
        _log(f"starting a vLLM engine for {model} ({where})")
        engine = Engine(model, settings, role="evaluation", seed=seed, colocated=False,
                        logprobs_mode="processed_logprobs", where=where)
        _held = Held(key=key, model=str(model), engine=engine)
        _counts["started"] += 1
    _held.engine.reseed(seed)
    return _held.engine


def counts() -> dict:
    """Engines started and checkpoints loaded into a running engine, in this process so far."""
    return dict(_counts)


def close() -> None:
    """Shut the held engine down (if any)."""
    global _held
    if _held is not None:
        held, _held = _held, None
        held.engine.close()


def _log(text: str) -> None:
    print(f"geopd evaluate: {text}", file=sys.stderr, flush=True)
