"""Fig. 6/8: low-rank (the paper: rank-16) projected vs unconstrained training: accuracy per step of each projected
run and of the run it branched from, with the projection start marked (vertical line). One
panel per projected run and benchmark (Fig. 8: the further benchmarks)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from geopd.report.data import ReportData
from geopd.report.figures.common import no_data, save, style, subplots

UNCONSTRAINED, PROJECTED = "#555555", "#9467bd"


def panels(data: ReportData) -> list[tuple[str, str, str, int | None]]:
    """(projected run, reference run, benchmark, projection step) per panel."""
    out = []
    for run, spec in data.runs.items():
        proj = spec.get("projection")
        if not proj:
            continue
        ref = proj.get("run")
        for bench in data.benchmarks(run) or data.benchmarks(ref) or [None]:
            out.append((run, ref, bench, proj.get("step")))
    return out


def draw(data: ReportData, stem: str | Path) -> list[Path]:
    todo = panels(data)
    with style():
        n = max(1, len(todo))
        ncols = min(n, 3)
        nrows = int(np.ceil(n / ncols))
        fig, axes = subplots(nrows, ncols, height=2.4, width=min(7.0, 2.5 * ncols))
        flat = axes.ravel()
        if not todo:
            flat[0].set_title("low-rank projected training")
            no_data(flat[0], "projected runs (none in this grid)")
        for ax, (run, ref, bench, start) in zip(flat, todo):
            metric = data.primary_metric(bench) if bench else None
            ax.set_title(f"{run} vs {ref}" + (f"\n{bench}" if bench else ""))
            if bench is None:
                no_data(ax, f"a benchmark of {run}")
                continue
            full = data.accuracy_series(ref, bench)
            proj = data.accuracy_series(run, bench)
            if full.empty and proj.empty:
                no_data(ax, f"accuracy of {run} and {ref} on {bench}")
                continue
            if not full.empty:
                ax.plot(full.index, full.to_numpy(), marker="o", color=UNCONSTRAINED, label=f"unconstrained ({ref})")
            else:
                ax.text(0.5, 0.9, f"no data for {ref}", transform=ax.transAxes, ha="center", fontsize=6.5,
                        color="0.45")
            if not proj.empty:
                # the projected run starts from the reference run's checkpoint at the projection step
                x, y = list(proj.index), list(proj.to_numpy())
                if start is not None and start in full.index:
                    x, y = [start] + x, [float(full[start])] + y
                rank = (data.runs[run].get("projection") or {}).get("rank", "")
                ax.plot(x, y, marker="s", ls="--", color=PROJECTED, label=f"rank-{rank} projected ({run})")
            else:
                ax.text(0.5, 0.1, f"no data for {run}", transform=ax.transAxes, ha="center", fontsize=6.5,
                        color="0.45")
            if start is not None:
                ax.axvline(start, color="k", ls="--", lw=0.9, label=f"projection start (step {start})")
            ax.set_xlabel("step")
            ax.set_ylabel(metric or "accuracy")
            ax.legend(loc="best", fontsize=5.5)
        for ax in flat[len(todo) if todo else 1:]:
            ax.set_visible(False)
        return save(fig, stem)
