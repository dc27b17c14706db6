"""The per-matrix table of `geopd diagnose`: the module types it covers and the metric columns
it writes. Torch-free: the report (geopd.report.aggregate) reads the table by these names."""
from __future__ import annotations

MODULES = ("q", "k", "v", "o", "gate", "up", "down")
ATTENTION = frozenset({"q", "k", "v", "o"})
METRICS = ("bf16_sparsity", "update_density", "nss", "princ_overlap", "low_overlap", "frobenius",
           "stable_rank", "hill_alpha", "spectral_norm", "spectral_frobenius_ratio", "effective_rank",
           "top1pct_norm_ratio", "angle_u_mean_deg", "angle_v_mean_deg", "angle_u_max_deg",
           "angle_v_max_deg")
