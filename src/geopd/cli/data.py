"""`geopd data`: prepare a data set as local JSONL files."""
from __future__ import annotations

import argparse

from geopd.data import prepare
from geopd.io.jsonarg import parse_json_arg


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", required=True, help="JSON data-set spec (from the grid)")
    parser.add_argument("--out", required=True)


def main(args: argparse.Namespace) -> int:
    spec = parse_json_arg(args.spec, "--spec", dict)
    counts = prepare(spec, args.out)
    print(f"{spec['name']}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0
