"""Fig. 2: principal-subspace rotation and spectral drift per matrix, SFT vs OPD vs RLVR.

The per-rank-index angle vectors are not kept by the diagnostics (only per-matrix summaries),
so the panels show, for every analysed matrix of the endpoint diagnosis (x: layer-major, module
order q k v o gate up down), the mean and the max principal angle over the top-k left and right
subspaces, and the normalized spectral shift.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from geopd.diagnostics.columns import MODULES
from geopd.report.data import ReportData
from geopd.report.figures.common import (log_if_positive, no_data, role_color, role_label, roles_present, save,
                                         setting, style, subplots, used_per_matrix)

PANELS = (
    ("angle_mean", "mean principal angle (deg)", "(a) rotation: mean angle per matrix"),
    ("angle_max", "max principal angle (deg)", "(b) rotation: max angle per matrix"),
    ("nss", "NSS", "(c) spectral drift per matrix"),
)


def endpoint_matrices(data: ReportData, run: str) -> pd.DataFrame:
    m = data.matrices
    if m.empty:
        return m
    rows = m[(m["kind"] == "run") & (m["run"] == run) & (m["step"] == data.final_step(run))
             & (m["matrices"] == data.endpoint_matrices)].copy()
    if rows.empty:
        return rows
    for c in ("angle_u_mean_deg", "angle_v_mean_deg", "angle_u_max_deg", "angle_v_max_deg", "nss"):
        rows[c] = pd.to_numeric(rows.get(c), errors="coerce")
    rows["angle_mean"] = (rows["angle_u_mean_deg"] + rows["angle_v_mean_deg"]) / 2
    rows["angle_max"] = np.fmax(rows["angle_u_max_deg"], rows["angle_v_max_deg"])
    rows["_m"] = rows["module"].map({m: i for i, m in enumerate(MODULES)})
    return rows.sort_values(["layer", "_m", "name"]).reset_index(drop=True)


def draw(data: ReportData, stem: str | Path) -> list[Path]:
    with style():
        fig, axes = subplots(1, 3, height=2.4)
        per_role = {role: endpoint_matrices(data, run) for role, run in roles_present(data).items()}
        per_role = {r: df for r, df in per_role.items() if not df.empty}
        for ax, (col, ylabel, title) in zip(axes[0], PANELS):
            ax.set_title(title)
            if not per_role:
                no_data(ax, "SFT / OPD / RLVR endpoint diagnostics")
                continue
            plotted = []
            for role, df in per_role.items():
                y = df[col].to_numpy(dtype=float)
                ax.plot(np.arange(len(y)), y, marker="o", ms=2, lw=0.9, color=role_color(role),
                        label=role_label(data, role))
                plotted += list(y)
            log_if_positive(ax, plotted)
            ax.set_xlabel("matrix index (layer-major)")
            ax.set_ylabel(ylabel)
        if per_role:
            missing = [r for r in ("SFT", "OPD", "RLVR") if r not in per_role]
            axes[0][0].legend(loc="best", title=f"no data for {', '.join(missing)}" if missing else None)
        k = setting(data, "k", used_per_matrix(data, "k", data.endpoint_matrices))
        fig.suptitle(f"Endpoint geometry vs W0, '{data.endpoint_matrices}' matrices (top-k subspaces, {k})",
                     fontsize=8.5)
        return save(fig, stem)
