"""`geopd train`: train one run of the grid from its JSON spec.

Under torchrun (WORLD_SIZE > 1) every process runs this same command; FSDP2 shards the model.
"""
from __future__ import annotations

import argparse
import sys

from geopd.io.jsonarg import parse_json_arg
from geopd.spec import RunSpec, Tracking
from geopd.train.loop import Stop, train
from geopd.train.tracking import announce


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", required=True, help="JSON run spec (from geopd.grid), or @file.json")
    parser.add_argument("--out", required=True, help="checkpoints directory (the rule's output)")
    parser.add_argument("--metrics", required=True, help="per-step metrics JSONL (the rule's output)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true", help="no progress lines in the log")
    parser.add_argument("--tracking", default=None,
                        help="JSON tracking spec (geopd.spec.Tracking, from geopd.grid): the run's folder for its "
                             "TensorBoard and progress files, W&B, the progress interval; or @file.json")


def main(args: argparse.Namespace) -> int:
    spec = RunSpec.from_dict(parse_json_arg(args.spec, "--spec", dict))
    tracking = Tracking.from_dict(parse_json_arg(args.tracking, "--tracking", dict) if args.tracking else None)
    announce(spec, tracking)
    try:
        train(spec, args.out, args.metrics, threads=args.threads, progress=not args.no_progress, tracking=tracking)
    except Stop:
        print(f"run {spec.run}: stopped on request; state saved in {spec.state_dir}", file=sys.stderr)
        return 75  # EX_TEMPFAIL: a retry resumes
    return 0
