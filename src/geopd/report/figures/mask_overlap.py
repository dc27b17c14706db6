"""Fig. 3: where bf16-visible updates land: update density, principal- and low-magnitude-mask
overlap, per module type and overall, SFT vs OPD vs RLVR, with the random baseline alpha drawn
and the paper's overall figures marked. The overlaps are at the config's first mask fraction
(`diagnostics.alpha`; the paper's Fig. 3 reading, 0.3): the update_masks table has every one."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from geopd.report import paper
from geopd.diagnostics.columns import MODULES
from geopd.report.data import ROLES, ReportData
from geopd.report.figures.common import (no_data, role_color, role_label, roles_present, save, setting, style,
                                         subplots, used_per_matrix)

PANELS = (
    ("update_density", "(a) update density", paper.UPDATE_DENSITY_PCT, False),
    ("princ_overlap", "(b) principal-mask overlap", None, True),
    ("low_overlap", "(c) low-magnitude-mask overlap", paper.LOW_OVERLAP_PCT, True),
)


def draw(data: ReportData, stem: str | Path) -> list[Path]:
    with style():
        fig, axes = subplots(1, 3, height=2.5)
        roles = roles_present(data)
        scopes = ["all", *MODULES]
        values = {role: {s: (data.endpoint(run, s) or {}) for s in scopes} for role, run in roles.items()}
        have = {role for role, v in values.items() if v["all"]}
        scopes = ["all"] + [s for s in MODULES if any(values[r][s] for r in have)]
        alpha = data.mask_alpha
        for ax, (key, title, published, baseline) in zip(axes[0], PANELS):
            ax.set_title(title)
            if not have:
                no_data(ax, "SFT / OPD / RLVR endpoint diagnostics")
                continue
            width = 0.8 / len(ROLES)
            x = np.arange(len(scopes))
            for i, role in enumerate(ROLES):
                if role not in have:
                    continue
                column = key if key == "update_density" or alpha is None else data.overlap_key(key)
                y = [100 * float(values[role][s].get(column, np.nan)) if values[role][s] else np.nan for s in scopes]
                ax.bar(x + (i - 1) * width, y, width, color=role_color(role), label=role_label(data, role))
                if published and role in published:
                    ax.plot(x[0] + (i - 1) * width, published[role], marker="x", color="k", ms=5, ls="none",
                            label="paper (overall, 8B)")
            if baseline and alpha is not None:
                ax.axhline(100 * alpha, color="k", ls="--", lw=0.9, label=f"random baseline (alpha = {alpha:g})")
            ax.set_xticks(x, scopes, fontsize=6.5)
            ax.set_ylabel("% of updated entries" if baseline else "% of entries")
            ax.set_ylim(0, 100)
            missing = [r for r in ROLES if r not in have]
            if missing:
                ax.text(0.99, 0.98, f"no data for {', '.join(missing)}", transform=ax.transAxes, ha="right",
                        va="top", fontsize=6.5, color="0.45")
        if have:
            handles, labels = [], []
            for ax in axes[0]:
                for h, lab in zip(*ax.get_legend_handles_labels()):
                    if lab not in labels:
                        handles.append(h)
                        labels.append(lab)
            fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False,
                       bbox_to_anchor=(0.5, -0.04))
        r = setting(data, "r", used_per_matrix(data, "r", data.endpoint_matrices))
        fig.suptitle(f"Update masks at the endpoint, '{data.endpoint_matrices}' matrices\nM_princ = top-alpha of "
                     f"|rank-r W0| ({r}); M_low = bottom-alpha of |W0|; alpha = "
                     f"{alpha if alpha is not None else '?'}", fontsize=8.5)
        return save(fig, stem)
