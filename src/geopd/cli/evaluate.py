"""`geopd evaluate`: evaluate a checkpoint on a benchmark.

    geopd evaluate --model DIR_OR_HUB_ID --benchmark '<spec JSON>' --seed N \
                   --out RESULT.json --samples SAMPLES.jsonl --threads T
"""
from __future__ import annotations

import argparse
import os

import torch

from geopd.evaluate import engine
from geopd.evaluate.run import evaluate, parse_spec
from geopd.io.outputs import check_outputs


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint folder (or hub id at paper scale)")
    parser.add_argument("--benchmark", required=True, help="benchmark spec JSON (from the grid)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="result JSON")
    parser.add_argument("--samples", required=True, help="per-sample JSONL")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--backend", choices=("auto", "hf", "vllm"), default="auto")
    parser.add_argument("--batch-size", type=int, default=None, help="generation batch (hf backend)")


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local JSONL only; never ask the hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    spec = parse_spec(args.benchmark)
    check_outputs({"--out": args.out, "--samples": args.samples}, {"--model": args.model})
    if args.threads:
        torch.set_num_threads(args.threads)
    result = evaluate(spec, args.model, seed=args.seed, out=args.out, samples_file=args.samples,
                      backend=args.backend, batch_size=args.batch_size, workers=args.threads or 1)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
    print(f"{result['benchmark']} ({result['n']} problems x {result['samples_per_problem']}): {shown}")
    return 0


def close() -> None:
    """After the last evaluation of the process (one command, or a batch): shut down the vLLM
    engine that evaluations share (geopd.evaluate.engine)."""
    engine.close()
