"""The per-matrix table of `geopd diagnose`: the module types it covers and the metric columns
it writes. Torch-free: the report (geopd.report.aggregate) reads the table by these names.

The update-mask overlaps are computed at each mask fraction alpha the config lists
(`diagnostics.alpha`), so their columns carry it: `princ_overlap@0.3`, `low_overlap@0.5`,
with the counts behind them `n_princ_changed@0.3`, ... (`at_alpha`, `overlap_columns`).
"""
from __future__ import annotations

import re

MODULES = ("q", "k", "v", "o", "gate", "up", "down")
ATTENTION = frozenset({"q", "k", "v", "o"})
METRICS = ("bf16_sparsity", "update_density", "nss", "frobenius",
           "stable_rank", "hill_alpha", "spectral_norm", "spectral_frobenius_ratio", "effective_rank",
           "top1pct_norm_ratio", "angle_u_mean_deg", "angle_v_mean_deg", "angle_u_max_deg",
           "angle_v_max_deg")
# Overlap(M*, M_upd) per mask, and the column counting |M* & M_upd| behind it.
OVERLAPS = {"princ_overlap": "n_princ_changed", "low_overlap": "n_low_changed"}
_AT = re.compile(r"^(princ_overlap|low_overlap|n_princ_changed|n_low_changed)@(.+)$")


def at_alpha(column: str, alpha: float) -> str:
    """The column of `column` at mask fraction alpha: at_alpha("low_overlap", 0.3) = "low_overlap@0.3"."""
    return f"{column}@{float(alpha):g}"


def overlap_columns(columns) -> list[str]:
    """The per-alpha overlap and count columns among `columns`, in their order."""
    return [c for c in columns if _AT.match(str(c))]


def alphas_of(columns) -> list[float]:
    """The mask fractions a table has overlap columns for, in order of first appearance."""
    out: list[float] = []
    for c in columns:
        m = _AT.match(str(c))
        if m and float(m.group(2)) not in out:
            out.append(float(m.group(2)))
    return out
