"""Fig. 4: intrinsic update geometry over training: stable rank, Frobenius norm and Hill tail
estimate of the cumulative update dW_t (mean over the trajectory matrices), SFT vs OPD vs RLVR.
x is training progress (step / final step), since the three runs have different lengths."""
from __future__ import annotations

from pathlib import Path

from geopd.report.data import ROLES, ReportData
from geopd.report.figures.common import (no_data, progress, role_color, role_label, roles_present, save, style,
                                         subplots)

METRICS = (
    ("stable_rank", "stable rank", "(a) stable rank"),
    ("frobenius", "||dW||_F", "(b) Frobenius norm"),
    ("hill_alpha", "Hill alpha", "(c) Hill tail estimate"),
)


def draw(data: ReportData, stem: str | Path) -> list[Path]:
    with style():
        fig, axes = subplots(1, 3, height=2.4)
        roles = roles_present(data)
        for ax, (metric, ylabel, title) in zip(axes[0], METRICS):
            ax.set_title(title)
            drawn = []
            for role in ROLES:
                run = roles.get(role)
                s = data.trajectory(run, metric) if run else None
                if s is None or s.empty:
                    continue
                ax.plot(progress(s.index, data.final_step(run)), s.to_numpy(), marker="o",
                        color=role_color(role), label=role_label(data, role, run))
                drawn.append(role)
            if not drawn:
                no_data(ax, f"{ylabel} trajectories of SFT / OPD / RLVR")
                continue
            ax.set_xlabel("training progress (step / final step)")
            ax.set_ylabel(ylabel)
            ax.set_xlim(0, 1.05)
            missing = [r for r in ROLES if r not in drawn]
            ax.legend(loc="best", title=f"no data for {', '.join(missing)}" if missing else None)
        fig.suptitle(f"Cumulative update dW_t = W_t - W0, mean over '{data.trajectory_matrices}' matrices",
                     fontsize=8.5)
        return save(fig, stem)
