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

# EffOPD speedup: the threshold is this fraction of vanilla OPD's accuracy gain over the init.
GAIN_FRACTION = 0.9


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
                     "attention_pct": pct(_num(data.endpoint(run, "attention"), "bf16_sparsity")),
                     "mlp_pct": pct(_num(data.endpoint(run, "mlp"), "bf16_sparsity")),
                     "paper_pct": paper.sparsity_pct(run)})
    for pair in reference_pairs(data):
        ref = data.reference(pair["name"])
        published = paper.reference_pair(pair["name"], pair.get("base"), pair.get("tuned"))
        rows.append({**_pair_columns(pair), "tuned": pair.get("tuned"),
                     "n_matrices": _num(ref, "n_matrices"),
                     "sparsity_pct": pct(_num(ref, "bf16_sparsity")),
                     "attention_pct": pct(_num(data.reference(pair["name"], "attention"), "bf16_sparsity")),
                     "mlp_pct": pct(_num(data.reference(pair["name"], "mlp"), "bf16_sparsity")),
                     "paper_pct": published["sparsity_pct"] if published else None})
    cols = ["group", "run", "method", "family", "w0", "tuned", "teacher", "step", "n_matrices",
            "sparsity_pct", "attention_pct", "mlp_pct", "paper_pct"]
    frame = pd.DataFrame(rows, columns=cols)
    frame["paper_pct"] = pd.to_numeric(frame["paper_pct"], errors="coerce")
    frame["n_matrices"] = pd.to_numeric(frame["n_matrices"], errors="coerce").astype("Int64")
    frame["step"] = pd.to_numeric(frame["step"], errors="coerce").astype("Int64")
    notes = [
        "bf16-aware update sparsity (% of entries unchanged) of each run's final checkpoint against "
        "its W0 (the SFT anchor for OPD/RLVR, the base for SFT), parameter-count weighted over the "
        f"endpoint matrix set ('{data.endpoint_matrices}': attention and MLP weight matrices; "
        "embeddings and norms are not in it). attention_pct / mlp_pct: the same over each group.",
        "paper_pct: the geometry paper's Table 1 figure for the run of the same name (full scale; "
        "empty where the paper has none). Runs with `diagnostics: none` have no endpoint diagnosis "
        "and no row; a row with empty cells is a run whose diagnosis is missing.",
    ]
    if not data.grid["reference_pairs"]:
        notes.append("No published reference pairs in this config (the paper config computes them "
                     "from hub checkpoints).")
    notes += evidence.notes(data, ("diagnostics", "reference"), [r for _, r in diagnosed_runs(data)])
    digits = {"sparsity_pct": 1, "attention_pct": 1, "mlp_pct": 1, "paper_pct": 1}
    return Table("table1_sparsity", "Table 1: bf16-aware update sparsity", frame, notes, digits)


# ---- update density and mask overlaps -----------------------------------------------------------

def update_masks(data: ReportData) -> Table:
    alpha = data.mask_alpha
    rows = []
    entries = [(_run_columns(data, g, r), data.endpoint(r), data.role_of(r)) for g, r in diagnosed_runs(data)]
    entries += [(_pair_columns(p), data.reference(p["name"]), None) for p in reference_pairs(data)]
    for cols, end, role in entries:
        princ = pct(_num(end, "princ_overlap"))
        rows.append({
            "group": cols["group"], "run": cols["run"], "family": cols["family"], "step": cols["step"],
            "update_density_pct": pct(_num(end, "update_density")),
            "princ_overlap_pct": princ,
            "low_overlap_pct": pct(_num(end, "low_overlap")),
            "princ_overlap_pooled_pct": pct(_num(end, "princ_overlap_pooled")),
            "low_overlap_pooled_pct": pct(_num(end, "low_overlap_pooled")),
            "random_baseline_pct": pct(alpha),
            "princ_vs_random": (("below" if princ < pct(alpha) else "at/above")
                                if alpha is not None and math.isfinite(princ) else None),
            "paper_update_density_pct": paper.UPDATE_DENSITY_PCT.get(role) if role else None,
            "paper_low_overlap_pct": paper.LOW_OVERLAP_PCT.get(role) if role else None,
        })
    frame = pd.DataFrame(rows, columns=[
        "group", "run", "family", "step", "update_density_pct", "princ_overlap_pct", "low_overlap_pct",
        "princ_overlap_pooled_pct", "low_overlap_pooled_pct", "random_baseline_pct", "princ_vs_random",
        "paper_update_density_pct", "paper_low_overlap_pct"])
    for c in ("paper_update_density_pct", "paper_low_overlap_pct"):
        frame[c] = pd.to_numeric(frame[c], errors="coerce")
    frame["step"] = pd.to_numeric(frame["step"], errors="coerce").astype("Int64")
    notes = [
        "update_density: parameter-count-weighted fraction of entries changed at bf16 (= 1 - sparsity). "
        "Overlap(M*, M_upd) = |M* & M_upd| / |M_upd| per matrix, then the unweighted mean over "
        "matrices (the paper's averaging); *_pooled: the same with the counts summed over matrices.",
        f"M_princ: top-alpha of |rank-r reconstruction of W0| (r = {data.grid['diagnostics'].get('r', '?')}); "
        f"M_low: bottom-alpha of |W0|; alpha = {alpha if alpha is not None else '?'}, which is also the "
        "random baseline of both overlaps. Paper columns: the controlled 8B SFT / OPD / RLVR comparison "
        "(s3.2), beside the run playing that role here.",
        *evidence.notes(data, ("diagnostics", "reference"), [r for _, r in diagnosed_runs(data)]),
    ]
    digits = {c: 2 for c in frame.columns if c.endswith("_pct")}
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
    """First checkpoint step whose accuracy is at least `threshold`."""
    hit = series[series >= threshold - 1e-12]
    return int(hit.index[0]) if len(hit) else None


def effopd_speedup(data: ReportData, gain_fraction: float = GAIN_FRACTION) -> pd.DataFrame:
    """Per EffOPD run and benchmark: steps each of EffOPD and vanilla OPD needs to reach
    init + gain_fraction * (vanilla OPD's final accuracy - init), at checkpoint resolution."""
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
                   "threshold": math.nan, "vanilla_steps": None, "effopd_steps": None,
                   "speedup": math.nan, "note": ""}
            gain = row["vanilla_final_acc"] - row["init_acc"]
            if not (len(eff) and len(van)):
                row["note"] = "no accuracy for " + " and ".join(
                    n for n, s in ((run, eff), (ref or "vanilla OPD", van)) if not len(s))
            elif not math.isfinite(row["init_acc"]):
                row["note"] = "init accuracy unknown: threshold undefined"
            elif not gain > 0:
                row["note"] = "vanilla OPD did not improve on its init: threshold undefined"
            else:
                row["threshold"] = row["init_acc"] + gain_fraction * gain
                row["vanilla_steps"] = steps_to_reach(van, row["threshold"])
                row["effopd_steps"] = steps_to_reach(eff, row["threshold"])
                if row["vanilla_steps"] and row["effopd_steps"]:
                    row["speedup"] = row["vanilla_steps"] / row["effopd_steps"]
                elif row["effopd_steps"] is None:
                    row["note"] = "EffOPD never reaches the threshold"
            rows.append(row)
    frame = pd.DataFrame(rows, columns=["run", "vanilla", "benchmark", "metric", "init_acc", "vanilla_final_acc",
                                        "effopd_final_acc", "threshold", "vanilla_steps", "effopd_steps",
                                        "speedup", "note"])
    for c in ("vanilla_steps", "effopd_steps"):
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
        f"Threshold = init accuracy + {GAIN_FRACTION:g} x (vanilla OPD's final accuracy - init accuracy), "
        "on the benchmark's primary metric; steps = first checkpoint at or above it (checkpoint "
        "resolution); speedup = vanilla steps / EffOPD steps. Not declared as a separate output by "
        "the workflow, so it lives here.",
    ]
    extra = [Section("EffOPD vs vanilla OPD: steps to reach an accuracy threshold", speed, speed_notes,
                     {"speedup": 2})]
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
            for step in data.checkpoints(run):
                hit = a[(a["kind"] == "run") & (a["subject"] == run) & (a["benchmark"] == bench) & (a["step"] == step)]
                rows.append({"run": run, "family": spec.get("family"), "benchmark": bench, "step": step,
                             "point": "checkpoint", "source": run, **_wide(hit)})
    metrics = _metric_order(a["metric"].dropna()) if len(a) else []
    frame = pd.DataFrame(rows, columns=["run", "family", "benchmark", "step", "point", "source", *metrics])
    frame["step"] = pd.to_numeric(frame["step"], errors="coerce").astype("Int64")
    notes = [
        "Accuracy of every checkpoint of every run on its benchmarks (avg@k: mean correctness of k "
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
