"""`geopd batch`: several geopd commands in one process, one after the other.

    geopd batch --commands '[["evaluate", "--model", "...", ...], ["evaluate", ...]]'

Each command is parsed and run exactly as `geopd <command> ...` would be; only the interpreter
start-up and the imports (torch, transformers, lm-eval: seconds, more than a miniature
checkpoint's evaluation itself) are paid once, and evaluations share one vLLM engine
(geopd.evaluate.engine: started once, given each checkpoint's weights, shut down after the
last command). The workflow uses it for the per-run jobs of `job_grouping` (every checkpoint of
a run evaluated, or diagnosed, in one job). The first command that fails stops the batch with
its exit status; the error names the command. Each command's log line gives the process's
resident memory after it, so a leak shows as a rising column.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

from geopd.cli import close_command, module_of
from geopd.errors import UserError
from geopd.io.jsonarg import parse_json_arg
from geopd.io.progress import Progress

# Commands that may run in a batch: those that leave no state behind in the process
# (their own RNG seeding, thread count set per call, no global configuration).
BATCHABLE = ("evaluate", "diagnose", "similarity")


def parse_commands(text: str) -> list[list[str]]:
    commands = parse_json_arg(text, "--commands")
    if not isinstance(commands, list) or not all(
            isinstance(c, list) and c and all(isinstance(a, str) for a in c) for c in commands):
        raise UserError('--commands must be a JSON list of argument lists, e.g. [["evaluate", "--model", "m", ...]]')
    for c in commands:
        if c[0] not in BATCHABLE:
            raise UserError(f"'{c[0]}' cannot run in a batch (batchable: {', '.join(BATCHABLE)})")
    return commands


def run_command(argv: list[str]) -> int:
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(module_of(name))
    parser = argparse.ArgumentParser(prog=f"geopd {name}")
    module.configure(parser)
    return int(module.main(parser.parse_args(rest)) or 0)


def rss_mib() -> float | None:
    """This process's resident memory now (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--commands", required=True,
                        help="JSON list of geopd argument lists (the command name first), or @FILE holding it")


def main(args: argparse.Namespace) -> int:
    commands = parse_commands(args.commands)
    progress = Progress("geopd batch", len(commands), unit="commands", interval=0)
    progress.begin()
    try:
        for i, argv in enumerate(commands, 1):
            what = f"command {i}/{len(commands)}: geopd {' '.join(argv[:1])}"
            print(f"geopd batch: {what} {' '.join(argv[1:3])}", file=sys.stderr, flush=True)
            start = time.perf_counter()
            try:
                status = run_command(argv)
            except UserError as exc:
                raise UserError(f"{what}: {exc}") from None
            if status:
                print(f"geopd batch: {what} exited with {status}; the remaining commands were not run",
                      file=sys.stderr)
                return status
            rss = rss_mib()
            print(f"geopd batch: {what} done in {time.perf_counter() - start:.1f} s"
                  + (f", rss {rss:.0f} MiB" if rss is not None else ""), file=sys.stderr, flush=True)
            progress.update(i)
        return 0
    finally:
        for name in dict.fromkeys(argv[0] for argv in commands):
            if (module := sys.modules.get(module_of(name))) is not None:  # a kind that never ran holds nothing
                close_command(module)
