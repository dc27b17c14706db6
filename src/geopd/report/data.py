"""Everything the tables, figures and claims read: the grid description and the aggregated
results, with the look-ups they share (which run plays SFT / OPD / RLVR, endpoint and
trajectory diagnostics, accuracy per step, an init's accuracy).

The grid description is `Grid.report_spec()` (R/grid.json, geopd.report.gridfile), with the
per-checkpoint inputs it expects. A missing aggregated file reads as an empty table (with a
warning): a miniature grid may lack rows, and every consumer says "no data" rather than failing
or inventing numbers. `missing` lists the expected inputs that do not exist (or could not be
read) under `results`; `stillness` says why a run is no evidence (it did not move).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from geopd.config import mask_alphas
from geopd.diagnostics.columns import at_alpha
from geopd.errors import UserError
from geopd.io.jsonl import numbered_jsonl
from geopd.paths import Layout, samples_file
from geopd.report import gridfile
from geopd.report.aggregate import EVAL_COLUMNS, aggregate_diagnostics, aggregate_eval, warn
from geopd.report.gridfile import EMPTY_GRID, read_grid

# The controlled comparison: the run of each of these families plays the role.
ROLES = ("SFT", "OPD", "RLVR")
ROLE_FAMILY = {"SFT": "sft", "OPD": "opd", "RLVR": "rlvr"}
ROLE_COLORS = {"SFT": "#1f77b4", "OPD": "#d62728", "RLVR": "#2ca02c"}


@dataclass(frozen=True)
class Origin:
    """Where a run starts: a model (evaluated under eval/models) or a run's checkpoint."""

    kind: str          # "model" | "run"
    name: str
    step: int | None   # for runs: the checkpoint step (the final one when the ref names none)

    def __str__(self) -> str:
        return self.name if self.kind == "model" else f"{self.name}@{self.step}"


# Paths relative to the results root, as grid.json records the inputs (for a grid.json without them).
RELATIVE = Layout(".")

# Columns every consumer may index; an empty or partial table gets them (empty).
FRAME_COLUMNS = {
    "summary": ("kind", "run", "step", "matrices", "scope"),
    "matrices": ("kind", "run", "step", "matrices", "name", "layer", "module", "numel"),
    "similarity": ("run", "step", "name", "module", "sim"),
    "accuracy": tuple(EVAL_COLUMNS),
}


@dataclass
class ReportData:
    grid: dict = field(default_factory=lambda: dict(EMPTY_GRID))
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    matrices: pd.DataFrame = field(default_factory=pd.DataFrame)
    similarity: pd.DataFrame = field(default_factory=pd.DataFrame)
    accuracy: pd.DataFrame = field(default_factory=pd.DataFrame)
    metrics: dict[str, pd.DataFrame] = field(default_factory=dict)   # run -> per-step training log
    searches: dict[str, list[dict]] = field(default_factory=dict)    # run -> EffOPD search log
    missing: list[dict] = field(default_factory=list)                # gridfile.find_missing rows
    results: Path | None = None
    expected: list[gridfile.Expected] = field(init=False, repr=False)
    _still: dict[str, list[str]] = field(init=False, repr=False, default_factory=dict)
    _scores: dict[tuple[str, str], pd.DataFrame] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self):
        self.grid = {**EMPTY_GRID, **(self.grid or {})}
        self.expected = gridfile.expected_inputs(self.grid)
        # spec_json sorts keys; the config's run order comes back from `run_order` when given.
        order = [r for r in self.grid.get("run_order") or [] if r in self.grid["runs"]]
        if order:
            runs = self.grid["runs"]
            self.grid["runs"] = {**{r: runs[r] for r in order}, **{r: v for r, v in runs.items() if r not in order}}
        for name, columns in FRAME_COLUMNS.items():
            df = getattr(self, name).copy()
            for c in columns:
                if c not in df.columns:
                    df[c] = pd.Series(dtype=object)
            df["step"] = pd.to_numeric(df["step"], errors="coerce").astype("Int64")
            setattr(self, name, df)

    # ---- loading -------------------------------------------------------------------------------

    @classmethod
    def load(cls, results: str | Path, grid: str | Path | None = None) -> "ReportData":
        results, layout = Path(results), Layout(results)
        spec = read_grid(Path(grid or layout.grid_file()))
        data = cls(
            grid=spec,
            summary=_read_optional(Path(layout.diagnostics_summary())),
            matrices=_read_optional(Path(layout.diagnostics_matrices())),
            similarity=_read_optional(Path(layout.similarity_summary())),
            accuracy=_read_optional(Path(layout.accuracy_file())),
            missing=gridfile.find_missing(spec, results),
            results=results,
        )
        data._read_logs(lambda path: read_metrics(path))
        return data

    @classmethod
    def from_tree(cls, results: str | Path, grid: str | Path | None = None) -> "ReportData":
        """Aggregated in memory from whichever expected per-checkpoint files exist under `results`
        (the partial report): an unreadable file is skipped and listed, never fatal."""
        results = Path(results)
        spec = read_grid(Path(grid or Layout(results).grid_file()))
        expected = gridfile.expected_inputs(spec)
        errors: list[tuple[Path, str]] = []
        summary, matrices, similarity = aggregate_diagnostics(results, expected, errors)
        accuracy = aggregate_eval(results, expected, errors)
        data = cls(grid=spec, summary=summary, matrices=matrices, similarity=similarity, accuracy=accuracy,
                   missing=gridfile.find_missing(spec, results), results=results)

        def read(path: Path):
            try:
                return read_metrics(path)
            except UserError as exc:
                errors.append((path, str(exc)))
                return None
        data._read_logs(read)
        data.missing += gridfile.unreadable_rows(spec, results, errors)
        return data

    def _read_logs(self, read) -> None:
        files = {e.subject: e.file for e in self.expected if e.kind == "metrics"}
        for run in self.runs:
            path = self.results / files.get(run, RELATIVE.metrics_file(run))
            got = read(path) if path.exists() else None
            if got is not None:
                self.metrics[run], self.searches[run] = got

    # ---- the grid ------------------------------------------------------------------------------

    @property
    def runs(self) -> dict[str, dict]:
        return self.grid["runs"]

    def family(self, family: str) -> list[str]:
        return [r for r, spec in self.runs.items() if spec.get("family") == family]

    def role_run(self, role: str) -> str | None:
        """The run of the controlled comparison that plays SFT, OPD or RLVR (first of its family)."""
        runs = self.family(ROLE_FAMILY[role])
        return runs[0] if runs else None

    def role_runs(self) -> dict[str, str | None]:
        return {role: self.role_run(role) for role in ROLES}

    def role_of(self, run: str) -> str | None:
        return next((role for role, r in self.role_runs().items() if r == run), None)

    def final_step(self, run: str) -> int | None:
        ck = self.runs.get(run, {}).get("checkpoints") or []
        return int(ck[-1]) if ck else None

    def checkpoints(self, run: str) -> list[int]:
        return [int(s) for s in self.runs.get(run, {}).get("checkpoints") or []]

    @property
    def endpoint_matrices(self) -> str:
        return self.grid["diagnostics"].get("endpoint_matrices", "all")

    @property
    def trajectory_matrices(self) -> str:
        return self.grid["diagnostics"].get("trajectory_matrices", "attention")

    @property
    def mask_alphas(self) -> tuple[float, ...]:
        """The update-mask fractions the diagnostics computed overlaps at (config order)."""
        d = self.grid["diagnostics"]
        return mask_alphas(d) if d.get("alpha") is not None else ()

    @property
    def mask_alpha(self) -> float | None:
        """The first of them: the reading Fig. 3, C7 and C8 use (the paper's 30% baseline)."""
        return self.mask_alphas[0] if self.mask_alphas else None

    def overlap_key(self, column: str, alpha: float | None = None) -> str:
        """The summary column of an overlap at alpha (default: the first mask fraction)."""
        return at_alpha(column, self.mask_alpha if alpha is None else alpha)

    @property
    def sim_k(self) -> int | None:
        k = self.grid["diagnostics"].get("sim_k")
        return int(k) if k is not None else None

    def origin(self, run: str) -> Origin | None:
        text = self.runs.get(run, {}).get("init")
        if not text:
            return None
        name, _, step = str(text).partition("@")
        if name in self.runs:
            return Origin("run", name, int(step) if step else self.final_step(name))
        return Origin("model", name, None)

    # ---- diagnostics ---------------------------------------------------------------------------

    def _rows(self, run: str, matrices: str, scope: str = "all", kind: str = "run") -> pd.DataFrame:
        s = self.summary
        if s.empty:
            return s
        return s[(s["kind"] == kind) & (s["run"] == run) & (s["matrices"] == matrices) & (s["scope"] == scope)]

    def endpoint(self, run: str, scope: str = "all") -> dict | None:
        """Summary row of the run's final checkpoint on the endpoint matrix set."""
        rows = self._rows(run, self.endpoint_matrices, scope)
        final = self.final_step(run)
        rows = rows[rows["step"] == final] if final is not None and not rows.empty else rows.iloc[0:0]
        return rows.iloc[0].to_dict() if len(rows) else None

    def endpoint_matrix_rows(self, run: str) -> pd.DataFrame:
        """Per-matrix rows of the run's final checkpoint on the endpoint matrix set."""
        m, final = self.matrices, self.final_step(run)
        if m.empty or final is None:
            return m.iloc[0:0]
        return m[(m["kind"] == "run") & (m["run"] == run) & (m["step"] == final)
                 & (m["matrices"] == self.endpoint_matrices)]

    def representative_layer(self, run: str) -> int | None:
        """The layer the paper's "representative layer" figures stand for: the config's
        `diagnostics.representative_layer`, else the middle one (L // 2 of the run's L
        diagnosed layers; the paper's text does not say which layer it shows)."""
        layer = self.grid["diagnostics"].get("representative_layer")
        if layer is not None:
            return int(layer)
        layers = pd.to_numeric(self.endpoint_matrix_rows(run)["layer"], errors="coerce").dropna()
        return int(layers.max() + 1) // 2 if len(layers) else None

    def layer_mean(self, run: str, layer: int | None, column: str) -> float:
        """Unweighted mean of a per-matrix metric over one layer's matrices at the endpoint
        ("angle_mean_deg": the mean of the left and right mean angles, as the summary has it)."""
        rows = self.endpoint_matrix_rows(run)
        if layer is None or rows.empty:
            return math.nan
        rows = rows[pd.to_numeric(rows["layer"], errors="coerce") == layer]
        if column == "angle_mean_deg":
            v = (pd.to_numeric(rows["angle_u_mean_deg"], errors="coerce")
                 + pd.to_numeric(rows["angle_v_mean_deg"], errors="coerce")) / 2
        else:
            v = pd.to_numeric(rows[column], errors="coerce") if column in rows.columns else pd.Series(dtype=float)
        v = v[np.isfinite(v)]
        return float(v.mean()) if len(v) else math.nan

    def reference(self, pair: str, scope: str = "all") -> dict | None:
        rows = self.summary
        if rows.empty:
            return None
        rows = rows[(rows["kind"] == "reference") & (rows["run"] == pair) & (rows["scope"] == scope)]
        return rows.iloc[0].to_dict() if len(rows) else None

    def trajectory(self, run: str, metric: str, scope: str = "all") -> pd.Series:
        """Metric (summary mean over the trajectory matrix set) per checkpoint step, ascending."""
        rows = self._rows(run, self.trajectory_matrices, scope)
        if rows.empty or metric not in rows.columns:
            return pd.Series(dtype=float, name=metric)
        out = pd.to_numeric(rows.set_index("step")[metric], errors="coerce").astype(float)
        out.index = out.index.astype(int)
        return out[np.isfinite(out)].sort_index()

    def sim_series(self, run: str) -> pd.DataFrame:
        """Mean, min, max and count of defined Sim_K per checkpoint step."""
        s = self.similarity
        if s.empty:
            return pd.DataFrame(columns=["mean", "min", "max", "count"])
        rows = s[s["run"] == run].dropna(subset=["step"])
        if rows.empty:
            return pd.DataFrame(columns=["mean", "min", "max", "count"])
        g = pd.to_numeric(rows["sim"], errors="coerce").groupby(rows["step"].astype(int))
        return pd.DataFrame({"mean": g.mean(), "min": g.min(), "max": g.max(), "count": g.count()}).sort_index()

    # ---- accuracy ------------------------------------------------------------------------------

    def benchmarks(self, run: str) -> list[str]:
        return list(self.runs.get(run, {}).get("eval") or [])

    def eval_steps(self, run: str, bench: str) -> list[int]:
        """The steps at which the grid evaluates `bench` on `run` (checkpoints, and `eval_at`)."""
        at = (self.runs.get(run, {}).get("eval_steps") or {}).get(bench)
        if at is None:
            return self.checkpoints(run) if bench in self.benchmarks(run) else []
        return [int(s) for s in at]

    def primary_metric(self, bench: str) -> str | None:
        """avg@k where the benchmark has one (the papers' headline figure), else pass@1."""
        a = self.accuracy
        names = sorted(set(a.loc[a["benchmark"] == bench, "metric"])) if not a.empty else []
        for prefix in ("avg@", "pass@1"):
            hit = [m for m in names if m.startswith(prefix)]
            if hit:
                return hit[0]
        return names[0] if names else None

    def _acc(self, subject: str, kind: str, bench: str, metric: str | None) -> pd.DataFrame:
        a = self.accuracy
        metric = metric or self.primary_metric(bench)
        if a.empty or metric is None:
            return a.iloc[0:0]
        return a[(a["subject"] == subject) & (a["kind"] == kind) & (a["benchmark"] == bench)
                 & (a["metric"] == metric)]

    def accuracy_series(self, run: str, bench: str, metric: str | None = None) -> pd.Series:
        rows = self._acc(run, "run", bench, metric).dropna(subset=["step"])
        out = pd.Series(pd.to_numeric(rows["value"]).to_numpy(dtype=float),
                        index=rows["step"].astype(int).to_numpy(), name=metric or bench)
        return out[~out.index.duplicated(keep="last")].sort_index()

    def accuracy_n(self, subject: str, bench: str, step: int | None = None, kind: str = "run") -> int | None:
        """Number of problems behind an accuracy (for its standard error)."""
        rows = self._acc(subject, kind, bench, None)
        if step is not None:
            rows = rows[rows["step"] == step]
        n = pd.to_numeric(rows["n"], errors="coerce").dropna() if "n" in rows.columns else []
        return int(n.iloc[0]) if len(n) else None

    def accuracy_rows(self, subject: str, bench: str | None, step: int | None, kind: str = "run") -> pd.DataFrame:
        """Every metric of one evaluation (a run's checkpoint, or a model when step is None)."""
        a = self.accuracy
        if a.empty:
            return a
        rows = a[(a["subject"] == subject) & (a["kind"] == kind) & (a["benchmark"] == bench)]
        return rows[rows["step"].isna()] if step is None else rows[rows["step"] == step]

    def problem_scores(self, run: str, bench: str) -> pd.DataFrame:
        """Per-problem accuracy (mean correctness of its samples) of each evaluated step of a run:
        problems x steps, from the evaluations' per-sample files (`<bench>.samples.jsonl` beside
        each expected `<bench>.json`). Empty without a results tree; a step whose file is
        missing or unreadable is left out. Cached: the table, a figure and a claim ask."""
        if (run, bench) not in self._scores:
            self._scores[run, bench] = self._problem_scores(run, bench)
        return self._scores[run, bench]

    def _problem_scores(self, run: str, bench: str) -> pd.DataFrame:
        if self.results is None:
            return pd.DataFrame()
        columns = {}
        for e in self.expected:
            if e.kind != "eval" or e.subject != run or e.detail != bench or e.step is None:
                continue
            path = self.results / samples_file(e.file)
            try:
                rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                hits = pd.DataFrame({"id": [str(r["id"]) for r in rows],
                                     "correct": [float(bool(r["correct"])) for r in rows]})
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if len(hits):
                columns[e.step] = hits.groupby("id", sort=True)["correct"].mean()
        return pd.DataFrame(columns).sort_index(axis=1) if columns else pd.DataFrame()

    def model_accuracy(self, model: str, bench: str, metric: str | None = None) -> float | None:
        rows = self._acc(model, "model", bench, metric)
        return float(rows["value"].iloc[0]) if len(rows) else None

    def origin_accuracy(self, run: str, bench: str, metric: str | None = None) -> tuple[float, str] | None:
        """Accuracy of the run's init on `bench` where it was evaluated, with its label."""
        o = self.origin(run)
        if o is None:
            return None
        if o.kind == "model":
            v = self.model_accuracy(o.name, bench, metric)
        else:
            s = self.accuracy_series(o.name, bench, metric)
            v = float(s[o.step]) if o.step in s.index else None
        return (v, str(o)) if v is not None and math.isfinite(v) else None

    # ---- runs that did not move -------------------------------------------------------------

    def stillness(self, run: str) -> list[str]:
        """Why `run` is no evidence of what training does: no update, zero gradient or unchanged
        weights, from its training log and the diagnosis of its final checkpoint. Empty when it
        moved (or when neither is there to say). Cached: every claim and table asks."""
        if run not in self._still:
            self._still[run] = self._stillness(run)
        return self._still[run]

    def no_reward_signal(self, run: str) -> list[str]:
        """Why an alpha-mix run is no evidence for the mix: its task reward never varied within
        a group (every reward 0 on random models), so its RLVR advantage was 0 at every step and
        it trained as a scaled OPD run (Adam turns that into OPD's update). From the training
        log: `reward_varied_samples` 0 at every step, or (logs without it) the mean reward 0 at
        every step, or 1 at every step. Empty for other methods, or when the log cannot say."""
        if self.runs.get(run, {}).get("method") != "mix":
            return []
        log = self.metrics.get(run)
        if log is None or log.empty:
            return []
        name = next((e.file for e in self.expected if e.subject == run and e.kind == "metrics"),
                    RELATIVE.metrics_file(run))
        if "reward_varied_samples" in log.columns:
            if _all_zero(log, "reward_varied_samples"):
                return [f"its reward never varied within a group in {len(log)} logged steps ({name}: "
                        f"reward_varied_samples = 0): the mix's RLVR term was 0, it trained as scaled OPD"]
            return []
        for value in (0.0, 1.0):
            if _all_at(log, "reward", value):
                return [f"every reward was {value:g} in {len(log)} logged steps ({name}): the mix's RLVR "
                        f"term was 0, it trained as scaled OPD"]
        return []

    def no_teacher_signal(self, run: str) -> list[str]:
        """Why a run distilled from a teacher is no evidence of what distillation does: its
        teacher is no stronger than the run's anchor (its init) on any benchmark where both
        were evaluated (random fixture models all score 0), so there was nothing to distill and
        the run's geometry is that of matching one random model to another. Empty when the
        teacher is stronger somewhere, for runs without a teacher, or when no benchmark says."""
        teacher = self.runs.get(run, {}).get("teacher")
        if not teacher:
            return []
        pairs = []
        for bench in self.benchmarks(run):
            t_acc = self.model_accuracy(teacher, bench)
            anchor = self.origin_accuracy(run, bench)
            if t_acc is None or not math.isfinite(t_acc) or anchor is None:
                continue
            if t_acc > anchor[0]:
                return []
            pairs.append(f"{bench} {self.primary_metric(bench) or 'accuracy'} {t_acc:.3f} vs "
                         f"{anchor[1]} {anchor[0]:.3f}")
        if not pairs:
            return []
        return [f"its teacher {teacher} is no stronger than its anchor ({'; '.join(pairs)}): nothing to distill"]

    def _stillness(self, run: str) -> list[str]:
        files = {(e.kind, e.step, e.detail): e.file for e in self.expected if e.subject == run}
        out = []
        log = self.metrics.get(run)
        log_name = files.get(("metrics", None, None), RELATIVE.metrics_file(run))
        if log is not None:
            if log.empty:
                out.append(f"{log_name} logs no training step")
            elif _all_zero(log, "updates"):
                reward = "; reward 0 at every step" if _all_zero(log, "reward") else ""
                out.append(f"no optimizer update in {len(log)} logged steps ({log_name}: updates = 0{reward})")
            elif _all_zero(log, "grad_norm"):
                out.append(f"zero gradient in all {len(log)} logged steps ({log_name}: grad_norm = 0)")
        s, step = self.summary, self.final_step(run)
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


def _all_at(df: pd.DataFrame, col: str, value: float) -> bool:
    """Every row of `col` is exactly `value` (False when the column is absent or has gaps)."""
    if col not in df.columns or df.empty:
        return False
    v = pd.to_numeric(df[col], errors="coerce")
    return bool(v.notna().all() and (v == value).all())


def _all_zero(df: pd.DataFrame, col: str) -> bool:
    return _all_at(df, col, 0.0)


def _read_optional(path: Path) -> pd.DataFrame:
    if not path.exists():
        warn(f"{path} does not exist; treated as empty")
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable CSV table ({exc})") from None


def read_metrics(path: Path) -> tuple[pd.DataFrame, list[dict]]:
    """The trainer's per-step log: a frame of the scalar columns, and EffOPD search entries."""
    rows, searches = [], []
    for i, row in numbered_jsonl(path):
        if not isinstance(row, dict) or "step" not in row:
            raise UserError(f"{path}: line {i} has no 'step'")
        search = row.pop("extrapolation", None)
        if isinstance(search, dict):
            searches.append({"step": row["step"], **search})
        rows.append({k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values("step").drop_duplicates("step", keep="last").reset_index(drop=True)
    return df, searches
