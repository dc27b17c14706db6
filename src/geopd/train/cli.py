"""`geopd train`: one run of the grid from its JSON spec.

Under torchrun (WORLD_SIZE > 1) every process runs this same command; FSDP2 shards the model.
"""
from __future__ import annotations

import argparse
import sys

from geopd.io.jsonarg import parse_json_arg


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", required=True, help="JSON run spec (from geopd.grid), or @file.json")
    parser.add_argument("--out", required=True, help="checkpoints directory (the rule's output)")
    parser.add_argument("--metrics", required=True, help="per-step metrics JSONL (the rule's output)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    from geopd.train.loop import Stop, train

    spec = parse_json_arg(args.spec, "--spec", dict)
    try:
        train(spec, args.out, args.metrics, threads=args.threads, progress=not args.no_progress)
    except Stop:
        print(f"run {spec['run']}: stopped on request; state saved in {spec['state_dir']}", file=sys.stderr)
        return 75  # EX_TEMPFAIL: a retry resumes
    return 0
