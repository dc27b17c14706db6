"""`geopd validate`: validate a config file against the schema."""
from __future__ import annotations

import argparse

from geopd.grid import Grid


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configfile", default="config/config.yaml")


def main(args: argparse.Namespace) -> int:
    grid = Grid.from_file(args.configfile)
    print(f"{args.configfile}: valid ({len(grid.runs)} runs, {len(grid.models)} models)")
    return 0
