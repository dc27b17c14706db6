"""Grouped vLLM evaluation: one engine for N checkpoints vs one engine per checkpoint (issue 25).

    .venv-vllm/bin/python scripts/bench_grouped_eval.py [--checkpoints 12] [--hidden 64] [--repeat 2]

Makes N checkpoints of one tiny Qwen3 shape (head_dim 32, as vLLM's CPU kernels need) and a
math benchmark (lm-eval through vLLM, 3 problems x 2 samples at temperature 1, 8 new tokens),
then evaluates every checkpoint twice over, in one process, alternating the order per repeat:
- "one engine per checkpoint": each evaluation starts its engine and shuts it down after
  (what a job per checkpoint does, less the process start-up and imports it also pays);
- "one engine": the evaluations share the process's engine (geopd batch; geopd.evaluate.engine),
  which loads each checkpoint's weights.
Prints the wall time of each and the speed-up. CPU, in-process eager engines (no compile, no
CUDA graphs: on a GPU the start-up an engine saves is larger, minutes with CUDA graphs).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_CI_ENV", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def make_checkpoints(root: Path, n: int, hidden: int) -> list[Path]:
    import torch

    from geopd.engines.models import save_model
    from geopd.world.models import init_model, tiny_config
    from geopd.world.tokenizer import build_tokenizer, vocabulary

    tok = build_tokenizer()
    cfg = tiny_config("qwen3", vocab_size=len(vocabulary()), hidden=hidden, layers=2, heads=2, kv_heads=1,
                      head_dim=32, intermediate=2 * hidden, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return [save_model(init_model(cfg, 100 + i), tok, root / f"ck{i}", dtype=torch.float32) for i in range(n)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    from geopd.evaluate import engine
    from geopd.evaluate.run import evaluate
    from geopd.world.tasks import math_problems

    with tempfile.TemporaryDirectory(prefix="geopd-bench-grouped-") as tmp:
        root = Path(tmp)
        checkpoints = make_checkpoints(root, args.checkpoints, args.hidden)
        (root / "math").mkdir()
        (root / "math" / "test.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in math_problems(3, seed=3, split="test")))
        spec = {"name": "math-bench", "kind": "math", "data_dir": str(root / "math"), "split": "test", "samples": 2,
                "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8, "kv_cache_gib": 0.0625, "max_model_len": 256}

        def one(model, tag):
            evaluate(spec, str(model), seed=3, out=root / tag / "r.json", samples_file=root / tag / "s.jsonl",
                     backend="vllm")

        one(checkpoints[0], "warm")  # imports and first-use costs, outside both timings
        engine.close()
        times = {"one engine per checkpoint": 0.0, "one engine": 0.0}
        for r in range(args.repeat):
            order = list(times) if r % 2 == 0 else list(times)[::-1]
            for mode in order:
                start = time.perf_counter()
                for i, model in enumerate(checkpoints):
                    one(model, f"{mode[:3]}-{r}-{i}")
                    if mode == "one engine per checkpoint":
                        engine.close()
                engine.close()
                times[mode] += time.perf_counter() - start
        counts = engine.counts()
    n = args.checkpoints * args.repeat
    per, shared = times["one engine per checkpoint"] / n, times["one engine"] / n
    print(f"{n} evaluations per mode ({args.checkpoints} checkpoints x {args.repeat}); engines started: "
          f"{counts['started']}, checkpoints loaded into a running engine: {counts['loaded']}")
    print(f"one engine per checkpoint: {per:.2f} s per evaluation")
    print(f"one engine for all:        {shared:.2f} s per evaluation ({per / shared:.1f}x faster)")
    print(f"load: {os.getloadavg()[0]:.1f} (1-min average), {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
