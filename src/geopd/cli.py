"""The `geopd` command line: one subcommand per stage of the workflow.

Subcommands are imported lazily so that `geopd plan` starts in well under a
second and never imports torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from geopd.errors import UserError

# name -> (module, help). Each module defines `configure(parser)` and `main(args)`.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("geopd.data", "prepare a data set as local JSONL files"),
    "prefetch": ("geopd.mirror", "download hub models and data sets into the hub mirror (needs network)"),
    "fixture": ("geopd.fixture", "write the paper-shaped offline fixture as a hub mirror"),
    "make-model": ("geopd.world.build", "build a miniature model (pretrain or finetune)"),
    "train": ("geopd.train.cli", "train one run of the grid"),
    "launch": ("geopd.launch", "run a command on 1 process, torchrun, or srun+torchrun across nodes"),
    "diagnose": ("geopd.diagnostics.cli", "parameter-space diagnostics of a checkpoint pair"),
    "similarity": ("geopd.diagnostics.similarity", "Sim_K of a run's checkpoint series"),
    "evaluate": ("geopd.evaluate.cli", "evaluate a checkpoint on a benchmark"),
    "batch": ("geopd.batch", "several evaluate / diagnose / similarity commands in one process"),
    "report": ("geopd.report.cli", "tables, figures and the claims check"),
    "plan": ("geopd.plan", "list jobs and GPU-hours before anything runs"),
    "validate": ("geopd.config", "validate a config file against the schema"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geopd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        p.set_defaults(_module=module)
        # Only the chosen command's module is imported (keeps `plan` fast).
        if name in sys.argv[1:2]:
            importlib.import_module(module).configure(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    parser = build_parser()
    args = parser.parse_args()
    module = importlib.import_module(args._module)
    try:
        return int(module.main(args) or 0)
    except UserError as exc:  # bad input: one clear line, no traceback
        print(f"geopd {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
