"""EffOPD vs vanilla OPD: (a) accuracy per evaluated step of each EffOPD run and its vanilla OPD
reference from the shared init, with the speed-up threshold (vanilla OPD's final accuracy,
tables.effopd_speedup) and the steps each needs to reach it; (b) the extrapolation searches from the training log:
validation score before (factor 0) and after each search, with the accepted factor."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from geopd.report.data import ReportData
from geopd.report.figures.common import no_data, save, style, subplots
from geopd.report.tables import effopd_reference, effopd_speedup

EFF, VAN = "#ff7f0e", "#d62728"


def _with_init(data: ReportData, run: str, bench: str):
    s = data.accuracy_series(run, bench)
    init = data.origin_accuracy(run, bench)
    start = data.runs[run].get("start_step", 0)
    if init is not None and not s.empty:
        return [start] + list(s.index), [init[0]] + list(s.to_numpy())
    return list(s.index), list(s.to_numpy())


def draw(data: ReportData, stem: str | Path) -> list[Path]:
    runs = data.family("effopd")
    speed = effopd_speedup(data)
    with style():
        fig, axes = subplots(1, 2, height=2.5, width=6.5)
        ax = axes[0][0]
        ax.set_title("(a) accuracy: EffOPD vs vanilla OPD")
        drawn, missing = False, []
        for run in runs:
            ref = effopd_reference(data, run)
            for bench in data.benchmarks(run)[:1]:
                metric = data.primary_metric(bench)
                for name, color, marker in ((ref, VAN, "o"), (run, EFF, "s")):
                    if name is None:
                        continue
                    x, y = _with_init(data, name, bench)
                    if x:
                        ax.plot(x, y, marker=marker, color=color, label=f"{'EffOPD' if name == run else 'OPD'} ({name})")
                        drawn = True
                    else:
                        missing.append(name)
                row = speed[(speed["run"] == run) & (speed["benchmark"] == bench)]
                if drawn and len(row) and np.isfinite(row["threshold"].iloc[0]):
                    r = row.iloc[0]
                    ax.axhline(r["threshold"], color="0.3", ls=":", lw=0.9, label="threshold (OPD's final accuracy)")
                    for key, color in (("vanilla_steps", VAN), ("effopd_steps", EFF)):
                        if not pd.isna(r[key]):
                            ax.axvline(int(r[key]), color=color, ls="--", lw=0.8)
                ax.set_ylabel(metric or "accuracy")
        if drawn:
            ax.set_xlabel("step")
            ax.legend(loc="lower right", fontsize=5.5)
            if missing:
                ax.text(0.02, 0.98, f"no data for {', '.join(missing)}", transform=ax.transAxes, va="top",
                        fontsize=6.5, color="0.45")
        else:
            no_data(ax, "accuracy of EffOPD and vanilla OPD runs")

        ax = axes[0][1]
        ax.set_title("(b) extrapolation searches (validation score)")
        logs = [(r, data.searches.get(r) or []) for r in runs]
        logs = [(r, s) for r, s in logs if s]
        if not logs:
            no_data(ax, "EffOPD extrapolation logs")
        for run, searches in logs:
            steps = [s["step"] for s in searches]
            before = [s["scores"][0] if s.get("scores") else np.nan for s in searches]
            after = [s.get("accepted_score", np.nan) for s in searches]
            ax.plot(steps, before, marker="o", color="0.5", lw=0.9, label=f"{run}: before (factor 0)")
            ax.plot(steps, after, marker="s", color=EFF, lw=0.9, label=f"{run}: accepted")
            for s, a in zip(searches, after):
                ax.annotate(f"x{s.get('accepted_factor', 0):g}", (s["step"], a), textcoords="offset points",
                            xytext=(0, 4), ha="center", fontsize=5.5)
        if logs:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("search step")
            ax.set_ylabel("validation accuracy")
            ax.legend(loc="lower right", fontsize=5.5)
        return save(fig, stem)
