"""`geopd plan`: list jobs and GPU-hours before anything runs."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from geopd.errors import UserError
from geopd.grid import Grid, checks
from geopd.plan import (Sizing, build_jobs, estimate_jobs, estimate_json, problems, render, render_suggestion,
                        select, summarize)

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help="rule names, run names or job ids (default: everything)")
    parser.add_argument("--configfile", nargs="+", default=["config/config.yaml"],
                        help="one or more config files, merged in order as `snakemake --configfile a b` does "
                             "(targets may follow them: --configfile config/paper.yaml rlvr-8b)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--detail", action="store_true",
                        help="print each estimate's memory terms per phase and its time components")
    parser.add_argument("--suggest-resources", action="store_true",
                        help="print the train_resources block (nodes and runtime per training run) and the "
                             "evaluate runtime that the estimates and the margin give (geopd.plan.Sizing)")
    parser.add_argument("--margin", type=float, default=Sizing.margin,
                        help=f"--suggest-resources: runtime = estimate x this (default {Sizing.margin:g})")
    parser.add_argument("--max-hours", type=float, default=Sizing.max_hours,
                        help=f"--suggest-resources: more nodes until a run's runtime fits this (default {Sizing.max_hours:g})")


def config_and_targets(configfiles: list[str], targets: list[str]) -> tuple[list[str], list[str]]:
    """--configfile takes every word after it; the words that are not config files (no .yaml,
    .yml or .json suffix, and no such file or folder) are targets, as README's
    `geopd plan --configfile config/paper.yaml rlvr-8b --detail` means."""
    configs = [c for c in configfiles if c.endswith(CONFIG_SUFFIXES) or Path(c).exists()]
    return configs or configfiles[:1], [c for c in configfiles if c not in configs] + targets


def main(args: argparse.Namespace) -> int:
    configfiles, targets = config_and_targets(args.configfile, args.targets)
    grid = Grid.load(configfiles)
    for line in grid.changes:
        print(f"geopd plan: warning: {line}", file=sys.stderr)
    names = " + ".join(configfiles)
    if args.suggest_resources:
        for flag, value in (("--margin", args.margin), ("--max-hours", args.max_hours)):
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"{flag} {value:g}: must be a positive number")
        # The runtimes and nodes it suggests replace the requested ones: those are not refused.
        checks.refuse(checks.problems(grid, requests=False), names)
        print(render_suggestion(grid, " ".join(configfiles), Sizing(margin=args.margin, max_hours=args.max_hours)))
        return 0
    checks.refuse(checks.problems(grid), names)
    jobs = select(build_jobs(grid), grid, targets)
    estimates = estimate_jobs(grid, jobs)
    summary = summarize(jobs, estimates)
    found = problems(jobs, estimates)
    if args.json:
        summary["estimates"] = {j: estimate_json(e) for j, e in estimates.items()}
        summary["problems"] = found
        print(json.dumps(summary, indent=2))
    else:
        print(render(summary, names, jobs, estimates, args.detail))
    checks.refuse(found, names)
    return 0
