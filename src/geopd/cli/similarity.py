"""`geopd similarity`: Sim_K of each checkpoint's update to the final one's (geometry paper Fig. 5).

Computed by geopd.diagnostics.similarity, written as tidy rows (checkpoint, step, name, layer,
module, k, sim) to --out; the mean per checkpoint goes to --summary (.json or .csv) and stderr.
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd
import torch

from geopd.cli.diagnose import positive_int
from geopd.diagnostics.output import check_table_path, default_workers, write_json, write_table
from geopd.diagnostics.similarity import similarity_series
from geopd.io.outputs import check_outputs


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--init", required=True, help="W_init: folder, .safetensors file or hub id")
    parser.add_argument("--checkpoints", required=True, nargs="+",
                        help="checkpoint folders in training order; the last one is t_end")
    parser.add_argument("--out", required=True, help="tidy table (.parquet or .csv)")
    parser.add_argument("--summary", help="mean Sim_K per checkpoint (.json or .csv)")
    parser.add_argument("--k", type=positive_int, default=16)
    parser.add_argument("--matrices", choices=["all", "attention"], default="attention")
    parser.add_argument("--workers", type=positive_int, default=default_workers(),
                        help="processes, one thread each (default: usable CPUs)")


def main(args: argparse.Namespace) -> int:
    check_table_path(args.out)
    if args.summary and not args.summary.endswith(".json"):
        check_table_path(args.summary)
    check_outputs({"--out": args.out, "--summary": args.summary},
                  {"--init": args.init, "--checkpoints": args.checkpoints})
    torch.set_num_threads(1)
    table, means = similarity_series(args.init, args.checkpoints, args.k, args.matrices, args.workers)
    write_table(table, args.out)
    if args.summary:
        if args.summary.endswith(".json"):
            write_json({"k": args.k, "matrices": args.matrices,
                        "checkpoints": [{**r, "step": None if pd.isna(r["step"]) else int(r["step"])}
                                        for r in means.to_dict("records")]}, args.summary)
        else:
            write_table(means, args.summary)
    for r in means.itertuples():
        print(f"{r.checkpoint}: mean Sim_{args.k} = {r.mean_sim:.4f} over {r.n_defined}/{r.n_matrices} matrices",
              file=sys.stderr)
    return 0
