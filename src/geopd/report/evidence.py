"""What a result may rest on: the inputs a claim needs, and whether they void it.

Two things void a number, and both are named rather than skipped:

- a missing input: a per-checkpoint file the grid expects (grid.json "inputs", written by
  Grid.report_spec; geopd.report.gridfile) that does not exist under results/, or that exists
  but cannot be read;
- a run that did not move (ReportData.stillness): it made no optimizer update (metrics.jsonl:
  updates = 0 at every step), its gradient was zero at every step, or its weights did not
  change (the diagnosis of its final checkpoint: bf16 sparsity 100%, or dW = 0); an alpha-mix
  run whose reward never varied (ReportData.no_reward_signal: its RLVR term was 0, so it is no
  evidence for the mix); a distilled run whose teacher scored no higher than its anchor on
  every benchmark both were evaluated on (ReportData.no_teacher_signal: nothing to distill, as
  on the fixture's random models); and an accuracy that is undefined (not evaluated, NaN, zero
  problems).

A claim lists the evidence it uses (`Use`); `problems` says what of it is missing or void,
and the claim is then "insufficient data" with those reasons, never "yes" or "no".
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from geopd.report.data import ReportData
from geopd.report.gridfile import MISSING, NO_SIGNAL, NO_TEACHER, STILL, UNDEFINED, Expected, missing_row

MISSING_COLUMNS = ["problem", "kind", "subject", "step", "detail", "file", "why", "claims"]


@dataclass(frozen=True)
class Use:
    """Evidence a claim rests on: one run's endpoint or trajectory diagnostics, its Sim_K
    trajectory, or its accuracy on `bench` at `steps`."""

    run: str
    what: str                   # "endpoint" | "trajectory" | "similarity" | "accuracy"
    bench: str | None = None
    steps: tuple[int, ...] = ()


# ---- what one use needs ---------------------------------------------------------------------------

def needed(data: ReportData, use: Use) -> list[Expected]:
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


def _absent(data: ReportData, use: Use) -> list[str]:
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


def _undefined(data: ReportData, use: Use) -> list[str]:
    out = []
    files = {e.step: e.file for e in needed(data, use)}
    for step in use.steps:
        rows = data.accuracy_rows(use.run, use.bench, step)
        why = undefined_accuracy(rows) if len(rows) else None
        if why:
            where = files.get(step) or f"{use.run} at step {step} on {use.bench}"
            out.append(f"{where}: {why}")
    return out


def problems(data: ReportData, uses: list[Use]) -> list[str]:
    """Why the evidence of `uses` cannot decide a claim (empty: it can)."""
    out: list[str] = []
    missing = {m["file"]: m for m in data.missing}
    for run in dict.fromkeys(u.run for u in uses):
        if data.stillness(run):
            out.append(f"{run} did not move: " + "; ".join(data.stillness(run)))
        if data.no_reward_signal(run):
            out.append(f"{run} is no evidence for the mix: " + "; ".join(data.no_reward_signal(run)))
        if data.no_teacher_signal(run):
            out.append(f"{run} is no evidence of distillation: " + "; ".join(data.no_teacher_signal(run)))
    for use in uses:
        gone = [missing[e.file] for e in needed(data, use) if e.file in missing]
        if gone:
            out += [f"missing {m['file']}" + ("" if m["problem"] == MISSING else f" ({m['why']})") for m in gone]
            continue
        out += _absent(data, use)
        if use.what == "accuracy":
            out += _undefined(data, use)
    return list(dict.fromkeys(out))


# ---- the missing.md table -------------------------------------------------------------------------------

def missing_frame(data: ReportData, claim_uses: dict[str, list[Use]] | None = None) -> pd.DataFrame:
    """Every missing or unreadable input, every run that did not move and every undefined
    accuracy, with the claims each one voids."""
    claim_uses = claim_uses or {}
    needs = {cid: {e.file for u in uses for e in needed(data, u)} for cid, uses in claim_uses.items()}
    rows = [dict(m) for m in data.missing]
    for run in data.runs:
        for problem, whys in ((STILL, data.stillness(run)), (NO_SIGNAL, data.no_reward_signal(run)),
                              (NO_TEACHER, data.no_teacher_signal(run))):
            for why in whys:
                rows.append({"problem": problem, "kind": "run", "subject": run, "step": None, "detail": None,
                             "file": None, "why": why, "claims": ", ".join(
                                 c for c, uses in claim_uses.items() if any(u.run == run for u in uses))})
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


def notes(data: ReportData, kinds: tuple[str, ...], runs: list[str] | None = None, limit: int = 12) -> list[str]:
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
    flat = [(r, data.no_reward_signal(r)) for r in (runs if runs is not None else list(data.runs))
            if data.no_reward_signal(r)]
    if flat:
        out.append("**Mix runs whose reward never varied** (no evidence for the mix): "
                   + "; ".join(f"{r}: {'; '.join(why)}" for r, why in flat) + ".")
    weak = [(r, data.no_teacher_signal(r)) for r in (runs if runs is not None else list(data.runs))
            if data.no_teacher_signal(r)]
    if weak:
        out.append("**Runs whose teacher was no stronger than their anchor** (no evidence of distillation): "
                   + "; ".join(f"{r}: {'; '.join(why)}" for r, why in weak) + ".")
    return out
