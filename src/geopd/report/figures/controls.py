"""Fig. 7/9: controls on subspace locking: stable rank, Frobenius norm and Hill estimate of dW_t
(mean over the trajectory matrices) of the token-sparse, off-policy and alpha-mix runs, each
against the OPD baseline (black)."""
from __future__ import annotations

from pathlib import Path

from geopd.report.data import ReportData
from geopd.report.figures.common import no_data, palette, save, style, subplots

GROUPS = (("token-sparse", "token sparsification"), ("off-policy", "off-policy rollouts"),
          ("alpha-mix", "objective mix (alpha)"))
METRICS = (("stable_rank", "stable rank"), ("frobenius", "||dW||_F"), ("hill_alpha", "Hill alpha"))


def _label(data: ReportData, run: str) -> str:
    alpha = (data.runs[run].get("objective") or {}).get("alpha")
    return f"{run}" if alpha is None else f"alpha = {alpha:g}"


def draw(data: ReportData, stem: str | Path) -> list[Path]:
    base = data.role_run("OPD")
    with style():
        fig, axes = subplots(3, 3, height=2.0)
        for j, (family, title) in enumerate(GROUPS):
            runs = data.family(family)
            if family == "alpha-mix":
                runs = sorted(runs, key=lambda r: -float((data.runs[r].get("objective") or {}).get("alpha", 0)))
            colors = palette(runs)
            for i, (metric, ylabel) in enumerate(METRICS):
                ax = axes[i][j]
                if i == 0:
                    ax.set_title(f"({'abc'[j]}) {title}")
                curves = [(r, data.trajectory(r, metric)) for r in runs]
                curves = [(r, s) for r, s in curves if not s.empty]
                b = data.trajectory(base, metric) if base else None
                if not curves:
                    no_data(ax, f"{ylabel} of {family} runs")
                    continue
                if b is not None and not b.empty:
                    ax.plot(b.index, b.to_numpy(), color="k", lw=2.0, marker="o", label=f"OPD ({base})")
                else:
                    ax.text(0.02, 0.95, "no data for the OPD baseline", transform=ax.transAxes, fontsize=6.5,
                            color="0.45", va="top")
                for r, s in curves:
                    ax.plot(s.index, s.to_numpy(), marker=".", lw=1.0, color=colors[r], label=_label(data, r))
                missing = [r for r in runs if r not in dict(curves)]
                if missing:
                    ax.text(0.98, 0.02, f"no data for {', '.join(missing)}", transform=ax.transAxes,
                            fontsize=5.5, color="0.45", ha="right", va="bottom")
                ax.set_ylabel(ylabel)
                if i == 2:
                    ax.set_xlabel("step")
                if i == 0:
                    ax.legend(loc="best", fontsize=5.5)
        fig.suptitle(f"Controls vs OPD: dW_t, mean over '{data.trajectory_matrices}' matrices", fontsize=8.5)
        return save(fig, stem)
