"""Per-checkpoint outputs -> tidy tables (`geopd report aggregate-diagnostics|aggregate-eval`).

The files read are those the grid expects (grid.json "inputs", geopd.report.gridfile): the
aggregate rules' inputs, whichever way job_grouping cuts the jobs that write them. Nothing is
globbed, so a stale file of a run no longer in the config never reaches a table.

Diagnostics: each R/diagnostics/<run>/step-<N>.<matrices>.csv (per-matrix rows of
`geopd diagnose`), R/diagnostics/reference/<pair>.all.csv and R/diagnostics/<run>/similarity.csv.
The summary is derived from the per-matrix CSVs alone (the JSON summaries beside them only add
the update norms of tensors outside the matrix set and a cross-check), so the tables never
depend on the JSON layout:

- bf16_sparsity is parameter-count weighted, sum(numel * x) / sum(numel) (SPEC: "Overall
  figure is parameter-count weighted"); with the JSON summary's embedding tensors
  (embed_tokens, lm_head) also `bf16_sparsity_with_embeddings`, over those and the matrices;
- every other metric, the update density included, is the unweighted mean over matrices of its
  finite values (App. C.3: "Metrics are first computed per matrix and then averaged across
  matrices"); a NaN overlap (nothing changed) or an infinite Hill estimate is left out, as
  `geopd diagnose` does;
- the overlaps at each mask fraction alpha the tables hold (`princ_overlap@0.3`, ...), and
  *_overlap_pooled@alpha = sum |M* & M_upd| / sum |M_upd| when the count columns are there.
Scopes: all matrices, each group (attention, mlp) and each module type (q .. down).

Evaluation: each R/eval/<run>/step-<N>/<bench>.json and R/eval/models/<model>/<bench>.json ->
subject, kind (run|model), step, benchmark, metric, value, n, samples_per_problem.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from geopd.diagnostics.columns import ATTENTION, METRICS, MODULES, OVERLAPS, alphas_of, at_alpha, overlap_columns
from geopd.errors import UserError
from geopd.report.gridfile import Expected

# Columns of `geopd diagnose`'s per-matrix table that the report reads.
ID_COLUMNS = ("name", "layer", "module", "numel", "bf16_sparsity")
WEIGHTED = ("bf16_sparsity",)
MEANS = tuple(m for m in METRICS if m not in WEIGHTED) + ("angle_mean_deg", "angle_max_deg")
KEYS = ("kind", "run", "step", "matrices")
SIMILARITY_COLUMNS = ("step", "name", "sim")
NORM_GROUPS = ("embedding", "attention", "mlp", "other", "total")


def warn(message: str) -> None:
    print(f"geopd report: warning: {message}", file=sys.stderr)


def read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable CSV table ({exc})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


# ---- diagnostics -------------------------------------------------------------------------------

def read_matrix_table(path: Path) -> pd.DataFrame:
    """One per-matrix CSV, with the metric columns it lacks as NaN (warned, never filled in)."""
    df = read_csv(path, ID_COLUMNS)
    lacking = [m for m in METRICS if m not in df.columns]
    if lacking:
        warn(f"{path}: no column(s) {', '.join(lacking)}; those metrics stay empty "
             f"(update_density, when absent, is 1 - bf16_sparsity by definition)")
        for m in lacking:
            df[m] = 1.0 - df["bf16_sparsity"] if m == "update_density" else np.nan
    for m in METRICS + ("numel",) + tuple(overlap_columns(df.columns)):
        df[m] = pd.to_numeric(df[m], errors="coerce")
    if "group" not in df.columns:
        df["group"] = np.where(df["module"].isin(ATTENTION), "attention", "mlp")
    bad = df["numel"].isna() | (df["numel"] <= 0)
    if bad.any():
        raise UserError(f"{path}: matrix {df.loc[bad, 'name'].iloc[0]} has no positive numel")
    return df


def _finite_mean(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def _columns(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """The numeric columns summaries read, as numpy arrays: summaries run for every scope of
    every diagnosis (hundreds at paper scale), and pandas indexing per scope dominated."""
    a = {c: pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
         for c in (*METRICS, "numel", "n_changed", *overlap_columns(df.columns)) if c in df.columns}
    a["angle_mean_deg"] = (a["angle_u_mean_deg"] + a["angle_v_mean_deg"]) / 2
    a["angle_max_deg"] = np.fmax(a["angle_u_max_deg"], a["angle_v_max_deg"])
    return a


def summarize_matrices(df: pd.DataFrame) -> dict:
    """Weighted sparsity/density, pooled overlaps and unweighted means of one set of matrices."""
    return _summarize(_columns(df))


def _summarize(a: dict[str, np.ndarray], rows: np.ndarray | None = None) -> dict:
    if rows is not None:
        a = {c: v[rows] for c, v in a.items()}
    numel = a["numel"]
    out: dict = {"n_matrices": int(len(numel)), "numel": int(numel.sum())}
    for m in WEIGHTED:
        ok = np.isfinite(a[m])
        out[m] = float((numel[ok] * a[m][ok]).sum() / numel[ok].sum()) if ok.any() else math.nan
    for m in MEANS:
        out[m] = _finite_mean(a[m])
    changed = float(a["n_changed"].sum()) if "n_changed" in a else math.nan
    for alpha in alphas_of(a):
        for column, count in OVERLAPS.items():
            if at_alpha(column, alpha) in a:
                out[at_alpha(column, alpha)] = _finite_mean(a[at_alpha(column, alpha)])
            pooled = at_alpha(f"{column}_pooled", alpha)
            out[pooled] = (float(a[at_alpha(count, alpha)].sum()) / changed
                           if at_alpha(count, alpha) in a and changed else math.nan)
    return out


def scopes(df: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
    """(scope, row mask): all matrices, each group (attention, mlp), each module type."""
    group, module = df["group"].to_numpy(), df["module"].to_numpy()
    out = [("all", np.ones(len(df), dtype=bool))]
    out += [(g, group == g) for g in ("attention", "mlp") if (group == g).any()]
    out += [(m, module == m) for m in MODULES if (module == m).any()]
    return out


def json_extras(path: Path, ours: dict) -> dict:
    """Update norms per module group from the JSON summary (covers embeddings too), and a
    cross-check of its overall sparsity against ours."""
    if not path.exists():
        return {}
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    out = {}
    emb = (summary.get("extra_tensors") or {}).get("embedding") or {}
    if isinstance(emb.get("numel"), int) and emb["numel"] > 0 and math.isfinite(ours["bf16_sparsity"]):
        # Table 1's "all analyzed weight parameters": the matrices and embed_tokens / lm_head
        changed_emb = emb.get("n_changed")
        if not isinstance(changed_emb, int):  # summaries before the count was written
            changed_emb = round((1.0 - float(emb["bf16_sparsity"])) * emb["numel"])
        changed = (1.0 - ours["bf16_sparsity"]) * ours["numel"] + changed_emb
        out["bf16_sparsity_with_embeddings"] = 1.0 - changed / (ours["numel"] + emb["numel"])
    norms = summary.get("module_norms") or {}
    for g in NORM_GROUPS:
        if isinstance(norms.get(g), (int, float)):
            out[f"norm_{g}"] = float(norms[g])
    theirs = (summary.get("overall") or {}).get("bf16_sparsity")
    if isinstance(theirs, (int, float)) and math.isfinite(ours["bf16_sparsity"]) \
            and abs(theirs - ours["bf16_sparsity"]) > 1e-6:
        warn(f"{path}: overall bf16_sparsity {theirs:.6f} differs from the CSV's {ours['bf16_sparsity']:.6f}")
    return out


def _diagnosis_files(results: Path, expected: list[Expected]) -> list[tuple[str, str, int | None, str, Path]]:
    """(kind, run, step, matrices, csv path) of every expected diagnosis, runs first."""
    out = [("run" if e.kind == "diagnostics" else "reference", e.subject, e.step, e.detail, results / e.file)
           for e in expected if e.kind in ("diagnostics", "reference")]
    out.sort(key=lambda t: (t[0] != "run", t[1], -1 if t[2] is None else t[2], t[3]))
    return out


def _tolerant(read, path: Path, errors: list | None):
    """read(path), or with an `errors` list: None and (path, message) appended on a bad file
    (the partial report skips and lists it; the complete report stops on it)."""
    if errors is None:
        return read(path)
    try:
        return read(path)
    except UserError as exc:
        errors.append((path, str(exc)))
        return None


def _read_input(read, path: Path, errors: list | None):
    """An expected input, read as `_tolerant` reads. One that does not exist stops the complete
    report (it is one of the aggregate rule's inputs) and is skipped by the partial one (whose
    missing.md lists it)."""
    if not path.exists():
        if errors is None:
            raise UserError(f"{path}: does not exist (an input the grid expects)")
        return None
    return _tolerant(read, path, errors)


def aggregate_diagnostics(results: str | Path, expected: list[Expected], errors: list | None = None
                          ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(summary, matrices, similarity) tidy tables of the expected diagnoses under `results`."""
    results = Path(results)
    summaries, tables = [], []
    for kind, run, step, matrices, path in _diagnosis_files(results, expected):
        df = _read_input(read_matrix_table, path, errors)
        if df is None:
            continue
        keys = {"kind": kind, "run": run, "step": step, "matrices": matrices}
        tables.append(pd.concat([pd.DataFrame({k: [v] * len(df) for k, v in keys.items()}), df], axis=1))
        columns = _columns(df)
        for scope, rows in scopes(df):
            row = {**keys, "scope": scope, **_summarize(columns, rows)}
            if scope == "all":
                row.update(_tolerant(lambda p: json_extras(p, row), path.with_suffix(".json"), errors) or {})
            summaries.append(row)
    per_alpha = list(dict.fromkeys(c for row in summaries for c in row if "@" in c))
    summary_cols = (list(KEYS) + ["scope", "n_matrices", "numel", *WEIGHTED, "bf16_sparsity_with_embeddings",
                                  *MEANS, *per_alpha] + [f"norm_{g}" for g in NORM_GROUPS])
    summary = pd.DataFrame(summaries).reindex(columns=summary_cols)
    matrices_df = (pd.concat(tables, ignore_index=True) if tables
                   else pd.DataFrame(columns=[*KEYS, *ID_COLUMNS, *METRICS[1:]]))
    for df in (summary, matrices_df):
        df["step"] = df["step"].astype("Int64")
    return summary, matrices_df, aggregate_similarity(results, expected, errors)


def aggregate_similarity(results: Path, expected: list[Expected], errors: list | None = None) -> pd.DataFrame:
    frames = []
    for e in sorted((e for e in expected if e.kind == "similarity"), key=lambda e: e.subject):
        df = _read_input(lambda p: read_csv(p, SIMILARITY_COLUMNS), results / e.file, errors)
        if df is None:
            continue
        df.insert(0, "run", e.subject)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["run", "checkpoint", "step", "name", "layer", "module", "k", "sim"])
    out = pd.concat(frames, ignore_index=True)
    out["step"] = pd.to_numeric(out["step"], errors="coerce").astype("Int64")
    out["sim"] = pd.to_numeric(out["sim"], errors="coerce")
    return out


# ---- evaluation --------------------------------------------------------------------------------

EVAL_COLUMNS = ["subject", "kind", "step", "benchmark", "metric", "value", "n", "samples_per_problem"]


def read_eval(path: Path) -> dict:
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    metrics = result.get("metrics") if isinstance(result, dict) else None
    if not isinstance(metrics, dict) or not metrics:
        raise UserError(f"{path}: no 'metrics' object (expected {{\"avg@8\": ..., ...}})")
    for k, v in metrics.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise UserError(f"{path}: metrics.{k} is not a number: {v!r}")
    return result


def _eval_rows(path: Path, subject: str, kind: str, step: int | None) -> list[dict]:
    result = read_eval(path)
    bench = path.name[:-len(".json")]
    if result.get("benchmark") not in (None, bench):
        warn(f"{path}: benchmark {result['benchmark']!r} in the file, {bench!r} in its name; using the name")
    return [{"subject": subject, "kind": kind, "step": step, "benchmark": bench, "metric": m,
             "value": float(v), "n": result.get("n"), "samples_per_problem": result.get("samples_per_problem")}
            for m, v in result["metrics"].items()]


def aggregate_eval(results: str | Path, expected: list[Expected], errors: list | None = None) -> pd.DataFrame:
    results = Path(results)
    rows: list[dict] = []
    for e in (e for e in expected if e.kind == "eval"):
        kind = "model" if e.step is None else "run"
        rows += _read_input(lambda p: _eval_rows(p, e.subject, kind, e.step), results / e.file, errors) or []
    df = pd.DataFrame(rows, columns=EVAL_COLUMNS)
    df["step"] = df["step"].astype("Int64")
    df = df.sort_values(["kind", "subject", "benchmark", "step", "metric"], kind="stable", ignore_index=True)
    return df


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path
