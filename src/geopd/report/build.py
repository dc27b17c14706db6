"""The whole report from one ReportData into one folder (`geopd report partial`): the
aggregated tables it was built from, the paper tables, the figures, the claims check and
missing.md, laid out as the complete workflow lays them out under results/."""
from __future__ import annotations

from pathlib import Path

from geopd.report import aggregate
from geopd.report.claims import write_claims
from geopd.report.data import ReportData
from geopd.report.figures import render_all
from geopd.report.tables import write_all


def write_report(data: ReportData, out: Path) -> list[Path]:
    paths = [aggregate.write_csv(df, out / rel) for df, rel in (
        (data.summary, "diagnostics/summary.csv"), (data.matrices, "diagnostics/matrices.csv"),
        (data.similarity, "diagnostics/similarity.csv"), (data.accuracy, "eval/accuracy.csv"))]
    paths += write_all(data, out / "tables")
    paths += write_claims(data, out / "tables")
    paths += render_all(data, out / "figures")
    return paths
