"""`geopd report SUB`: aggregate per-checkpoint outputs, then tables, figures and the claims check.

  grid                   --spec JSON --out FILE             the grid description (Grid.report_spec())
  aggregate-diagnostics  --results R [--grid FILE.json] --out-summary F --out-matrices F --out-similarity F
  aggregate-eval         --results R [--grid FILE.json] --out F
  tables | figures | claims   --results R [--grid FILE.json] [--out-dir DIR]
  partial                --results R [--grid FILE.json] --out-dir DIR
  run-curves             --metrics R/runs/<run>/metrics.jsonl --run NAME --out R/figures/runs/<run>.png

The grid description (default R/grid.json) lists every per-checkpoint file the grid expects,
relative to R; the aggregates read exactly those (all must exist). tables, figures and claims
read R/diagnostics/{summary,matrices,similarity}.csv, R/eval/accuracy.csv,
R/runs/<run>/metrics.jsonl and the grid; they write R/tables/<name>.{csv,md},
R/figures/<name>.{png,pdf} and R/tables/{claims,missing}.{csv,md}. partial does all of it from
whichever expected files exist under R (unreadable ones are skipped and listed), into
DIR/{diagnostics,eval,tables,figures}: the report after failed jobs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geopd.errors import UserError
from geopd.io.outputs import check_outputs
from geopd.paths import Layout
from geopd.report import aggregate
from geopd.report.claims import write_claims
from geopd.report.data import ReportData
from geopd.report.gridfile import expected_inputs, read_grid, write_grid
from geopd.report.tables import write_all

GRID_HELP = "grid description JSON (default: RESULTS/grid.json)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "\n".join(__doc__.splitlines()[2:])
    sub = parser.add_subparsers(dest="report_command", required=True, metavar="SUB")

    p = sub.add_parser("grid", help="write the grid description JSON for the report")
    p.add_argument("--spec", required=True, help="JSON text of Grid.report_spec() (or @FILE holding it)")
    p.add_argument("--out", required=True)

    p = sub.add_parser("aggregate-diagnostics", help="per-checkpoint diagnostics -> tidy tables")
    p.add_argument("--results", required=True)
    p.add_argument("--grid", default=None, help=GRID_HELP)
    p.add_argument("--out-summary", required=True)
    p.add_argument("--out-matrices", required=True)
    p.add_argument("--out-similarity", required=True)

    p = sub.add_parser("aggregate-eval", help="per-checkpoint evaluations -> one tidy table")
    p.add_argument("--results", required=True)
    p.add_argument("--grid", default=None, help=GRID_HELP)
    p.add_argument("--out", required=True)

    for name, what, default in (("tables", "paper tables", "tables"), ("figures", "figures", "figures"),
                                ("claims", "the claims check", "tables")):
        p = sub.add_parser(name, help=f"{what} from the aggregated results")
        p.add_argument("--results", required=True)
        p.add_argument("--grid", default=None, help=GRID_HELP)
        p.add_argument("--out-dir", default=None, help=f"output folder (default: RESULTS/{default})")
        p.set_defaults(default_out=default)

    p = sub.add_parser("run-curves", help="one run's training curves (every scalar of its metrics), png and pdf")
    p.add_argument("--metrics", required=True, help="the run's metrics.jsonl")
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True, help="the PNG (the PDF is written beside it)")

    p = sub.add_parser("partial", help="tables, figures, claims and missing.md from whatever inputs exist")
    p.add_argument("--results", required=True)
    p.add_argument("--grid", default=None, help=GRID_HELP)
    p.add_argument("--out-dir", required=True, help="output folder (the workflow's: RESULTS/partial)")


def _expected(args) -> list:
    return expected_inputs(read_grid(Path(args.grid or Layout(args.results).grid_file())))


def _aggregate_diagnostics(args) -> int:
    summary, matrices, similarity = aggregate.aggregate_diagnostics(args.results, _expected(args))
    for df, path in ((summary, args.out_summary), (matrices, args.out_matrices), (similarity, args.out_similarity)):
        aggregate.write_csv(df, path)
    runs = summary.loc[summary["scope"] == "all"] if len(summary) else summary
    print(f"{len(runs)} diagnoses ({summary['run'].nunique() if len(summary) else 0} runs/pairs), "
          f"{len(matrices)} matrix rows, {len(similarity)} similarity rows", file=sys.stderr)
    return 0


def _aggregate_eval(args) -> int:
    df = aggregate.aggregate_eval(args.results, _expected(args))
    aggregate.write_csv(df, args.out)
    print(f"{len(df)} accuracy rows from {df[['subject', 'step', 'benchmark']].drop_duplicates().shape[0]} "
          f"evaluations", file=sys.stderr)
    return 0


def _partial(args) -> int:
    from geopd.report.build import write_report  # heavy: matplotlib (the figures)

    data = ReportData.from_tree(args.results, args.grid)
    paths = write_report(data, Path(args.out_dir))
    print(f"wrote {len(paths)} files under {args.out_dir}", file=sys.stderr)
    return 0


def _render(args) -> int:
    data = ReportData.load(args.results, args.grid)
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.results) / args.default_out
    if args.report_command == "tables":
        paths = write_all(data, out_dir)
    elif args.report_command == "figures":
        from geopd.report.figures import render_all  # heavy: matplotlib

        paths = render_all(data, out_dir)
    else:
        paths = write_claims(data, out_dir)
    print(f"wrote {len(paths)} files under {out_dir}", file=sys.stderr)
    return 0


def check_results(args) -> None:
    """A mistyped --results must not pass as an empty grid: the folder must exist, and tables,
    figures and claims need at least one of the aggregated files in it."""
    results = Path(args.results)
    if not results.is_dir():
        raise UserError(f"--results {results}: no such folder")
    if args.report_command in ("tables", "figures", "claims"):
        layout = Layout(results)
        aggregated = [layout.diagnostics_summary(), layout.diagnostics_matrices(), layout.similarity_summary(),
                      layout.accuracy_file()]
        if not any(Path(p).exists() for p in aggregated):
            raise UserError(f"--results {results}: none of {', '.join(str(Path(p).relative_to(results)) for p in aggregated)} "
                            f"is there: is it the results folder? (aggregate-diagnostics and aggregate-eval write them)")


def main(args: argparse.Namespace) -> int:
    cmd = args.report_command
    if cmd == "grid":
        write_grid(args.spec, args.out)
        return 0
    if cmd == "run-curves":
        from geopd.report.figures import run_curves  # heavy: matplotlib

        # The stem keeps a run's own dots (opd-mix-0.50.png -> opd-mix-0.50): strip ".png" only.
        out = Path(args.out)
        out = out.with_name(out.name.removesuffix(".png"))
        check_outputs({"--out": out.with_name(out.name + ".png"), "--out (pdf)": out.with_name(out.name + ".pdf")},
                      {"--metrics": args.metrics})
        paths = run_curves.draw(args.metrics, args.run, out)
        print(f"wrote {', '.join(map(str, paths))}", file=sys.stderr)
        return 0
    check_results(args)
    if cmd == "aggregate-diagnostics":
        return _aggregate_diagnostics(args)
    if cmd == "aggregate-eval":
        return _aggregate_eval(args)
    if cmd == "partial":
        return _partial(args)
    return _render(args)
