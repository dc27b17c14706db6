"""`geopd train`: train one run of the grid from its JSON spec.

Under torchrun (WORLD_SIZE > 1) every process runs this same command; FSDP2 shards the model.
`--threads` is the CPUs of the task (Slurm's --cpus-per-task); the LOCAL_WORLD_SIZE workers
torchrun started beside this one share them (geopd.launch.threads_per_rank).
"""
from __future__ import annotations

import argparse
import os
import sys

from geopd.io.jsonarg import parse_json_arg
from geopd.launch import threads_per_rank
from geopd.spec import STATE_EVERY_MIN, RunSpec, Tracking
from geopd.train.signals import install_early_handlers
from geopd.train.tracking import announce


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", required=True, help="JSON run spec (from geopd.grid), or @file.json")
    parser.add_argument("--out", required=True, help="checkpoints directory (the rule's output)")
    parser.add_argument("--metrics", required=True, help="per-step metrics JSONL (the rule's output)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPUs of this task, shared by the workers torchrun started on it")
    parser.add_argument("--state-every-min", type=float, default=STATE_EVERY_MIN,
                        help=f"save the training state every this many minutes (default {STATE_EVERY_MIN:g}; 0: only "
                             "at checkpoints and on a stop signal)")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines in the log")
    parser.add_argument("--tracking", default=None,
                        help="JSON tracking spec (geopd.spec.Tracking, from geopd.grid): the run's folder for its "
                             "TensorBoard and progress files, W&B, the progress interval; or @file.json")


def main(args: argparse.Namespace) -> int:
    install_early_handlers()  # before torch loads: a stop signal from now on is kept for the loop
    spec = RunSpec.from_dict(parse_json_arg(args.spec, "--spec", dict))
    tracking = Tracking.from_dict(parse_json_arg(args.tracking, "--tracking", dict) if args.tracking else None)
    announce(spec, tracking)  # before torch loads too: `geopd status` sees the job from its start
    from geopd.train import loop  # heavy: torch and the trainer
    threads = threads_per_rank(args.threads, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    print(f"geopd train {spec.run}: {sys.executable}, {threads or 'default'} CPU thread(s) per process",
          file=sys.stderr, flush=True)
    try:
        loop.train(spec, args.out, args.metrics, threads=threads, progress=not args.no_progress,
                   state_every_min=args.state_every_min, tracking=tracking)
    except loop.Stop:
        print(f"run {spec.run}: stopped on request; state saved in {spec.state_dir}", file=sys.stderr)
        return 75  # EX_TEMPFAIL: a retry resumes
    return 0
