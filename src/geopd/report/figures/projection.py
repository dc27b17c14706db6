"""Fig. 6 and Fig. 8: low-rank (the paper: rank-16) projected vs unconstrained training.

Fig. 6 (`draw`): accuracy per step of each projected run and of the run it branched from, on
the projected run's first benchmark (the paper: AIME 2024), one panel per projected run.
Fig. 8 (`draw_benchmarks`, Appendix F): the same on every benchmark both runs are evaluated on
(the paper: five reasoning benchmarks), one row per projected run and one column per benchmark.
In both, the dashed vertical line is the projection start and the green diamond the shared
anchor checkpoint (the unconstrained run's accuracy at the projection step, where both start)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from geopd.report.data import ReportData
from geopd.report.figures.common import no_data, save, style, subplots

UNCONSTRAINED, PROJECTED, ANCHOR = "#555555", "#9467bd", "#2ca02c"


def projected_runs(data: ReportData) -> list[tuple[str, str, int | None]]:
    """(projected run, reference run, projection step) of every projected run."""
    out = []
    for run, spec in data.runs.items():
        proj = spec.get("projection")
        if proj:
            out.append((run, proj.get("run"), proj.get("step")))
    return out


def shared_benchmarks(data: ReportData, run: str, ref: str) -> list[str]:
    """The benchmarks both the projected run and its reference are evaluated on, in the
    projected run's order (Fig. 8's columns)."""
    return [b for b in data.benchmarks(run) if b in data.benchmarks(ref)]


def panel(ax, data: ReportData, run: str, ref: str, bench: str | None, start: int | None, title: str) -> None:
    ax.set_title(title)
    if bench is None:
        no_data(ax, f"a benchmark of {run}")
        return
    metric = data.primary_metric(bench)
    full = data.accuracy_series(ref, bench)
    proj = data.accuracy_series(run, bench)
    if full.empty and proj.empty:
        no_data(ax, f"accuracy of {run} and {ref} on {bench}")
        return
    if not full.empty:
        ax.plot(full.index, full.to_numpy(), marker="o", color=UNCONSTRAINED, label=f"unconstrained ({ref})")
    else:
        ax.text(0.5, 0.9, f"no data for {ref}", transform=ax.transAxes, ha="center", fontsize=6.5, color="0.45")
    anchor = start is not None and start in full.index
    if not proj.empty:
        # the projected run starts from the reference run's checkpoint at the projection step
        x, y = list(proj.index), list(proj.to_numpy())
        if anchor:
            x, y = [start] + x, [float(full[start])] + y
        rank = (data.runs[run].get("projection") or {}).get("rank", "")
        ax.plot(x, y, marker="s", ls="--", color=PROJECTED, label=f"rank-{rank} projected ({run})")
    else:
        ax.text(0.5, 0.1, f"no data for {run}", transform=ax.transAxes, ha="center", fontsize=6.5, color="0.45")
    if anchor:
        ax.plot([start], [float(full[start])], marker="D", ms=6, color=ANCHOR, ls="none",
                label=f"shared anchor ({ref}@{start})", zorder=5)
    if start is not None:
        ax.axvline(start, color="k", ls="--", lw=0.9, label=f"projection start (step {start})")
    ax.set_xlabel("step")
    ax.set_ylabel(metric or "accuracy")
    ax.legend(loc="best", fontsize=5.5)


def draw(data: ReportData, stem: str | Path) -> list[Path]:
    todo = projected_runs(data)
    with style():
        n = max(1, len(todo))
        ncols = min(n, 3)
        nrows = int(np.ceil(n / ncols))
        fig, axes = subplots(nrows, ncols, height=2.4, width=min(7.0, 2.5 * ncols))
        flat = axes.ravel()
        if not todo:
            flat[0].set_title("low-rank projected training")
            no_data(flat[0], "projected runs (none in this grid)")
        for ax, (run, ref, start) in zip(flat, todo):
            bench = (data.benchmarks(run) or data.benchmarks(ref) or [None])[0]
            panel(ax, data, run, ref, bench, start, f"{run} vs {ref}" + (f"\n{bench}" if bench else ""))
        for ax in flat[len(todo) if todo else 1:]:
            ax.set_visible(False)
        return save(fig, stem)


def draw_benchmarks(data: ReportData, stem: str | Path) -> list[Path]:
    todo = [(run, ref, start, shared_benchmarks(data, run, ref)) for run, ref, start in projected_runs(data)]
    with style():
        nrows = max(1, len(todo))
        ncols = max([1] + [len(b) for *_, b in todo])
        fig, axes = subplots(nrows, ncols, height=2.2, width=min(14.0, 2.4 * ncols))
        if not todo:
            axes[0][0].set_title("low-rank projected training, every benchmark")
            no_data(axes[0][0], "projected runs (none in this grid)")
        for i, (run, ref, start, benches) in enumerate(todo):
            if not benches:
                panel(axes[i][0], data, run, ref, None, start, f"{run} vs {ref}")
            for j, bench in enumerate(benches):
                panel(axes[i][j], data, run, ref, bench, start, f"{run} vs {ref}\n{bench}")
        for i, row in enumerate(axes):
            used = (len(todo[i][3]) or 1) if i < len(todo) else (0 if todo else 1)
            for ax in row[used:]:
                ax.set_visible(False)
        return save(fig, stem)
