"""The whole report from one ReportData into one folder (`geopd report partial`): the
aggregated tables it was built from, the paper tables, the figures, the claims check and
missing.md, laid out as the complete workflow lays them out under results/."""
from __future__ import annotations

from pathlib import Path

from geopd.paths import Layout
from geopd.report import aggregate
from geopd.report.claims import write_claims
from geopd.report.data import ReportData
from geopd.report.figures import render_all
from geopd.report.tables import write_all


def write_report(data: ReportData, out: Path) -> list[Path]:
    layout = Layout(out)
    paths = [aggregate.write_csv(df, path) for df, path in (
        (data.summary, layout.diagnostics_summary()), (data.matrices, layout.diagnostics_matrices()),
        (data.similarity, layout.similarity_summary()), (data.accuracy, layout.accuracy_file()))]
    paths += write_all(data, out / "tables")
    paths += write_claims(data, out / "tables")
    paths += render_all(data, out / "figures")
    return paths
