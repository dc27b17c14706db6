"""Fig. 5: subspace emergence: Sim_K of each checkpoint's top-K right singular subspace of dW_t
to the final one's (mean over matrices, band: min-max over matrices). (a) SFT, OPD, RLVR over
training progress; (b) every other run with a trajectory, against the OPD baseline, over steps."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from geopd.report.data import ROLES, ReportData
from geopd.report.figures.common import (no_data, palette, progress, role_color, role_label, roles_present, save,
                                         setting, style, subplots)


def draw(data: ReportData, stem: str | Path) -> list[Path]:
    k = data.sim_k or 16
    with style():
        fig, axes = subplots(1, 2, height=2.5, width=6.0)
        ax = axes[0][0]
        ax.set_title(f"(a) Sim_{k} to the final update")
        roles = roles_present(data)
        drawn = []
        for role in ROLES:
            run = roles.get(role)
            s = data.sim_series(run) if run else None
            if s is None or s.empty:
                continue
            x = progress(s.index, data.final_step(run))
            ax.plot(x, s["mean"], marker="o", color=role_color(role), label=role_label(data, role, run))
            ax.fill_between(x, s["min"], s["max"], color=role_color(role), alpha=0.12, lw=0)
            drawn.append(role)
        if drawn:
            ax.set_xlabel("training progress (step / final step)")
            ax.set_ylabel(f"Sim_{k}")
            ax.set_ylim(0, 1.05)
            ax.set_xlim(0, 1.05)
            missing = [r for r in ROLES if r not in drawn]
            ax.legend(loc="lower right", title=f"no data for {', '.join(missing)}" if missing else None)
        else:
            no_data(ax, f"Sim_{k} of SFT / OPD / RLVR")

        ax = axes[0][1]
        ax.set_title(f"(b) Sim_{k}: other runs vs OPD")
        others = [r for r in data.runs if r not in roles.values() and not data.sim_series(r).empty]
        base = roles.get("OPD")
        base_s = data.sim_series(base) if base else None
        if not others:
            no_data(ax, f"Sim_{k} of runs beyond SFT / OPD / RLVR")
        else:
            colors = palette(others)
            if base_s is not None and not base_s.empty:
                ax.plot(base_s.index, base_s["mean"], color="k", lw=2, marker="o", label=f"OPD ({base})")
            for r in others:
                s = data.sim_series(r)
                ax.plot(s.index, s["mean"], marker=".", lw=0.9, color=colors[r], label=r)
            ax.set_xlabel("step")
            ax.set_ylabel(f"Sim_{k}")
            ax.set_ylim(0, 1.05)
            ax.legend(loc="lower right", ncol=2, fontsize=5.5)
        used = pd.to_numeric(data.similarity["k"], errors="coerce") if "k" in data.similarity.columns else []
        fig.suptitle(f"Top-K right singular subspace of dW_t vs the final update's, "
                     f"'{data.trajectory_matrices}' matrices ({setting(data, 'sim_k', used)})", fontsize=8.5)
        return save(fig, stem)
