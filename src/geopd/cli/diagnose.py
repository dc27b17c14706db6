"""`geopd diagnose`: per-matrix parameter-space diagnostics of a checkpoint pair (W0 -> W+).

Writes one row per analysed matrix (parquet or CSV by the extension of --out) and, with
--summary, a JSON summary: parameter-count-weighted overall and per-module-type bf16 sparsity,
unweighted means of every metric, pooled mask overlaps, module-wise (embedding / attention /
MLP / other) and layer-wise update norms, and timings. See geopd.diagnostics.run for the
matrix set and geopd.diagnostics.metrics for the definitions.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from geopd.diagnostics.output import check_table_path, default_workers, write_json, write_table
from geopd.diagnostics.run import Options, diagnose
from geopd.io.outputs import check_outputs


def positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {v}")
    return v


def fraction(text: str) -> float:
    v = float(text)
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, not {v}")
    return v


def positive_float(text: str) -> float:
    v = float(text)
    if not v > 0.0:
        raise argparse.ArgumentTypeError(f"must be positive, not {v}")
    return v


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--base", required=True,
                        help="W0: HF-layout folder (model.safetensors or shards + index), a .safetensors "
                             "file, or a hub id owner/name[@revision]")
    parser.add_argument("--tuned", required=True, help="W+: same forms as --base")
    parser.add_argument("--out", required=True, help="per-matrix table (.parquet or .csv)")
    parser.add_argument("--summary", help="JSON summary")
    parser.add_argument("--spectra", help="optional .npz with each matrix's angle vectors and spectra")
    parser.add_argument("--matrices", choices=["all", "attention"], default="all",
                        help="all attention + MLP matrices, or q/k/v/o only (default: all)")
    parser.add_argument("--k", type=positive_int, default=512, help="principal-angle subspace size")
    parser.add_argument("--r", type=positive_int, default=64, help="rank of the W0 reconstruction for M_princ")
    parser.add_argument("--alpha", type=fraction, nargs="+", default=[0.5],
                        help="mask fraction(s): the overlaps are computed at each (columns princ_overlap@A, ...)")
    parser.add_argument("--eta", type=positive_float, default=1e-3, help="bf16 relative tolerance")
    parser.add_argument("--hill-k", type=positive_int, default=None,
                        help="top singular values for the Hill estimate (default: --k)")
    parser.add_argument("--workers", type=positive_int, default=default_workers(),
                        help="processes, one thread each (default: usable CPUs)")
    parser.add_argument("--cache-dir", default=None,
                        help="on-disk SVD cache of W0, keyed by content (default: none)")


def main(args: argparse.Namespace) -> int:
    # Fail before hours of SVDs, not after: the outputs' names, places and permissions.
    check_table_path(args.out)
    check_outputs({"--out": args.out, "--summary": args.summary, "--spectra": args.spectra},
                  {"--base": args.base, "--tuned": args.tuned})
    # --workers is the core budget: each process (this one when workers == 1) uses one thread.
    torch.set_num_threads(1)
    opts = Options(matrices=args.matrices, k=args.k, r=args.r, alphas=tuple(args.alpha), eta=args.eta,
                   hill_k=args.hill_k, workers=args.workers, cache_dir=args.cache_dir,
                   spectra=bool(args.spectra))
    result = diagnose(args.base, args.tuned, opts)
    write_table(result.table, args.out)
    if args.summary:
        write_json(result.summary, args.summary)
    if args.spectra:
        Path(args.spectra).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.spectra, **{f"{name}|{key}": arr for name, d in result.spectra.items()
                                             for key, arr in d.items()})
    for w in result.summary["warnings"]:
        print(f"geopd diagnose: warning: {w}", file=sys.stderr)
    s, tm = result.summary["overall"], result.summary["timing"]
    print(f"{len(result.table)} matrices, bf16 sparsity {s['bf16_sparsity']:.4f}, "
          f"{tm['wall_s']:.1f} s (read {tm['read_s']:.1f}, svd {tm['svd_s']:.1f}, other {tm['other_s']:.1f} "
          f"worker-s; SVD cache {tm['cache_hits']} hits / {tm['cache_misses']} misses)", file=sys.stderr)
    return 0
