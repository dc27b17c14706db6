"""`geopd plan`: list jobs and GPU-hours before anything runs."""
from __future__ import annotations

import argparse
import json

from geopd.errors import UserError
from geopd.grid import Grid
from geopd.plan import (Sizing, build_jobs, estimate_jobs, estimate_json, problems, render, render_suggestion,
                        select, summarize)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help="rule names, run names or job ids (default: everything)")
    parser.add_argument("--configfile", nargs="+", default=["config/config.yaml"],
                        help="one or more config files, merged in order as `snakemake --configfile a b` does")
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


def main(args: argparse.Namespace) -> int:
    grid = Grid.from_files(args.configfile)
    names = " + ".join(args.configfile)
    if args.suggest_resources:
        print(render_suggestion(grid, " ".join(args.configfile), Sizing(margin=args.margin, max_hours=args.max_hours)))
        return 0
    jobs = select(build_jobs(grid), grid, args.targets)
    estimates = estimate_jobs(grid, jobs)
    summary = summarize(jobs, estimates)
    found = problems(jobs, estimates)
    if args.json:
        summary["estimates"] = {j: estimate_json(e) for j, e in estimates.items()}
        summary["problems"] = found
        print(json.dumps(summary, indent=2))
    else:
        print(render(summary, names, jobs, estimates, args.detail))
    if found:
        raise UserError(f"{len(found)} problem(s) in {names}:\n  " + "\n  ".join(found))
    return 0
