"""Shared figure plumbing: paper-size style, colours, "no data" panels, PNG + PDF output."""
from __future__ import annotations

import contextlib
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: cluster nodes and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from geopd.report.data import ROLE_COLORS, ROLES, ReportData  # noqa: E402

WIDTH = 7.0  # inches: a two-column paper's text width
STYLE = {
    "font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8, "legend.fontsize": 6.5,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "lines.linewidth": 1.3, "lines.markersize": 3.5,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25,
    "savefig.dpi": 200, "savefig.bbox": "tight", "pdf.fonttype": 42, "ps.fonttype": 42,
}
NO_DATA_COLOR = "0.45"


@contextlib.contextmanager
def style():
    with plt.rc_context(STYLE):
        yield


def subplots(nrows: int = 1, ncols: int = 3, height: float = 2.3, width: float = WIDTH):
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height * nrows), squeeze=False)
    return fig, axes


def no_data(ax, what: str) -> None:
    """Mark a panel whose inputs are missing; never draws anything that looks like data."""
    ax.text(0.5, 0.5, textwrap.fill(f"no data for {what}", 28), ha="center", va="center",
            transform=ax.transAxes, color=NO_DATA_COLOR, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def save(fig, stem: str | Path) -> list[Path]:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    # Appended, not with_suffix: a stem may hold a dot of its own (run opd-mix-0.50).
    out = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")]
    for path in out:
        fig.savefig(path)
    plt.close(fig)
    return out


def role_color(role: str) -> str:
    return ROLE_COLORS.get(role, "0.3")


def palette(names: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def log_if_positive(ax, values) -> None:
    """Log y axis when every plotted value is positive (metrics spanning decades), else linear."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size and (v > 0).all() and v.max() / v.min() > 20:
        ax.set_yscale("log")


def roles_present(data: ReportData) -> dict[str, str]:
    return {role: run for role, run in data.role_runs().items() if run is not None}


def setting(data: ReportData, key: str, used=()) -> str:
    """'k = 512' from the grid's diagnostics settings, with the values the diagnosis actually
    used where a matrix's min(rows, cols) capped them ('k = 512, capped per matrix at 16-32')."""
    cfg = data.grid["diagnostics"].get(key)
    name = {"sim_k": "K"}.get(key, key)
    if cfg is None:
        return f"{name} = ?"
    v = sorted({int(x) for x in used if x is not None and np.isfinite(x)})
    if not v or v == [int(cfg)]:
        return f"{name} = {cfg}"
    span = f"{v[0]}" if len(v) == 1 else f"{v[0]}-{v[-1]}"
    return f"{name} = {cfg}, capped per matrix at {span}"


def used_per_matrix(data: ReportData, key: str, matrices: str) -> list[float]:
    """The k or r each analysed matrix of the `matrices` set used (k is recorded; r is
    min(r, rows, cols) as in the diagnosis)."""
    m = data.matrices
    if m.empty:
        return []
    rows = m[m["matrices"] == matrices]
    if key == "k" and "k" in rows.columns:
        return list(pd.to_numeric(rows["k"], errors="coerce"))
    cfg = data.grid["diagnostics"].get(key)
    if key == "r" and cfg is not None and {"rows", "cols"} <= set(rows.columns):
        side = np.minimum(pd.to_numeric(rows["rows"], errors="coerce"), pd.to_numeric(rows["cols"], errors="coerce"))
        return list(np.minimum(side, float(cfg)))
    return []


def role_label(data: ReportData, role: str, run: str | None = None) -> str:
    """'OPD (opd-8b-t32b)', flagged when the run did not move (ReportData.stillness)."""
    run = run or data.role_run(role)
    return f"{role} ({run}{', did not move' if run and data.stillness(run) else ''})"


def progress(steps, final: int | None) -> np.ndarray:
    steps = np.asarray(list(steps), dtype=float)
    return steps / final if final else steps


__all__ = ["ROLES", "style", "subplots", "no_data", "save", "role_color", "palette", "log_if_positive",
           "roles_present", "role_label", "progress", "setting", "used_per_matrix", "WIDTH"]
