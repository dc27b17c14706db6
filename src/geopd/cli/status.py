"""`geopd status`: one line per run of the grid: its state, step, last loss or reward, speed,
ETA, Slurm job, evaluations and diagnoses (geopd.status). Reads files (and squeue): no torch."""
from __future__ import annotations

import argparse
import json

from geopd.errors import UserError
from geopd.grid import Grid
from geopd.status import Status, render, squeue_jobs


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="*", metavar="RUN", help="runs to show (default: every run)")
    parser.add_argument("--configfile", nargs="+", default=["config/config.yaml"],
                        help="one or more config files, merged in order as `snakemake --configfile a b` does")
    parser.add_argument("-d", "--directory", default=".",
                        help="the workflow's working directory (snakemake -d; default: here): the results root "
                             "is read under it and Slurm jobs are matched on it")
    parser.add_argument("--no-slurm", action="store_true", help="do not ask squeue")
    parser.add_argument("--json", action="store_true", help="one JSON object per run instead of the table")


def main(args: argparse.Namespace) -> int:
    grid = Grid.from_files(args.configfile)
    jobs = None if args.no_slurm else squeue_jobs()
    status = Status(grid, args.directory, jobs)
    unknown = [r for r in args.runs if r not in grid.runs]
    if unknown:
        raise UserError(f"no run named {', '.join(unknown)} in {' + '.join(args.configfile)}")
    statuses = [status.run(r) for r in (args.runs or grid.runs)]
    if args.json:
        for s in statuses:
            print(json.dumps(s.to_dict()))
    else:
        print(render(statuses, f"{grid.config['name']} ({' + '.join(args.configfile)})", jobs is not None))
    return 0
