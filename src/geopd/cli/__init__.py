"""The `geopd` command line: one subcommand per stage of the workflow.

Subcommands are imported lazily so that `geopd plan` starts in well under a
second and never imports torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from geopd.errors import UserError

# Each subcommand is the module geopd.cli.<name> ("-" -> "_") with `configure(parser)` and
# `main(args)`, and optionally `close()`, run once after the process's last command of that kind
# (one command, or every one of a `geopd batch`): it releases what main keeps for the next one
# (evaluate: its vLLM engine). Its docstring's first line is the help. The list fixes the order
# of `--help`.
COMMANDS = ("data", "prefetch", "fixture", "make-model", "train", "launch", "diagnose", "similarity",
            "evaluate", "batch", "report", "plan", "status", "validate")
# Help texts without importing every module (an import may pull torch; `geopd plan` must not).
HELP = {
    "data": "prepare a data set as local JSONL files",
    "prefetch": "download hub models and data sets into the hub mirror (needs network)",
    "fixture": "write the paper-shaped offline fixture as a hub mirror",
    "make-model": "build a miniature model (pretrain or finetune)",
    "train": "train one run of the grid",
    "launch": "run a command on 1 process, torchrun, or srun+torchrun across nodes",
    "diagnose": "parameter-space diagnostics of a checkpoint pair",
    "similarity": "Sim_K of a run's checkpoint series",
    "evaluate": "evaluate a checkpoint on a benchmark",
    "batch": "several evaluate / diagnose / similarity commands in one process",
    "report": "tables, figures and the claims check",
    "plan": "list jobs and GPU-hours before anything runs",
    "status": "where every run of the grid is: state, step, loss or reward, ETA, Slurm job, evals",
    "validate": "validate a config file against the schema",
}


def module_of(command: str) -> str:
    return "geopd.cli." + command.replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geopd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = module_of(name)
        p = sub.add_parser(name, help=HELP[name])
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
    finally:
        close_command(module)


def close_command(module) -> None:
    """A command module's `close()`, if it has one (see COMMANDS)."""
    close = getattr(module, "close", None)
    if close is not None:
        close()

