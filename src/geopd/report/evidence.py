"""What a result may rest on: the inputs the grid expects, which of them are missing, and the
runs that are no evidence.

Two things void a number, and both are named rather than skipped:

- a missing input: a per-checkpoint file the grid expects (grid.json "inputs", written by
  Grid.report_spec) that does not exist under results/, or that exists but cannot be read;
- a run that did not move: it made no optimizer update (metrics.jsonl: updates = 0 at every
  step), its gradient was zero at every step, or its weights did not change (the diagnosis
  of its final checkpoint: bf16 sparsity 100%, or dW = 0); and an accuracy that is
  undefined (not evaluated, NaN, zero problems).

A claim lists the evidence it uses (`Use`); `problems` says what of it is missing or void,
and the claim is then "insufficient data" with those reasons, never "yes" or "no".
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from geopd.report.data import ReportData

# Problems, as missing.csv names them.
MISSING, UNREADABLE, STILL, UNDEFINED = ("missing input", "unreadable input", "did not move",
                                         "accuracy undefined")
KINDS = ("diagnostics", "similarity", "reference", "eval", "metrics")
MISSING_COLUMNS = ["problem", "kind", "subject", "step", "detail", "file", "why", "claims"]


@dataclass(frozen=True)
class Expected:
    """One per-checkpoint file the report reads (path relative to results/)."""

    kind: str             # one of KINDS
    subject: str          # run, reference pair or (eval of a model) model
    step: int | None      # checkpoint step; None for models, pairs, similarity and metrics
    detail: str | None    # matrix set (diagnostics) or benchmark (eval)
    file: str


@dataclass(frozen=True)
class Use:
    """Evidence a claim rests on: one run's endpoint or trajectory diagnostics, its Sim_K
    trajectory, or its accuracy on `bench` at `steps`."""

    run: str
    what: str                   # "endpoint" | "trajectory" | "similarity" | "accuracy"
    bench: str | None = None
    steps: tuple[int, ...] = ()


def expected_inputs(grid: dict) -> list[Expected]:
    """The grid's per-checkpoint inputs (empty for a grid.json without "inputs")."""
    inputs = grid.get("inputs") or {}
    out = [Expected("diagnostics", run, int(step), matrices, f)
           for run, step, matrices, f in inputs.get("diagnostics", [])]
    out += [Expected("similarity", run, None, None, f) for run, f in inputs.get("similarity", {}).items()]
    out += [Expected("reference", pair, None, "all", f) for pair, f in inputs.get("reference", {}).items()]
    out += [Expected("eval", subject, None if step == "model" else int(step), bench, f)
            for subject, step, bench, f in inputs.get("eval", [])]
    out += [Expected("metrics", run, None, None, f) for run, f in inputs.get("metrics", {}).items()]
    return out


def input_files(grid: dict) -> list[str]:
    """Every expected input's path relative to results/ (what report_partial takes if present)."""
    return [e.file for e in expected_inputs(grid)]


def find_missing(grid: dict, results: Path) -> list[dict]:
    """One row per expected input that does not exist under `results`."""
    return [missing_row(e, MISSING, "does not exist") for e in expected_inputs(grid)
            if not (results / e.file).exists()]


def missing_row(e: Expected, problem: str, why: str) -> dict:
    return {"problem": problem, "kind": e.kind, "subject": e.subject, "step": e.step, "detail": e.detail,
            "file": e.file, "why": why}


def unreadable_rows(grid: dict, results: Path, errors: list[tuple[Path, str]]) -> list[dict]:
    """Rows for inputs that exist but could not be read (partial reports skip them)."""
    by_file = {e.file: e for e in expected_inputs(grid)}
    rows = []
    for path, why in errors:
        try:
            rel = Path(path).resolve().relative_to(results.resolve()).as_posix()
        except ValueError:
            rel = str(path)
        e = by_file.get(rel, Expected("other", "", None, None, rel))
        rows.append(missing_row(e, UNREADABLE, why))
    return rows


# ---- what one use needs ---------------------------------------------------------------------------

def needed(data: "ReportData", use: Use) -> list[Expected]:
    """The expected inputs a use reads (empty where the grid lists none)."""
    def hit(e: Expected) -> bool:
        if e.subject != use.run:
            return False
        if use.what == "endpoint":
            return e.kind == "diagnostics" and e.step == data.final_step(use.run) and e.detail == data.endpoint_matrices
        if use.what == "trajectory":
            return e.kind == "diagnostics" and e.detail == data.trajectory_matrices
        if use.what == "similarity":
            return e.kind == "similarity"
        if use.what == "accuracy":
            return e.kind == "eval" and e.detail == use.bench and e.step in use.steps
        raise ValueError(f"unknown use {use.what!r}")
    return [e for e in data.expected if hit(e)]


def _absent(data: "ReportData", use: Use) -> list[str]:
    """What the aggregated tables lack for a use (in-memory data has no file list)."""
    run = use.run
    if use.what == "endpoint":
        return [] if data.endpoint(run) is not None else [f"no endpoint diagnosis of {run}"]
    if use.what == "trajectory":
        return [] if len(data.trajectory(run, "stable_rank")) else [f"no stable-rank trajectory of {run}"]
    if use.what == "similarity":
        return [] if len(data.sim_series(run)) else [f"no Sim_K trajectory of {run}"]
    out = []
    for step in use.steps:
        rows = data.accuracy_rows(run, use.bench, step)
        if rows.empty:
            out.append(f"no accuracy of {run} at step {step} on {use.bench}")
    return out


def undefined_accuracy(rows: pd.DataFrame) -> str | None:
    """Why an evaluation's accuracy is undefined (NaN or zero problems), or None."""
    values = pd.to_numeric(rows["value"], errors="coerce")
    n = pd.to_numeric(rows["n"], errors="coerce") if "n" in rows.columns else pd.Series(dtype=float)
    if values.isna().all():
        return "accuracy is NaN"
    if n.isna().all():
        return "number of problems not recorded"
    if (n.fillna(0) <= 0).all():
        return "n = 0 problems"
    return None


def _undefined(data: "ReportData", use: Use) -> list[str]:
    out = []
    files = {e.step: e.file for e in needed(data, use)}
    for step in use.steps:
        rows = data.accuracy_rows(use.run, use.bench, step)
        why = undefined_accuracy(rows) if len(rows) else None
        if why:
            where = files.get(step) or f"{use.run} at step {step} on {use.bench}"
            out.append(f"{where}: {why}")
    return out


def problems(data: "ReportData", uses: list[Use]) -> list[str]:
    """Why the evidence of `uses` cannot decide a claim (empty: it can)."""
    out: list[str] = []
    missing = {m["file"]: m for m in data.missing}
    for run in dict.fromkeys(u.run for u in uses):
        if data.stillness(run):
            out.append(f"{run} did not move: " + "; ".join(data.stillness(run)))
    for use in uses:
        gone = [missing[e.file] for e in needed(data, use) if e.file in missing]
        if gone:
            out += [f"missing {m['file']}" + ("" if m["problem"] == MISSING else f" ({m['why']})") for m in gone]
            continue
        out += _absent(data, use)
        if use.what == "accuracy":
            out += _undefined(data, use)
    return list(dict.fromkeys(out))


# ---- runs that did not move --------------------------------------------------------------------------

def _all_at(df: pd.DataFrame, col: str, value: float) -> bool:
    """Every row of `col` is exactly `value` (False when the column is absent or has gaps)."""
    if col not in df.columns or df.empty:
        return False
    v = pd.to_numeric(df[col], errors="coerce")
    return bool(v.notna().all() and (v == value).all())


def _all_zero(df: pd.DataFrame, col: str) -> bool:
    return _all_at(df, col, 0.0)


def stillness(data: "ReportData", run: str) -> list[str]:
    """Why `run` is no evidence of what training does: no update, zero gradient or unchanged
    weights, from its training log and the diagnosis of its final checkpoint. Empty when it
    moved (or when neither is there to say)."""
    files = {(e.kind, e.step, e.detail): e.file for e in data.expected if e.subject == run}
    out = []
    log = data.metrics.get(run)
    log_name = files.get(("metrics", None, None), f"runs/{run}/metrics.jsonl")
    if log is not None:
        if log.empty:
            out.append(f"{log_name} logs no training step")
        elif _all_zero(log, "updates"):
            reward = "; reward 0 at every step" if _all_zero(log, "reward") else ""
            out.append(f"no optimizer update in {len(log)} logged steps ({log_name}: updates = 0{reward})")
        elif _all_zero(log, "grad_norm"):
            out.append(f"zero gradient in all {len(log)} logged steps ({log_name}: grad_norm = 0)")
    s, step = data.summary, data.final_step(run)
    # Only the final checkpoint says whether the run moved: early checkpoints may not have yet.
    latest = s[(s["kind"] == "run") & (s["run"] == run) & (s["scope"] == "all") & (s["step"] == step)] \
        if not s.empty and step is not None else s.iloc[0:0]
    if len(latest):
        where = ", ".join(files.get(("diagnostics", step, m), f"diagnosis {m}") for m in latest["matrices"])
        if _all_at(latest, "bf16_sparsity", 1.0):
            out.append(f"no weight changed by step {step} ({where}: bf16 sparsity 100%)")
        elif _all_at(latest, "frobenius", 0.0):
            out.append(f"dW = 0 at step {step} ({where})")
    return out


# ---- the missing.md table -------------------------------------------------------------------------------

def missing_frame(data: "ReportData", claim_uses: dict[str, list[Use]] | None = None) -> pd.DataFrame:
    """Every missing or unreadable input, every run that did not move and every undefined
    accuracy, with the claims each one voids."""
    claim_uses = claim_uses or {}
    needs = {cid: {e.file for u in uses for e in needed(data, u)} for cid, uses in claim_uses.items()}
    rows = [dict(m) for m in data.missing]
    for run in data.runs:
        for why in data.stillness(run):
            rows.append({"problem": STILL, "kind": "run", "subject": run, "step": None, "detail": None,
                         "file": None, "why": why,
                         "claims": ", ".join(c for c, uses in claim_uses.items() if any(u.run == run for u in uses))})
    missing = {m["file"] for m in data.missing}
    for e in data.expected:
        if e.kind != "eval" or e.file in missing:
            continue
        rows_e = data.accuracy_rows(e.subject, e.detail, e.step, kind="model" if e.step is None else "run")
        why = undefined_accuracy(rows_e) if len(rows_e) else None
        if why:
            rows.append({**missing_row(e, UNDEFINED, why)})
    for row in rows:
        if row.get("file") and "claims" not in row:
            row["claims"] = ", ".join(c for c, files in needs.items() if row["file"] in files)
    frame = pd.DataFrame(rows, columns=MISSING_COLUMNS)
    frame["step"] = pd.to_numeric(frame["step"], errors="coerce").astype("Int64")
    return frame


def notes(data: "ReportData", kinds: tuple[str, ...], runs: list[str] | None = None, limit: int = 12) -> list[str]:
    """Markdown notes for a table: its missing inputs (of `kinds`) and its runs that did not move."""
    out = []
    runs = list(dict.fromkeys(r for r in runs if r)) if runs is not None else None
    gone = [m for m in data.missing if m["kind"] in kinds and (runs is None or m["subject"] in runs
                                                                or m["kind"] in ("reference", "other"))]
    if gone:
        listed = ", ".join(f"`{m['file']}`" + ("" if m["problem"] == MISSING else f" ({m['why']})")
                           for m in gone[:limit])
        more = f" and {len(gone) - limit} more" if len(gone) > limit else ""
        out.append(f"**Missing inputs ({len(gone)})**: {listed}{more} (all of them in missing.md). "
                   "Their cells are empty.")
    still = [(r, data.stillness(r)) for r in (runs if runs is not None else list(data.runs)) if data.stillness(r)]
    if still:
        out.append("**Runs that did not move** (no evidence for any claim): "
                   + "; ".join(f"{r}: {'; '.join(why)}" for r, why in still) + ".")
    return out
