"""Figures of the geometry paper and EffOPD, one module per figure family.

Each module's `draw(data, stem)` writes stem.png and stem.pdf and returns their paths; with
missing inputs it still writes both, with "no data for X" in the affected panels.
"""
from __future__ import annotations

from pathlib import Path

from geopd.report.data import ReportData
from geopd.report.figures import (angles_nss, controls, effopd, mask_overlap, projection, similarity,
                                  training, trajectories)

FIGURES = {
    "fig2_angles_nss": angles_nss.draw,
    "fig3_mask_overlap": mask_overlap.draw,
    "fig4_trajectories": trajectories.draw,
    "fig5_sim16": similarity.draw,
    "fig6_projection": projection.draw,
    "fig8_projection_benchmarks": projection.draw_benchmarks,
    "fig7_controls": controls.draw,
    "training_curves": training.draw,
    "effopd_accuracy": effopd.draw,
}


def render_all(data: ReportData, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    return [p for name, draw in FIGURES.items() for p in draw(data, out_dir / name)]
