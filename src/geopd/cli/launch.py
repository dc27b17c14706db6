"""`geopd launch`: run a command on 1 process, torchrun, or srun+torchrun across nodes.

    geopd launch --nodes N --tasks T --gpus-per-node G [--cpus-per-task C] [--dry-run] -- CMD ...

The command line it runs is geopd.launch.plan's (see there for the cases); torchrun runs as its
child, with Slurm's early signal relayed to every worker (geopd.launch.run_relaying).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from geopd.launch import plan, run_relaying


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=None, help="torchrun agents (default: one per node)")
    parser.add_argument("--gpus-per-node", type=int, default=0)
    parser.add_argument("--cpus-per-task", type=int, default=None,
                        help="CPUs of one task (Slurm's --cpus-per-task), shared by its workers")
    parser.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command")


def main(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise SystemExit("geopd launch: no command given after --")
    line = plan(cmd, args.nodes, args.gpus_per_node, dict(os.environ), tasks=args.tasks,
                cpus_per_task=args.cpus_per_task)
    if args.dry_run:
        print(shlex.join(line))
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    if line[:3] == [sys.executable, "-m", "torch.distributed.run"]:
        return run_relaying(line)
    os.execvp(line[0], line)  # srun (it forwards signals itself), or the command (the signals' target)
