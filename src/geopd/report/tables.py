"""Paper tables from the aggregated results (`geopd report tables`).

table1_sparsity   bf16 sparsity per run at its endpoint (all matrices), paper figure beside ours
update_masks      update density and principal / low-magnitude mask overlaps, random baseline
effopd_spectral   spectral norm, spectral/Frobenius, effective rank, top-1% ratio (OPD vs RL),
                  and (Markdown) EffOPD vs vanilla OPD steps to an accuracy threshold
accuracy          accuracy per run and checkpoint, with the init's accuracy where known
teachers          teacher accuracy vs the student anchors (the teacher-student gap)

Each builder takes a ReportData and returns a Table; a run without data keeps its row with
empty cells, so a missing result is visible rather than silently dropped, and the Markdown
names the missing input files and the runs that did not move (geopd.report.evidence).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from geopd.report import evidence, paper
from geopd.report.data import ReportData
from geopd.report.markdown import Section, Table, write

# Table 1's row groups, by run family (the paper's grouping), in order.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("controlled", ("sft", "opd", "rlvr")),
    ("OPD variants", ("teacher-scale", "student-scale", "code", "moe-teacher", "seed")),
    ("controls", ("token-sparse", "off-policy", "alpha-mix")),
)
OTHER = "other runs"

# EffOPD speedup (fixed before any EffOPD result was read): the threshold is vanilla OPD's
# final accuracy (the EffOPD paper's headline: "match the final performance of vanilla OPD with
# fewer training iterations"); its confidence interval is a paired bootstrap over problems.
BOOTSTRAP = 2000
CI_LEVEL = 0.95


def pct(x) -> float:
    return float(x) * 100.0 if x is not None and not pd.isna(x) else math.nan


def _num(row: dict | None, key: str) -> float:
    if row is None or key not in row or row[key] is None or pd.isna(row[key]):
        return math.nan
    return float(row[key])


def diagnosed_runs(data: ReportData) -> list[tuple[str, str]]:
    """(group, run) of every run with endpoint diagnostics, in Table 1's order."""
    runs = {r: s for r, s in data.runs.items() if s.get("diagnostics", "endpoint") != "none"}
    out, seen = [], set()
    for group, families in GROUPS:
        for fam in families:
            for r, s in runs.items():
                if s.get("family") == fam:
                    out.append((group, r))
                    seen.add(r)
    out += [(OTHER, r) for r in runs if r not in seen]
    return out


def _run_columns(data: ReportData, group: str, run: str) -> dict:
    spec = data.runs[run]
    return {"group": group, "run": run, "family": spec.get("family"), "method": spec.get("method"),
            "w0": spec.get("w0"), "teacher": spec.get("teacher") or "", "step": data.final_step(run)}


def reference_pairs(data: ReportData) -> list[dict]:
    """The config's reference pairs, in the paper's Table 1 order (others after)."""
    def rank(pair):
        ref = paper.reference_pair(pair["name"], pair.get("base"), pair.get("tuned"))
        return paper.REFERENCE_PAIRS.index(ref) if ref else len(paper.REFERENCE_PAIRS)
    return sorted(data.grid["reference_pairs"].values(), key=rank)


def _pair_columns(pair: dict) -> dict:
    return {"group": "published reference", "run": pair["name"], "family": "reference",
            "method": pair.get("method"), "w0": pair.get("base"), "teacher": "", "step": None}


# ---- Table 1 -------------------------------------------------------------------------------------

def table1_sparsity(data: ReportData) -> Table:
    rows = []
    for group, run in diagnosed_runs(data):
        end = data.endpoint(run)
        rows.append({**_run_columns(data, group, run), "tuned": run,
                     "n_matrices": _num(end, "n_matrices"),
                     "sparsity_pct": pct(_num(end, "bf16_sparsity")),
                     "with_embeddings_pct": pct(_num(end, "bf16_sparsity_with_embeddings")),
                     "attention_pct": pct(_num(data.endpoint(run, "attention"), "bf16_sparsity")),
                     "mlp_pct": pct(_num(data.endpoint(run, "mlp"), "bf16_sparsity")),
                     "paper_pct": paper.sparsity_pct(run)})
    for pair in reference_pairs(data):
        ref = data.reference(pair["name"])
        published = paper.reference_pair(pair["name"], pair.get("base"), pair.get("tuned"))
        rows.append({**_pair_columns(pair), "tuned": pair.get("tuned"),
                     "n_matrices": _num(ref, "n_matrices"),
                     "sparsity_pct": pct(_num(ref, "bf16_sparsity")),
                     "with_embeddings_pct": pct(_num(ref, "bf16_sparsity_with_embeddings")),
                     "attention_pct": pct(_num(data.reference(pair["name"], "attention"), "bf16_sparsity")),
                     "mlp_pct": pct(_num(data.reference(pair["name"], "mlp"), "bf16_sparsity")),
                     "paper_pct": published["sparsity_pct"] if published else None})
    cols = ["group", "run", "method", "family", "w0", "tuned", "teacher", "step", "n_matrices",
            "sparsity_pct", "with_embeddings_pct", "attention_pct", "mlp_pct", "paper_pct"]
    frame = pd.DataFrame(rows, columns=cols)
    frame["paper_pct"] = pd.to_numeric(frame["paper_pct"], errors="coerce")
    frame["n_matrices"] = pd.to_numeric(frame["n_matrices"], errors="coerce").astype("Int64")
    frame["step"] = pd.to_numeric(frame["step"], errors="coerce").astype("Int64")
    notes = [
        "bf16-aware update sparsity (% of entries unchanged) of each run's final checkpoint against "
        "its W0 (the SFT anchor for OPD/RLVR, the base for SFT), parameter-count weighted over the "
        f"endpoint matrix set ('{data.endpoint_matrices}': attention and MLP weight matrices; "
        "embeddings and norms are not in it). with_embeddings_pct: over those and the embedding "
        "tensors (embed_tokens and an untied lm_head; App. C.3 computes sparsity \"over all analyzed "
        "weight parameters\" without naming them, so both readings stand side by side; empty when the "
        "endpoint set is 'attention'). attention_pct / mlp_pct: the same over each group.",
        "paper_pct: the geometry paper's Table 1 figure for the run of the same name (full scale; "
        "empty where the paper has none). Runs with `diagnostics: none` have no endpoint diagnosis "
        "and no row; a row with empty cells is a run whose diagnosis is missing.",
    ]
    if not data.grid["reference_pairs"]:
        notes.append("No published reference pairs in this config (the paper config computes them "
                     "from hub checkpoints).")
    notes += evidence.notes(data, ("diagnostics", "reference"), [r for _, r in diagnosed_runs(data)])
    digits = {"sparsity_pct": 1, "with_embeddings_pct": 1, "attention_pct": 1, "mlp_pct": 1, "paper_pct": 1}
    return Table("table1_sparsity", "Table 1: bf16-aware update sparsity", frame, notes, digits)


# ---- update density and mask overlaps -----------------------------------------------------------

def update_masks(data: ReportData) -> Table:
    alphas = data.mask_alphas
    rows = []
    entries = [(_run_columns(data, g, r), data.endpoint(r), data.role_of(r)) for g, r in diagnosed_runs(data)]
    entries += [(_pair_columns(p), data.reference(p["name"]), None) for p in reference_pairs(data)]
    per_alpha = []
    for cols, end, role in entries:
        row = {"group": cols["group"], "run": cols["run"], "family": cols["family"], "step": cols["step"],
               "update_density_pct": pct(_num(end, "update_density")),
               "update_density_weighted_pct": 100.0 - pct(_num(end, "bf16_sparsity"))}
        for a in alphas:
            princ = pct(_num(end, data.overlap_key("princ_overlap", a)))
            cells = {f"princ_overlap_pct@{a:g}": princ,
                     f"low_overlap_pct@{a:g}": pct(_num(end, data.overlap_key("low_overlap", a))),
                     f"princ_overlap_pooled_pct@{a:g}": pct(_num(end, data.overlap_key("princ_overlap_pooled", a))),
                     f"low_overlap_pooled_pct@{a:g}": pct(_num(end, data.overlap_key("low_overlap_pooled", a))),
                     f"princ_vs_random@{a:g}": ("below" if princ < 100 * a else "at/above") if math.isfinite(princ)
                     else None}
            row.update(cells)
            per_alpha += [c for c in cells if c not in per_alpha]
        row.update({"paper_update_density_pct": paper.UPDATE_DENSITY_PCT.get(role) if role else None,
                    "paper_low_overlap_pct": paper.LOW_OVERLAP_PCT.get(role) if role else None})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[
        "group", "run", "family", "step", "update_density_pct", "update_density_weighted_pct", *per_alpha,
        "paper_update_density_pct", "paper_low_overlap_pct"])
    for c in ("paper_update_density_pct", "paper_low_overlap_pct"):
        frame[c] = pd.to_numeric(frame[c], errors="coerce")
    frame["step"] = pd.to_numeric(frame["step"], errors="coerce").astype("Int64")
    listed = ", ".join(f"{a:g}" for a in alphas) or "?"
    notes = [
        "update_density: the fraction of entries changed at bf16, per matrix, then the unweighted mean over "
        "matrices (App. C.3: \"Metrics are first computed per matrix and then averaged across matrices\"; "
        "the paper's 92.73 / 46.28 / 27.76% are not 1 - Table 1's sparsity, 91.9 / 48.4 / 22.8%); "
        "update_density_weighted: the parameter-count-weighted fraction (= 1 - Table 1's sparsity). "
        "Overlap(M*, M_upd) = |M* & M_upd| / |M_upd| per matrix, then the unweighted mean over "
        "matrices; *_pooled: the same with the counts summed over matrices.",
        f"M_princ: top-alpha of |rank-r reconstruction of W0| (r = {data.grid['diagnostics'].get('r', '?')}); "
        f"M_low: bottom-alpha of |W0|; computed at alpha = {listed} (`diagnostics.alpha`), each its own "
        "random baseline (`@alpha` in the column name; princ_vs_random compares with it). The paper's "
        "Fig. 3 numbers are at alpha = 0.3, its text's \"30% random baseline\" (App. C.3 says 0.5; SFT's "
        "92.73% density and 31.88% low-magnitude overlap are impossible at 0.5, whose overlap is at least "
        "1 - 0.5 / density, README \"Reading the paper\"). Paper columns: the controlled 8B SFT / OPD / "
        "RLVR comparison (s3.2), beside the run playing that role here.",
        *evidence.notes(data, ("diagnostics", "reference"), [r for _, r in diagnosed_runs(data)]),
    ]
    digits = {c: 2 for c in frame.columns if "_pct" in c}
    return Table("update_masks", "Update density and update-mask overlaps", frame, notes, digits)


# ---- EffOPD spectral table and speedup ----------------------------------------------------------

SPECTRAL = ("spectral_norm", "spectral_frobenius_ratio", "effective_rank", "top1pct_norm_ratio")


def effopd_reference(data: ReportData, run: str) -> str | None:
    """The vanilla OPD run an EffOPD run is compared with: same init and teacher, family opd."""
    spec = data.runs[run]
    for r in data.family("opd"):
        s = data.runs[r]
        if s.get("init") == spec.get("init") and s.get("teacher") == spec.get("teacher"):
            return r
    return data.role_run("OPD")


def effopd_spectral_frame(data: ReportData) -> pd.DataFrame:
    rows = []
    picks = [(data.role_run("OPD"), "OPD"), (data.role_run("RLVR"), "RL")]
    picks += [(r, "OPD (EffOPD)") for r in data.family("effopd")]
    for run, label in picks:
        if run is None:
            continue
        end = data.endpoint(run)
        rows.append({"source": "ours", "run": run, "method": label, "step": data.final_step(run),
                     "n_matrices": _num(end, "n_matrices"),
                     "spectral_norm": _num(end, "spectral_norm"),
                     "spectral_frobenius_ratio_pct": pct(_num(end, "spectral_frobenius_ratio")),
                     "effective_rank": _num(end, "effective_rank"),
                     "top1pct_norm_ratio_pct": pct(_num(end, "top1pct_norm_ratio"))})
    for label in ("RL", "OPD"):
        p = paper.EFFOPD_SPECTRAL[paper.EFFOPD_SCALE][label]
        rows.append({"source": f"paper (EffOPD Table 1, {paper.EFFOPD_SCALE})", "run": None, "method": label,
                     "step": None, "n_matrices": None, "spectral_norm": p["spectral_norm"],
                     "spectral_frobenius_ratio_pct": p["spectral_frobenius_ratio"],
                     "effective_rank": p["effective_rank"], "top1pct_norm_ratio_pct": p["top1pct_norm_ratio"]})
    frame = pd.DataFrame(rows, columns=["source", "run", "method", "step", "n_matrices", "spectral_norm",
                                        "spectral_frobenius_ratio_pct", "effective_rank",
                                        "top1pct_norm_ratio_pct"])
    frame["step"] = pd.to_numeric(frame["step"], errors="coerce").astype("Int64")
    frame["n_matrices"] = pd.to_numeric(frame["n_matrices"], errors="coerce").astype("Int64")
    return frame


def steps_to_reach(series: pd.Series, threshold: float) -> int | None:
    """First evaluated step whose accuracy is at least `threshold`."""
    hit = series[series >= threshold - 1e-12]
    return int(hit.index[0]) if len(hit) else None


def accepted_extrapolations(data: ReportData, run: str) -> str:
    """'step:xfactor' of every EffOPD search of the run's log, accepted or not (x0: rejected)."""
    return ", ".join(f"{s['step']}:x{s.get('accepted_factor', 0):g}" for s in data.searches.get(run) or [])


def _first_reach(acc: np.ndarray, steps: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Per bootstrap row: the first step whose accuracy reaches that row's threshold (inf: never)."""
    hit = acc >= threshold[:, None] - 1e-12
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    return np.where(first >= 0, steps[np.maximum(first, 0)], np.inf)


def speedup_interval(vanilla: pd.DataFrame, effopd: pd.DataFrame, iters: int = BOOTSTRAP,
                     level: float = CI_LEVEL, seed: int = 0) -> dict | None:
    """Paired bootstrap over problems of the steps each run needs to reach vanilla OPD's final
    accuracy and of their ratio. `vanilla` / `effopd`: problems x steps of per-problem accuracy
    (ReportData.problem_scores), on the same problems. Each resample draws the problems with
    replacement, recomputes both accuracy curves and the threshold (vanilla's final step); a
    resample in which EffOPD never reaches it has speed-up 0 and EffOPD steps inf. None when the
    two were not evaluated on the same problems."""
    if vanilla.empty or effopd.empty or set(vanilla.index) != set(effopd.index):
        return None
    ids = sorted(vanilla.index)
    v, e = vanilla.loc[ids].to_numpy(dtype=float), effopd.loc[ids].to_numpy(dtype=float)
    if np.isnan(v).any() or np.isnan(e).any():
        return None
    n = len(ids)
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=iters) / n
    acc_v, acc_e = counts @ v, counts @ e
    threshold = acc_v[:, -1]
    v_steps = _first_reach(acc_v, vanilla.columns.to_numpy(dtype=float), threshold)
    e_steps = _first_reach(acc_e, effopd.columns.to_numpy(dtype=float), threshold)
    ratio = np.where(np.isfinite(e_steps), v_steps / e_steps, 0.0)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {"speedup_ci": tuple(np.percentile(ratio, [lo, hi])),
            "effopd_steps_ci": tuple(np.percentile(e_steps, [lo, hi])),
            "vanilla_steps_ci": tuple(np.percentile(v_steps, [lo, hi])),
            "never": float(np.mean(~np.isfinite(e_steps))), "problems": n, "iters": iters}


def _interval(ci) -> str:
    return "" if ci is None else " .. ".join("never" if not math.isfinite(x) else f"{x:.3g}" for x in ci)


SPEEDUP_COLUMNS = ["run", "vanilla", "benchmark", "metric", "init_acc", "vanilla_final_acc", "effopd_final_acc",
                   "threshold", "vanilla_steps", "effopd_steps", "speedup", "speedup_ci_low", "speedup_ci_high",
                   "effopd_steps_ci", "vanilla_steps_ci", "p_never", "problems", "evaluated_steps",
                   "accepted_extrapolations", "note"]


def effopd_speedup(data: ReportData) -> pd.DataFrame:
    """Per EffOPD run and benchmark: the steps EffOPD and vanilla OPD need to reach vanilla OPD's
    final accuracy (at the resolution of the steps both were evaluated at), their ratio, and a
    paired bootstrap confidence interval of each over problems; the extrapolations its searches
    accepted."""
    rows = []
    for run in data.family("effopd"):
        ref = effopd_reference(data, run)
        for bench in data.benchmarks(run):
            metric = data.primary_metric(bench)
            eff, van = data.accuracy_series(run, bench), (data.accuracy_series(ref, bench) if ref else pd.Series(dtype=float))
            init = data.origin_accuracy(run, bench)
            row = {"run": run, "vanilla": ref, "benchmark": bench, "metric": metric,
                   "init_acc": init[0] if init else math.nan,
                   "vanilla_final_acc": float(van.iloc[-1]) if len(van) else math.nan,
                   "effopd_final_acc": float(eff.iloc[-1]) if len(eff) else math.nan,
                   "threshold": math.nan, "vanilla_steps": None, "effopd_steps": None, "speedup": math.nan,
                   "speedup_ci_low": math.nan, "speedup_ci_high": math.nan, "effopd_steps_ci": "",
                   "vanilla_steps_ci": "", "p_never": math.nan, "problems": None,
                   "evaluated_steps": f"{run}: {list(map(int, eff.index))}; {ref}: {list(map(int, van.index))}",
                   "accepted_extrapolations": accepted_extrapolations(data, run), "note": ""}
            if not (len(eff) and len(van)):
                row["note"] = "no accuracy for " + " and ".join(
                    n for n, s in ((run, eff), (ref or "vanilla OPD", van)) if not len(s))
            elif math.isfinite(row["init_acc"]) and not row["vanilla_final_acc"] > row["init_acc"]:
                row["note"] = "vanilla OPD did not improve on its init: nothing to reach faster"
            else:
                row["threshold"] = row["vanilla_final_acc"]
                row["vanilla_steps"] = steps_to_reach(van, row["threshold"])
                row["effopd_steps"] = steps_to_reach(eff, row["threshold"])
                if row["effopd_steps"] is None:
                    row["note"] = "EffOPD never reaches vanilla OPD's final accuracy"
                    row["speedup"] = 0.0
                else:
                    row["speedup"] = row["vanilla_steps"] / row["effopd_steps"]
                ci = speedup_interval(data.problem_scores(ref, bench).reindex(columns=van.index),
                                      data.problem_scores(run, bench).reindex(columns=eff.index))
                if ci is None:
                    row["note"] = "; ".join(x for x in (row["note"], "no per-problem scores of both runs at every "
                                                        "evaluated step: no confidence interval") if x)
                else:
                    row.update(speedup_ci_low=ci["speedup_ci"][0], speedup_ci_high=ci["speedup_ci"][1],
                               effopd_steps_ci=_interval(ci["effopd_steps_ci"]),
                               vanilla_steps_ci=_interval(ci["vanilla_steps_ci"]), p_never=ci["never"],
                               problems=ci["problems"])
            rows.append(row)
    frame = pd.DataFrame(rows, columns=SPEEDUP_COLUMNS)
    for c in ("vanilla_steps", "effopd_steps", "problems"):
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype("Int64")
    return frame


def effopd_spectral(data: ReportData) -> Table:
    frame = effopd_spectral_frame(data)
    notes = [
        "Metrics of dW = W+ - W0 at each run's final checkpoint, unweighted mean over the endpoint "
        "matrix set (attention and MLP): spectral norm s1; spectral/Frobenius s1/||dW||_F; effective "
        "rank exp(-sum p_i log p_i), p_i = s_i/sum s; top-1% ratio ||rank-ceil(1% rank) approx||_F / ||dW||_F. "
        "Paper rows: EffOPD Table 1 at the 8B scale (absolute values are scale-dependent; compare "
        "the OPD-vs-RL direction).",
        *evidence.notes(data, ("diagnostics", "eval"), list(frame["run"].dropna())
                        + [effopd_reference(data, r) for r in data.family("effopd")]),
    ]
    speed = effopd_speedup(data)
    speed_notes = [
        "Threshold = vanilla OPD's final accuracy on the benchmark's primary metric (the EffOPD paper's "
        "headline: vanilla OPD's final performance in fewer steps); steps = the first evaluated step at or "
        "above it (the resolution of `evaluated_steps`: checkpoints and `eval_at` steps); speedup = "
        "vanilla steps / EffOPD steps (0: EffOPD never reaches it). Confidence intervals: "
        f"{CI_LEVEL:.0%} percentile intervals of a paired bootstrap over problems ({BOOTSTRAP} resamples, "
        "seed 0), each resample recomputing both curves and the threshold; p_never: the share of "
        "resamples in which EffOPD never reaches it. accepted_extrapolations: each search's step and "
        "the factor it kept (x0: every candidate rejected, the weights stay vanilla OPD's). Not declared "
        "as a separate output by the workflow, so it lives here.",
    ]
    extra = [Section("EffOPD vs vanilla OPD: steps to reach vanilla OPD's final accuracy", speed, speed_notes,
                     {"speedup": 2, "speedup_ci_low": 2, "speedup_ci_high": 2, "p_never": 3})]
    digits = {"spectral_norm": 4, "spectral_frobenius_ratio_pct": 1, "effective_rank": 1,
              "top1pct_norm_ratio_pct": 1}
    return Table("effopd_spectral", "EffOPD Table 1: spectral metrics of the update, OPD vs RL", frame,
                 notes, digits, extra)


# ---- accuracy ------------------------------------------------------------------------------------

def _wide(rows: pd.DataFrame) -> dict[str, float]:
    return {str(m): float(v) for m, v in zip(rows["metric"], rows["value"])}


def _metric_order(names) -> list[str]:
    rank = {"avg": 0, "pass": 1, "maj": 2}
    return sorted(set(names), key=lambda m: (rank.get(m.split("@")[0], 9), m))


def accuracy(data: ReportData) -> Table:
    a = data.accuracy
    rows = []
    for run, spec in data.runs.items():
        for bench in data.benchmarks(run):
            o = data.origin(run)
            if o is not None:
                if o.kind == "model":
                    init = a[(a["kind"] == "model") & (a["subject"] == o.name) & (a["benchmark"] == bench)]
                else:
                    init = a[(a["kind"] == "run") & (a["subject"] == o.name) & (a["benchmark"] == bench)
                             & (a["step"] == o.step)]
                if len(init):
                    rows.append({"run": run, "family": spec.get("family"), "benchmark": bench,
                                 "step": spec.get("start_step", 0), "point": "init", "source": str(o),
                                 **_wide(init)})
            for step in data.eval_steps(run, bench):
                hit = a[(a["kind"] == "run") & (a["subject"] == run) & (a["benchmark"] == bench) & (a["step"] == step)]
                rows.append({"run": run, "family": spec.get("family"), "benchmark": bench, "step": step,
                             "point": "checkpoint", "source": run, **_wide(hit)})
    metrics = _metric_order(a["metric"].dropna()) if len(a) else []
    frame = pd.DataFrame(rows, columns=["run", "family", "benchmark", "step", "point", "source", *metrics])
    frame["step"] = pd.to_numeric(frame["step"], errors="coerce").astype("Int64")
    notes = [
        "Accuracy of every evaluated step of every run on its benchmarks (its checkpoints, and the "
        "evaluation-only steps of `eval_at`; avg@k: mean correctness of k "
        "samples at the rollout temperature; pass@k: any of k correct; maj@k: majority answer "
        "correct; pass@1 for LiveCodeBench). `init` rows are the run's starting point where it was "
        "evaluated (a run's checkpoint, or a model under eval/models); empty cells: not evaluated "
        "or missing.",
        *evidence.notes(data, ("eval",)),
    ]
    return Table("accuracy", "Accuracy per run and checkpoint", frame, notes, {m: 3 for m in metrics})


# ---- teachers ------------------------------------------------------------------------------------

def teachers(data: ReportData) -> Table:
    rows, unevaluated = [], []
    for teacher, benches in data.grid["teachers"].items():
        students = [r for r, s in data.runs.items() if s.get("teacher") == teacher]
        for bench in benches:
            metric = data.primary_metric(bench)
            t_acc = data.model_accuracy(teacher, bench)
            for run in students:
                if bench not in data.benchmarks(run):
                    continue
                init = data.origin_accuracy(run, bench)
                acc = data.accuracy_series(run, bench)
                anchor = init[0] if init else math.nan
                origin = data.origin(run)
                if origin is not None and origin.kind == "run" and bench not in data.benchmarks(origin.name):
                    unevaluated.append(f"{origin.name} on {bench} (anchor of {run})")
                final = float(acc.iloc[-1]) if len(acc) else math.nan
                t = t_acc if t_acc is not None else math.nan
                gap = t - anchor
                rows.append({"teacher": teacher, "benchmark": bench, "metric": metric, "teacher_acc": t,
                             "student_run": run, "anchor": init[1] if init else str(data.origin(run) or ""),
                             "anchor_acc": anchor, "student_final_acc": final, "gap": gap,
                             "gap_closed_pct": (final - anchor) / gap * 100.0 if gap and math.isfinite(gap)
                             and math.isfinite(final) else math.nan})
    frame = pd.DataFrame(rows, columns=["teacher", "benchmark", "metric", "teacher_acc", "student_run", "anchor",
                                        "anchor_acc", "student_final_acc", "gap", "gap_closed_pct"])
    notes = [
        "Each teacher's accuracy beside the student anchor each of its runs starts from (the run's "
        "init) and the run's final checkpoint. gap = teacher - anchor (positive: the teacher is "
        "stronger, as distillation needs); gap_closed_pct = (final - anchor) / gap.",
        *evidence.notes(data, ("eval",)),
    ]
    if unevaluated:
        notes.append("**Anchors the config never evaluates** (add the benchmark to the anchor run's `eval` "
                     "to measure the gap): " + "; ".join(dict.fromkeys(unevaluated)) + ".")
    digits = {"gap_closed_pct": 1}
    return Table("teachers", "Teachers vs student anchors", frame, notes, digits)


BUILDERS = {"table1_sparsity": table1_sparsity, "update_masks": update_masks,
            "effopd_spectral": effopd_spectral, "accuracy": accuracy, "teachers": teachers}


def build_all(data: ReportData) -> list[Table]:
    return [b(data) for b in BUILDERS.values()]


def write_all(data: ReportData, out_dir: str | Path) -> list[Path]:
    return [p for t in build_all(data) for p in write(t, out_dir)]
