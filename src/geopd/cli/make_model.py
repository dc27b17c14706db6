"""`geopd make-model`: build a miniature model (pretrain or finetune)."""
from __future__ import annotations

import argparse

from geopd.io.jsonarg import parse_json_arg
from geopd.world.build import make_model


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=None)


def main(args: argparse.Namespace) -> int:
    make_model(parse_json_arg(args.spec, "--spec", dict), args.out, threads=args.threads)
    return 0
