"""The claims check (`geopd report claims`): each qualitative claim of the geometry paper
(SPEC.md, last paragraph, plus the orderings s3.2 states beside them, and what s4.1 states of
Fig. 4's Frobenius and Hill panels) and EffOPD's headline, the numbers from OUR results that
decide it, and whether this grid reproduces it. README "Reading the paper" gives the reading
behind each test where the paper leaves one open.

Every operational test and tolerance is fixed here, before any result is seen, and printed in
the table's `test` column. Nothing is tuned: a claim whose numbers go the other way is "no".
"insufficient data" when a number the test needs is missing, or when the evidence it rests on
is void (geopd.report.evidence): a missing input file, a run that did not move (no optimizer
update, zero gradient, unchanged weights), an alpha-mix run whose reward never varied, a
distilled run whose teacher was no stronger than its anchor, or an undefined accuracy. Each claim lists the runs and evidence it uses; the `reason` column names
the file or the run and why.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from geopd.report import evidence, gridfile, paper
from geopd.report.data import ROLES, ReportData
from geopd.report.evidence import Use
from geopd.report.markdown import Table, write
from geopd.report.tables import CI_LEVEL, effopd_speedup

YES, NO, INSUFFICIENT = "yes", "no", "insufficient data"

# Operational thresholds (stated in the table).
BAND_TOL = 0.25        # OPD stable-rank band: (max - min) / mean over its checkpoints
CHANGE_TOL = 0.10      # SFT grows / RLVR shrinks: (last - first) / first beyond +-10%
SIM_HIGH = 0.5         # "high" Sim_16 at OPD's first checkpoint (random K-dim subspaces: K/n)
TRACK_TOL = 0.15       # a control tracks OPD: max relative stable-rank deviation over shared steps
LOW_ALPHA = 0.05       # alpha-mix runs with alpha <= this are "low alpha"
HIGH_ALPHA = 0.5       # ... with alpha > this are "OPD-dominant" (s5.2: the OPD term outweighs RLVR's;
                       # alpha = 0.5, an equal mix, is neither, README "Reading the paper")
DECADE_TOL = 0.5       # "at the 1e-3 level": |log10(NSS) + 3| < 0.5 (the nearest decade)
FRO_RATIO = 1.0        # s4.1: OPD's ||dW||_F above RLVR's (ratio > this) ...
SRANK_FACTOR = 1.5     # ... at comparable stable rank: the larger within this factor of the smaller
SE_MULT = 2.0          # accuracy tolerance: this many standard errors of the difference
VARIANT_FAMILIES = ("teacher-scale", "student-scale", "code", "moe-teacher", "seed")


@dataclass
class Claim:
    id: str
    claim: str
    section: str
    test: str
    numbers: str
    paper: str
    reproduced: str
    reason: str = ""                                   # why "insufficient data"
    uses: list[Use] = field(default_factory=list)      # the evidence the verdict rests on

    @property
    def runs(self) -> str:
        return ", ".join(dict.fromkeys(u.run for u in self.uses))


COLUMNS = ["id", "claim", "section", "test", "numbers", "paper", "reproduced", "reason", "runs"]


def _uses(data: ReportData, runs, what: str) -> list[Use]:
    return [Use(r, what) for r in runs if r is not None]


def _role_uses(data: ReportData, what: str = "endpoint") -> list[Use]:
    return _uses(data, (data.role_run(role) for role in ROLES), what)


def _f(x: float, digits: int = 4) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.3e}"
    return f"{x:.{digits}g}"


def _endpoint_values(data: ReportData, key: str, scale: float = 1.0) -> dict[str, tuple[str | None, float]]:
    out = {}
    for role in ROLES:
        run = data.role_run(role)
        row = data.endpoint(run) if run else None
        v = row.get(key) if row else None
        out[role] = (run, float(v) * scale if v is not None and not pd.isna(v) else math.nan)
    return out


def _describe(values: dict[str, tuple[str | None, float]], unit: str = "") -> str:
    return "; ".join(f"{role} ({run or 'no run'}): {_f(v)}{unit if math.isfinite(v) else ''}"
                     for role, (run, v) in values.items())


def _ordering(values: dict[str, tuple[str | None, float]], increasing: bool) -> str:
    v = [values[r][1] for r in ROLES]
    if not all(math.isfinite(x) for x in v):
        return INSUFFICIENT
    ok = v[0] < v[1] < v[2] if increasing else v[0] > v[1] > v[2]
    return YES if ok else NO


def _order_claim(cid, claim, section, data, key, increasing, paper_text, scale=1.0, unit="",
                 what="") -> Claim:
    values = _endpoint_values(data, key, scale)
    sign = "<" if increasing else ">"
    test = (f"{what or key} at each run's final checkpoint (endpoint matrix set): "
            f"SFT {sign} OPD {sign} RLVR, strictly")
    return Claim(cid, claim, section, test, _describe(values, unit), paper_text, _ordering(values, increasing),
                 uses=_role_uses(data))


# ---- endpoint geometry ---------------------------------------------------------------------------

def sparsity_order(data: ReportData) -> Claim:
    p = paper.SPARSITY_PCT
    return _order_claim("C1", "bf16 update sparsity: SFT < OPD < RLVR", "s3.2, Table 1", data,
                        "bf16_sparsity", True, f"{p['sft-8b']} < {p['opd-8b-t32b']} < {p['rlvr-8b']} (%)",
                        100.0, "%", "parameter-count-weighted bf16 sparsity")


def variants_between(data: ReportData) -> Claim:
    values = _endpoint_values(data, "bf16_sparsity", 100.0)
    lo, hi = values["SFT"][1], values["RLVR"][1]
    variants = [r for fam in VARIANT_FAMILIES for r in data.family(fam)]
    got = {r: (data.endpoint(r) or {}).get("bf16_sparsity") for r in variants}
    got = {r: float(v) * 100 if v is not None and not pd.isna(v) else math.nan for r, v in got.items()}
    numbers = f"SFT {_f(lo)}%, RLVR {_f(hi)}%; " + "; ".join(f"{r}: {_f(v)}%" for r, v in got.items())
    test = ("every OPD variant (teacher scale, student scale, code, MoE teacher, seeds) has endpoint "
            "sparsity strictly between the SFT and RLVR runs'")
    if not variants:
        result = INSUFFICIENT
        numbers += "no OPD variant runs in this grid"
    elif not (math.isfinite(lo) and math.isfinite(hi)):
        result = INSUFFICIENT
    else:
        present = [v for v in got.values() if math.isfinite(v)]
        if any(not lo < v < hi for v in present):
            result = NO
        else:
            result = YES if len(present) == len(got) else INSUFFICIENT
    return Claim("C2", "OPD variants stay between SFT and RLVR in sparsity", "s3.2, Table 1", test, numbers,
                 "OPD variants 48.6-57.1% (SFT 8.1, RLVR 77.2)", result,
                 "" if variants else "no OPD variant runs in this grid",
                 _uses(data, [data.role_run("SFT"), data.role_run("RLVR"), *variants], "endpoint"))


def _representative(data: ReportData, column: str) -> dict[str, tuple[str | None, float]]:
    """Per role: (run, mean of `column` over its representative layer's endpoint matrices)."""
    out = {}
    for role in ROLES:
        run = data.role_run(role)
        out[role] = (run, data.layer_mean(run, data.representative_layer(run), column) if run else math.nan)
    return out


def _layers_text(data: ReportData) -> str:
    layers = {data.representative_layer(r) for r in data.role_runs().values() if r}
    layers.discard(None)
    key = ("diagnostics.representative_layer" if data.grid["diagnostics"].get("representative_layer") is not None
           else "the middle layer, L // 2")
    return f"layer {', '.join(map(str, sorted(layers))) or 'n/a'} ({key})"


def _both(a: str, b: str) -> str:
    """Two readings of one claim: yes when both hold, no when either fails."""
    if NO in (a, b):
        return NO
    return YES if a == b == YES else INSUFFICIENT


def rotation_order(data: ReportData) -> Claim:
    mean = _endpoint_values(data, "angle_mean_deg")
    layer = _representative(data, "angle_mean_deg")
    numbers = (f"representative {_layers_text(data)}: {_describe(layer, ' deg')}; "
               f"all-matrix mean: {_describe(mean, ' deg')}")
    test = ("mean principal angle (top-k U and V subspaces of W0 vs W+, mean per matrix) at each run's final "
            "checkpoint, SFT > OPD > RLVR strictly, both over the representative layer's matrices (the paper's "
            "figures are for one layer) and over all endpoint matrices")
    return Claim("C3", "principal-subspace rotation: SFT > OPD > RLVR", "s3.2, Fig. 2", test, numbers,
                 f"representative layer: SFT {paper.ANGLES_DEG['SFT']} deg, OPD {paper.ANGLES_DEG['OPD']}, "
                 f"RLVR {paper.ANGLES_DEG['RLVR']}",
                 _both(_ordering(layer, increasing=False), _ordering(mean, increasing=False)),
                 uses=_role_uses(data))


def nss_order(data: ReportData) -> Claim:
    return _order_claim("C4", "normalized spectral shift: SFT > OPD > RLVR", "s3.2, Fig. 2", data, "nss", False,
                        "~1e-3 > ~1e-4 > ~1e-5", what="NSS, unweighted mean over matrices")


def _decades(values: dict[str, tuple[str | None, float]]) -> tuple[str, str]:
    """(verdict, text): each role's NSS within DECADE_TOL of its level in log10 (9e-4 and 1e-3
    are both at the 1e-3 level; flooring would split them)."""
    logs = {r: math.log10(v) if math.isfinite(v) and v > 0 else None for r, (_, v) in values.items()}
    text = ", ".join(f"{r} log10 {logs[r]:.2f}" if logs[r] is not None else f"{r} n/a" for r in ROLES)
    if any(x is None for x in logs.values()):
        return INSUFFICIENT, text
    ok = all(abs(logs[r] - paper.NSS_DECADE[r]) < DECADE_TOL for r in ROLES)
    return (YES if ok else NO), text


def nss_levels(data: ReportData) -> Claim:
    mean = _endpoint_values(data, "nss")
    layer = _representative(data, "nss")
    v_layer, t_layer = _decades(layer)
    v_mean, t_mean = _decades(mean)
    numbers = (f"representative {_layers_text(data)}: {_describe(layer)} ({t_layer}); "
               f"all-matrix mean: {_describe(mean)} ({t_mean})")
    return Claim("C5", "NSS levels ~1e-3 (SFT), ~1e-4 (OPD), ~1e-5 (RLVR)", "s3.2",
                 f"|log10(NSS) - level| < {DECADE_TOL} for levels -3, -4, -5 (SFT, OPD, RLVR), over the "
                 "representative layer's matrices and over all endpoint matrices (absolute levels depend on "
                 "model scale and training length; the ordering is C4)", numbers, "1e-3 / 1e-4 / 1e-5",
                 _both(v_layer, v_mean), uses=_role_uses(data))


def density_order(data: ReportData) -> Claim:
    p = paper.UPDATE_DENSITY_PCT
    return _order_claim("C6", "update density: SFT > OPD > RLVR", "s3.2, Fig. 3", data, "update_density", False,
                        f"{p['SFT']} > {p['OPD']} > {p['RLVR']} (%)", 100.0, "%",
                        "update density per matrix (|M_upd| / n), then the unweighted mean over matrices "
                        "(App. C.3; not 1 - C1's weighted sparsity)")


def _alpha_text(data: ReportData) -> str:
    a = data.mask_alpha
    return f"alpha = {a:g} (the first of diagnostics.alpha)" if a is not None else "alpha n/a"


def low_overlap_order(data: ReportData) -> Claim:
    p = paper.LOW_OVERLAP_PCT
    key = data.overlap_key("low_overlap") if data.mask_alpha is not None else "low_overlap"
    return _order_claim("C7", "low-magnitude mask overlap: SFT < OPD < RLVR", "s3.2, Fig. 3", data, key, True,
                        f"{p['SFT']} < {p['OPD']} < {p['RLVR']} (%), at the 30% random baseline", 100.0, "%",
                        f"Overlap(M_low, M_upd) at {_alpha_text(data)}, mean over matrices")


def principal_overlap(data: ReportData) -> Claim:
    alpha = data.mask_alpha
    key = data.overlap_key("princ_overlap") if alpha is not None else "princ_overlap"
    values = _endpoint_values(data, key, 100.0)
    order = _ordering(values, increasing=False)
    if order == INSUFFICIENT or alpha is None:
        result = INSUFFICIENT
    else:
        below = values["OPD"][1] < alpha * 100 and values["RLVR"][1] < alpha * 100
        result = YES if order == YES and below else NO
    numbers = _describe(values, "%") + f"; random baseline alpha = {_f(alpha * 100) if alpha is not None else 'n/a'}%"
    return Claim("C8", "principal-mask overlap: SFT > OPD > RLVR, OPD and RLVR below random", "s3.2, Fig. 3",
                 f"Overlap(M_princ, M_upd) at {_alpha_text(data)}, mean over matrices: SFT > OPD > RLVR "
                 "strictly, and OPD, RLVR < alpha",
                 numbers, "decreasing; OPD and RLVR below the 30% random baseline", result, uses=_role_uses(data))


# ---- trajectories ----------------------------------------------------------------------------------

def _rel_change(s: pd.Series) -> float:
    return (s.iloc[-1] - s.iloc[0]) / s.iloc[0] if len(s) >= 2 and s.iloc[0] != 0 else math.nan


def _series_text(run: str | None, s: pd.Series) -> str:
    if run is None:
        return "no run"
    if s.empty:
        return f"{run}: no trajectory"
    return f"{run}: " + ", ".join(f"{int(k)}:{_f(v, 3)}" for k, v in s.items())


def stable_rank_band(data: ReportData) -> Claim:
    run = data.role_run("OPD")
    s = data.trajectory(run, "stable_rank") if run else pd.Series(dtype=float)
    if len(s) >= 2:
        band = (s.max() - s.min()) / s.mean()
        result = YES if band <= BAND_TOL else NO
        numbers = f"{_series_text(run, s)}; relative range {_f(band, 3)}"
    else:
        result, numbers = INSUFFICIENT, _series_text(run, s) + " (needs >= 2 checkpoints)"
    return Claim("C9", "OPD stable rank stays in a narrow band", "s4.1, Fig. 4a",
                 f"mean stable rank of dW_t over the trajectory matrices, per checkpoint: "
                 f"(max - min) / mean <= {BAND_TOL}", numbers, "narrow band over training", result,
                 uses=_uses(data, [run], "trajectory"))


def _trend_claim(cid, role, grows: bool) -> Callable[[ReportData], Claim]:
    def check(data: ReportData) -> Claim:
        run = data.role_run(role)
        s = data.trajectory(run, "stable_rank") if run else pd.Series(dtype=float)
        change = _rel_change(s)
        if not math.isfinite(change):
            result = INSUFFICIENT
        else:
            result = YES if (change > CHANGE_TOL if grows else change < -CHANGE_TOL) else NO
        word = "grows" if grows else "shrinks"
        test = (f"(last - first) / first of the mean stable rank over the trajectory matrices "
                f"{'>' if grows else '<'} {'+' if grows else '-'}{CHANGE_TOL}")
        return Claim(cid, f"{role} stable rank {word} over training", "s4.1, Fig. 4a", test,
                     f"{_series_text(run, s)}; relative change {_f(change, 3)}",
                     "SFT expands, RLVR contracts", result, uses=_uses(data, [run], "trajectory"))
    return check


def _progress(data: ReportData, run: str, step: int) -> float:
    start, final = data.runs[run].get("start_step", 0), data.final_step(run)
    return (step - start) / (final - start) if final and final > start else math.nan


def _sim_curve(data: ReportData, run: str) -> list[tuple[float, float]]:
    """(fraction of training, mean Sim_K to the final update) per checkpoint, ascending; the
    final checkpoint is 1 by definition (added when the file lacks it)."""
    s = data.sim_series(run)
    pts = [(_progress(data, run, int(k)), float(v)) for k, v in s["mean"].items() if math.isfinite(v)]
    if pts and data.final_step(run) not in s.index:
        pts.append((1.0, 1.0))
    return sorted(p for p in pts if math.isfinite(p[0]))


def _sim_at(curve: list[tuple[float, float]], f: float) -> float:
    """Sim at fraction f, linear between checkpoints (NaN before the first one)."""
    if not curve or not math.isfinite(f) or f < curve[0][0] - 1e-12:
        return math.nan
    return float(np.interp(f, [x for x, _ in curve], [y for _, y in curve]))


def _reach(curve: list[tuple[float, float]], level: float) -> float:
    """The fraction of training at the first checkpoint whose Sim is at least `level`."""
    return next((x for x, y in curve if y >= level), math.nan)


def sim_first_checkpoint(data: ReportData) -> Claim:
    curves = {role: (run, _sim_curve(data, run) if run else []) for role, run in data.role_runs().items()}
    firsts = [c[0][0] for _, c in curves.values() if c]
    f0 = max(firsts) if len(firsts) == len(ROLES) else math.nan   # the latest first checkpoint
    at = {r: _sim_at(c, f0) for r, (_, c) in curves.items()}
    reach = {r: _reach(c, SIM_HIGH) for r, (_, c) in curves.items()}
    numbers = (f"at {_f(100 * f0, 3)}% of training: "
               + "; ".join(f"{r} ({run or 'no run'}) {_f(at[r], 3)}" for r, (run, _) in curves.items())
               + f"; first checkpoint with Sim >= {SIM_HIGH}: "
               + ", ".join(f"{r} at {_f(100 * reach[r], 3)}%" for r in ROLES))
    if not all(math.isfinite(x) for x in [*at.values(), *reach.values()]):
        result = INSUFFICIENT
    else:
        early = at["OPD"] >= SIM_HIGH and at["OPD"] > at["SFT"] and at["OPD"] > at["RLVR"]
        gradual = reach["SFT"] > reach["OPD"] and reach["RLVR"] > reach["OPD"]
        result = YES if early and gradual else NO
    k = data.sim_k or 16
    return Claim("C12", f"OPD reaches high Sim_{k} from the first checkpoint; SFT and RLVR converge more "
                 "gradually", "s4.2, Fig. 5",
                 f"mean Sim_{k} to the final update at an equal fraction of training, the latest of the three "
                 f"runs' first checkpoints (linear between checkpoints): OPD >= {SIM_HIGH}, OPD > SFT and OPD > "
                 f"RLVR; and SFT and RLVR first reach Sim >= {SIM_HIGH} at a later fraction of training than OPD",
                 numbers, "OPD aligned from the first checkpoint; SFT and RLVR converge gradually", result,
                 uses=_role_uses(data, "similarity"))


# ---- rank-16 projection ------------------------------------------------------------------------------

def _se(p: float, n: int | None) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else math.nan


@dataclass
class _Compared:
    text: str
    pa: float = math.nan     # projected run
    pb: float = math.nan     # its unconstrained reference run
    tol: float = math.nan
    reason: str = ""
    uses: list[Use] = field(default_factory=list)


def _projection(data: ReportData, method: str) -> _Compared:
    """Accuracy of the projected run whose reference run has `method` vs that reference, at
    the last checkpoint both have in the grid (an evaluation missing there is missing)."""
    for run, spec in data.runs.items():
        proj = spec.get("projection")
        if not proj or data.runs.get(proj.get("run"), {}).get("method") != method:
            continue
        ref = proj["run"]
        benches = data.benchmarks(ref)
        if not benches:
            return _Compared(f"{run}: its reference run {ref} has no benchmark", reason=f"{ref} has no benchmark")
        bench = benches[0]
        common = sorted(set(data.eval_steps(run, bench)) & set(data.eval_steps(ref, bench)))
        if not common:
            return _Compared(f"{run} vs {ref}: no common checkpoint step in the grid",
                             reason=f"{run} and {ref} share no checkpoint step")
        step = common[-1]
        uses = [Use(run, "accuracy", bench, (step,)), Use(ref, "accuracy", bench, (step,))]
        a, b = data.accuracy_series(run, bench), data.accuracy_series(ref, bench)
        pa, pb = (float(a[step]) if step in a.index else math.nan), (float(b[step]) if step in b.index else math.nan)
        na, nb = data.accuracy_n(run, bench, step), data.accuracy_n(ref, bench, step)
        tol = SE_MULT * math.sqrt(_se(pa, na) ** 2 + _se(pb, nb) ** 2)
        text = (f"{run} (rank {proj.get('rank')}, projected from step {proj.get('step')}) vs {ref} on {bench} "
                f"({data.primary_metric(bench)}) at step {step}: {_f(pa, 3)} vs {_f(pb, 3)} "
                f"(diff {_f(pa - pb, 3)}, tolerance {_f(tol, 3)}; n = {na}, {nb})")
        # At 0 the unconstrained run has nothing to keep or lose, and SE = sqrt(p(1-p)/n) = 0
        # would let "projected >= unconstrained - tol" pass with two zeros.
        reason = f"{ref} has accuracy 0 at step {step}: nothing to keep or lose" if pb == 0 else ""
        return _Compared(text, pa, pb, tol, reason, uses)
    return _Compared(f"no projected run whose reference run is {method.upper()}",
                     reason=f"no projected run whose reference run is {method.upper()} in this grid")


def _projection_claim(cid: str, claim: str, c: _Compared, holds: bool, test: str, paper_text: str) -> Claim:
    if c.reason or not all(map(math.isfinite, (c.pa, c.pb, c.tol))):
        result = INSUFFICIENT
    else:
        result = YES if holds else NO
    return Claim(cid, claim, "s4.2, Fig. 6", test, c.text, paper_text, result, c.reason, c.uses)


def projection_keeps_opd(data: ReportData) -> Claim:
    c = _projection(data, "opd")
    return _projection_claim("C13", "rank-16 projection keeps OPD accuracy", c, c.pa >= c.pb - c.tol,
                             f"projected accuracy >= unconstrained - tol at the last common checkpoint; tol = "
                             f"{SE_MULT:g} x sqrt(SE1^2 + SE2^2), SE = sqrt(p(1-p)/n problems); unconstrained "
                             f"accuracy 0 decides nothing", "OPD essentially unchanged under rank-16")


def projection_hurts_sft(data: ReportData) -> Claim:
    c = _projection(data, "sft")
    return _projection_claim("C14", "rank-16 projection hurts SFT", c, c.pa < c.pb - c.tol,
                             "projected accuracy < unconstrained - tol at the last common checkpoint (tol as in C13)",
                             "SFT degraded over the matched window")


# ---- controls ----------------------------------------------------------------------------------------

def max_rel_deviation(s: pd.Series, ref: pd.Series) -> tuple[float, list[int]]:
    common = sorted(set(s.index) & set(ref.index))
    if not common:
        return math.nan, []
    dev = max(abs(s[k] - ref[k]) / abs(ref[k]) if ref[k] != 0 else math.inf for k in common)
    return float(dev), common


def _alpha(spec: dict) -> float | None:
    a = (spec.get("objective") or {}).get("alpha")
    return float(a) if a is not None else None


def _control_claim(cid, claim, runs, data: ReportData, should_track: bool, section, paper_text,
                   selection: str) -> Claim:
    base_run = data.role_run("OPD")
    base = data.trajectory(base_run, "stable_rank") if base_run else pd.Series(dtype=float)
    parts, verdicts = [], []
    for run in runs:
        dev, common = max_rel_deviation(data.trajectory(run, "stable_rank"), base)
        if not math.isfinite(dev) and not common:
            parts.append(f"{run}: no shared trajectory steps")
            verdicts.append(None)
            continue
        parts.append(f"{run}: max deviation {_f(dev, 3)} over steps {common}")
        verdicts.append(dev <= TRACK_TOL if should_track else dev > TRACK_TOL)
    if base.empty or not runs:
        result = INSUFFICIENT
        parts.insert(0, f"OPD baseline {base_run or 'missing'}: {'no trajectory' if base.empty else 'ok'}"
                     + ("" if runs else f"; no {selection} in this grid"))
    elif any(v is False for v in verdicts):
        result = NO
    elif any(v is None for v in verdicts):
        result = INSUFFICIENT
    else:
        result = YES
    rel = "<=" if should_track else ">"
    test = (f"{selection}: max over shared checkpoints of |srank_run - srank_OPD| / srank_OPD "
            f"{rel} {TRACK_TOL} for every such run (mean stable rank over the trajectory matrices)")
    return Claim(cid, claim, section, test, "; ".join(parts), paper_text, result,
                 "" if runs else f"no {selection} in this grid", _uses(data, [base_run, *runs], "trajectory"))


def token_sparse_tracks(data: ReportData) -> Claim:
    return _control_claim("C15", "token sparsification keeps the OPD stable-rank trajectory",
                          data.family("token-sparse"), data, True, "s5.1, Fig. 7a",
                          "all sparsified variants closely track OPD", "token-sparse runs")


def off_policy_tracks(data: ReportData) -> Claim:
    return _control_claim("C16", "off-policy rollouts keep the OPD stable-rank trajectory",
                          data.family("off-policy"), data, True, "s5.1, Fig. 7b",
                          "stable rank matched to on-policy OPD", "off-policy runs")


def high_alpha_tracks(data: ReportData) -> Claim:
    runs = [r for r in data.family("alpha-mix") if (_alpha(data.runs[r]) or 0) > HIGH_ALPHA]
    return _control_claim("C17", "OPD-dominant objective mixes keep the OPD stable-rank trajectory", runs, data,
                          True, "s5.2, Fig. 7c", "OPD-dominant mixtures retain the OPD-like trajectory",
                          f"alpha-mix runs with alpha > {HIGH_ALPHA} (OPD-dominant)")


def low_alpha_changes(data: ReportData) -> Claim:
    runs = [r for r in data.family("alpha-mix") if _alpha(data.runs[r]) is not None
            and _alpha(data.runs[r]) <= LOW_ALPHA]
    return _control_claim("C18", "low alpha (weak OPD term) changes the stable-rank trajectory", runs, data,
                          False, "s5.2, Fig. 7c", "weak OPD component leaves the baseline trajectory",
                          f"alpha-mix runs with alpha <= {LOW_ALPHA}")


# ---- claims the paper makes and the report otherwise only plots -----------------------------------

def _final(data: ReportData, run: str | None, metric: str) -> float:
    s = data.trajectory(run, metric) if run else pd.Series(dtype=float)
    return float(s.iloc[-1]) if len(s) else math.nan


def frobenius_at_comparable_rank(data: ReportData) -> Claim:
    opd, rlvr = data.role_run("OPD"), data.role_run("RLVR")
    fro = {r: _final(data, run, "frobenius") for r, run in (("OPD", opd), ("RLVR", rlvr))}
    sr = {r: _final(data, run, "stable_rank") for r, run in (("OPD", opd), ("RLVR", rlvr))}
    ratio = fro["OPD"] / fro["RLVR"] if fro["RLVR"] else math.nan
    spread = max(sr.values()) / min(sr.values()) if all(v > 0 for v in sr.values()) else math.nan
    numbers = (f"final checkpoint: ||dW||_F OPD ({opd or 'no run'}) {_f(fro['OPD'])}, RLVR ({rlvr or 'no run'}) "
               f"{_f(fro['RLVR'])} (ratio {_f(ratio, 3)}); stable rank OPD {_f(sr['OPD'], 3)}, RLVR "
               f"{_f(sr['RLVR'], 3)} (larger / smaller {_f(spread, 3)})")
    if not (math.isfinite(ratio) and math.isfinite(spread)):
        result = INSUFFICIENT
    else:
        result = YES if ratio > FRO_RATIO and spread <= SRANK_FACTOR else NO
    return Claim("C19", "OPD moves more than RLVR (Frobenius norm) while ending with comparable stable rank",
                 "s4.1, Fig. 4b", f"mean ||dW||_F and mean stable rank over the trajectory matrices at each run's "
                 f"final checkpoint: ||dW||_F OPD / RLVR > {FRO_RATIO:g}, and the larger stable rank within "
                 f"{SRANK_FACTOR:g}x the smaller", numbers,
                 "OPD accumulates a substantially larger update than RLVR, comparable stable rank", result,
                 uses=_uses(data, [opd, rlvr], "trajectory"))


def hill_trends(data: ReportData) -> Claim:
    runs = data.role_runs()
    series = {r: data.trajectory(run, "hill_alpha") if run else pd.Series(dtype=float) for r, run in runs.items()}
    change = {r: _rel_change(series[r]) for r in ("SFT", "RLVR")}
    s = series["OPD"]
    band = (s.max() - s.min()) / s.mean() if len(s) >= 2 and s.mean() else math.nan
    numbers = "; ".join(_series_text(runs[r], series[r]) for r in ROLES) + (
        f"; relative change SFT {_f(change['SFT'], 3)}, RLVR {_f(change['RLVR'], 3)}; OPD relative range "
        f"{_f(band, 3)}")
    if not all(math.isfinite(x) for x in (*change.values(), band)):
        result = INSUFFICIENT
    else:
        ok = change["SFT"] > CHANGE_TOL and change["RLVR"] < -CHANGE_TOL and band <= BAND_TOL
        result = YES if ok else NO
    return Claim("C20", "Hill tail estimate: SFT increases, RLVR decreases, OPD evolves mildly", "s4.1, Fig. 4c",
                 f"mean Hill alpha over the trajectory matrices per checkpoint: (last - first) / first > "
                 f"+{CHANGE_TOL} for SFT and < -{CHANGE_TOL} for RLVR; OPD's (max - min) / mean <= {BAND_TOL}",
                 numbers, "OPD evolves mildly, SFT increases sharply, RLVR decreases", result,
                 uses=_role_uses(data, "trajectory"))


def effopd_headline(data: ReportData) -> Claim:
    speed = effopd_speedup(data)
    uses: list[Use] = []
    if speed.empty:
        return Claim("C21", "EffOPD reaches vanilla OPD's final accuracy in fewer steps", "EffOPD s4.2, Fig. 6",
                     "", "no EffOPD run in this grid", "EffOPD converges in ~10 steps vs 30-40 for vanilla OPD",
                     INSUFFICIENT, "no EffOPD run in this grid")
    row = speed.iloc[0]
    for name in (row["run"], row["vanilla"]):
        if name:
            uses.append(Use(name, "accuracy", row["benchmark"], tuple(data.accuracy_series(name, row["benchmark"]).index)
                            or (data.final_step(name),)))
    lo, hi = row["speedup_ci_low"], row["speedup_ci_high"]
    numbers = (f"{row['run']} vs {row['vanilla']} on {row['benchmark']} ({row['metric']}): threshold "
               f"{_f(row['threshold'], 3)} (vanilla final); steps vanilla {row['vanilla_steps']}, EffOPD "
               f"{row['effopd_steps']}; speed-up {_f(row['speedup'], 3)} ({CI_LEVEL:.0%} CI {_f(lo, 3)} .. "
               f"{_f(hi, 3)}, {row['problems']} problems); searches {row['accepted_extrapolations'] or 'none'}")
    reason = ""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        result, reason = INSUFFICIENT, row["note"] or "no confidence interval"
    elif lo > 1:
        result = YES
    elif hi <= 1:
        result = NO
    else:
        result, reason = INSUFFICIENT, "the confidence interval of the speed-up contains 1: the evaluations cannot tell"
    return Claim("C21", "EffOPD reaches vanilla OPD's final accuracy in fewer steps", "EffOPD s4.2, Fig. 6",
                 f"steps to vanilla OPD's final accuracy (first evaluated step at or above it), vanilla / EffOPD: "
                 f"yes when the {CI_LEVEL:.0%} paired-bootstrap CI (over problems) lies above 1, no when it "
                 "lies at or below 1", numbers, "EffOPD converges in ~10 steps vs 30-40 for vanilla OPD", result,
                 reason, uses)


CHECKS: tuple[Callable[[ReportData], Claim], ...] = (
    sparsity_order, variants_between, rotation_order, nss_order, nss_levels, density_order,
    low_overlap_order, principal_overlap, stable_rank_band,
    _trend_claim("C10", "SFT", grows=True), _trend_claim("C11", "RLVR", grows=False),
    sim_first_checkpoint, projection_keeps_opd, projection_hurts_sft,
    token_sparse_tracks, off_policy_tracks, high_alpha_tracks, low_alpha_changes,
    frobenius_at_comparable_rank, hill_trends, effopd_headline,
)


def judge(data: ReportData, claim: Claim) -> Claim:
    """A verdict resting on void evidence becomes "insufficient data", with the reasons."""
    reasons = evidence.problems(data, claim.uses)
    if reasons:
        claim.reproduced = INSUFFICIENT
        claim.reason = "; ".join(reasons + ([claim.reason] if claim.reason else []))
    elif claim.reproduced == INSUFFICIENT and not claim.reason:
        claim.reason = "a number the test needs is missing (see numbers)"
    return claim


def evaluate(data: ReportData) -> list[Claim]:
    return [judge(data, check(data)) for check in CHECKS]


def frame_of(claims: list[Claim]) -> pd.DataFrame:
    return pd.DataFrame([{c: getattr(claim, c) for c in COLUMNS} for claim in claims], columns=COLUMNS)


def check_all(data: ReportData) -> pd.DataFrame:
    return frame_of(evaluate(data))


def claims_table(data: ReportData, claims: list[Claim] | None = None) -> Table:
    frame = frame_of(claims if claims is not None else evaluate(data))
    counts = frame["reproduced"].value_counts()
    roles = ", ".join(f"{r} = {data.role_run(r) or 'none'}" for r in ROLES)
    notes = [
        f"Grid '{data.grid.get('name', '')}'. Roles: {roles} (the first run of family sft / opd / rlvr). "
        f"Reproduced: {counts.get(YES, 0)} yes, {counts.get(NO, 0)} no, "
        f"{counts.get(INSUFFICIENT, 0)} insufficient data, of {len(frame)}.",
        "Tests and tolerances are fixed in geopd.report.claims before any result is read and are never "
        "tuned; 'no' means our numbers contradict the claim; 'insufficient data' means a number the "
        "test needs is missing, or rests on a run that did not move (no optimizer update, zero "
        "gradient, unchanged weights), on an alpha-mix run whose reward never varied (it trained as "
        "scaled OPD), on a distilled run whose teacher scored no higher than its anchor (nothing to "
        "distill) or on an undefined accuracy: `reason` names the file or the run. "
        "`runs`: the runs each verdict rests on.",
        *evidence.notes(data, gridfile.KINDS),
    ]
    return Table("claims", "Claims check: the geometry paper's qualitative claims on this grid", frame, notes)


def missing_table(data: ReportData, claims: list[Claim] | None = None) -> Table:
    claims = claims if claims is not None else evaluate(data)
    frame = evidence.missing_frame(data, {c.id: c.uses for c in claims})
    counts = frame["problem"].value_counts()
    n_expected = len(data.expected)
    summary = (f"{counts.get(gridfile.MISSING, 0)} of {n_expected} expected inputs missing, "
               f"{counts.get(gridfile.UNREADABLE, 0)} unreadable, {counts.get(gridfile.STILL, 0)} "
               f"run problem(s) (did not move), {counts.get(gridfile.NO_SIGNAL, 0)} mix run(s) whose reward "
               f"never varied, {counts.get(gridfile.NO_TEACHER, 0)} distilled run(s) whose teacher was no "
               f"stronger than the anchor, {counts.get(gridfile.UNDEFINED, 0)} undefined accuracies."
               if n_expected else "The grid description lists no expected inputs (grid.json without "
               "'inputs'): only runs that did not move, mix runs whose reward never varied, teachers no "
               "stronger than their student's anchor and undefined accuracies are checked.")
    notes = [
        summary,
        "Inputs: every per-checkpoint file the grid expects (diagnostics, Sim_K trajectories, reference "
        "pairs, evaluations, training logs; paths relative to results/). `claims`: the claims each "
        "problem makes 'insufficient data'. Tables and figures are built from what exists; their "
        "cells for a missing input are empty and their panels say 'no data'.",
    ]
    return Table("missing", "What the report is missing, and runs that are no evidence", frame, notes,
                 empty="nothing: every expected input exists and is readable, every run moved, every "
                       "accuracy is defined")


def write_claims(data: ReportData, out_dir: str | Path) -> list[Path]:
    """claims.{csv,md} and missing.{csv,md}; the verdicts also go to stderr (the job's log)."""
    claims = evaluate(data)
    for c in claims:
        print(f"{c.id:>4} {c.reproduced:<17} {c.claim}" + (f"  [{c.reason}]" if c.reason else ""), file=sys.stderr)
    return write(claims_table(data, claims), out_dir) + write(missing_table(data, claims), out_dir)
