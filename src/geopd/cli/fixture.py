"""`geopd fixture`: write the paper-shaped offline fixture as a hub mirror."""
from __future__ import annotations

import argparse
import json

from geopd.errors import UserError
from geopd.fixture import build, missing_from
from geopd.grid import merged_config


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="the hub mirror directory to fill (a config's hub_mirror)")
    parser.add_argument("--configfile", nargs="*", default=[],
                        help="check that the fixture covers every hub repo of these configs (merged)")
    parser.add_argument("--sft-rows", type=int, default=None, help="conversations in the Dolci-Think SFT fixture")


def main(args: argparse.Namespace) -> int:
    if args.configfile:
        missing = missing_from(merged_config(args.configfile))
        if missing:
            raise UserError(f"{', '.join(args.configfile)}: the fixture has no stand-in for {missing}")
    options = {}
    if args.sft_rows is not None:
        options["allenai/Dolci-Think-SFT-7B"] = {"rows": args.sft_rows}
    written = build(args.out, dataset_options=options)
    print(json.dumps({k: len(v) for k, v in written.items()}) + f" repos written to {args.out}")
    return 0
