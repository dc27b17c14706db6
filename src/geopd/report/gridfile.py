"""The grid description the report reads (results/grid.json) and the inputs it expects.

The grid_spec rule writes `Grid.report_spec()` here: runs -> {family, method, teacher, init,
w0, start_step, checkpoints, eval, diagnostics, projection, extrapolation, objective,
rollout_source}, benchmarks, teachers, reference_pairs, diagnostics settings, name, and
"inputs": every per-checkpoint file the report reads, relative to results/. Aggregation reads
exactly those files (never a glob of the tree, which would also pick up stale ones), and a
report built from what exists names those that are missing or unreadable.

Torch- and pandas-free: the Snakefile reads it while it builds the DAG (report_partial).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from geopd.errors import UserError
from geopd.io.jsonarg import parse_json_arg

EMPTY_GRID = {"name": "", "runs": {}, "benchmarks": {}, "teachers": {}, "reference_pairs": {},
              "diagnostics": {}}

# Problems, as missing.csv names them.
MISSING, UNREADABLE, STILL, UNDEFINED = ("missing input", "unreadable input", "did not move",
                                         "accuracy undefined")
NO_SIGNAL = "reward never varied"   # an alpha-mix run that trained as scaled OPD
NO_TEACHER = "teacher no stronger"  # a distilled run whose teacher scored no higher than its anchor
KINDS = ("diagnostics", "similarity", "reference", "eval", "metrics")


def _check(spec, where: str) -> dict:
    if not isinstance(spec, dict) or not isinstance(spec.get("runs"), dict):
        raise UserError(f"{where}: expected an object with a 'runs' mapping (Grid.report_spec())")
    return spec


def write_grid(text: str, out: str | Path) -> Path:
    """The grid description (JSON text of Grid.report_spec()), checked, to `out`."""
    spec = _check(parse_json_arg(text, "--spec"), "--spec")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    return out


def read_grid(path: Path) -> dict:
    if not path.exists():
        raise UserError(f"{path}: no grid description (written by the grid_spec rule: "
                        f"geopd report grid --spec JSON --out {path})")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    _check(spec, str(path))
    for name, run in spec["runs"].items():
        if not isinstance(run, dict) or not isinstance(run.get("checkpoints"), list):
            raise UserError(f"{path}: runs.{name}: expected an object with a 'checkpoints' list")
    return {**EMPTY_GRID, **spec}


@dataclass(frozen=True)
class Expected:
    """One per-checkpoint file the report reads (path relative to results/)."""

    kind: str             # one of KINDS
    subject: str          # run, reference pair or (eval of a model) model
    step: int | None      # checkpoint step; None for models, pairs, similarity and metrics
    detail: str | None    # matrix set (diagnostics, reference) or benchmark (eval)
    file: str


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
