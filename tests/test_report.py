"""Report package: aggregation, table builders, claims logic, figures (geopd.report)."""
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from geopd.cli import main as geopd_main
from geopd.errors import UserError
from geopd.grid import Grid
from geopd.report import aggregate, claims, tables
from geopd.report.data import ReportData
from geopd.report.figures import FIGURES
from geopd.report.gridfile import Expected, expected_inputs
from geopd.report.markdown import render

MODULES = ("q", "k", "v", "o", "gate", "up", "down")


# ---- a fake results tree shaped like the real rules' outputs -----------------------------------------

def profile(spec: dict, frac: float, flip: bool = False) -> dict:
    """Per-run metric levels at training progress `frac`, shaped like the paper's findings
    (flip=True swaps OPD and RLVR so the ordering claims must fail)."""
    fam, method = spec["family"], spec["method"]
    kind = "sft" if method == "sft" else ("rlvr" if method == "rlvr" else "opd")
    alpha = (spec.get("objective") or {}).get("alpha")
    if flip and kind in ("opd", "rlvr"):
        kind = "rlvr" if kind == "opd" else "opd"
    # po / lo: overlaps at alpha 0.3 (the paper's Fig. 3 reading); po5 / lo5 at 0.5
    base = {
        "sft": dict(sp=0.10, nss=2e-3, ang=12.0, po=0.32, lo=0.32, po5=0.52, lo5=0.52, sr=5 + 10 * frac,
                    fro=1 + 4 * frac, hill=2 + 2 * frac),
        "opd": dict(sp=0.50, nss=3e-4, ang=1.0, po=0.27, lo=0.54, po5=0.45, lo5=0.6, sr=3.0 + 0.1 * frac,
                    fro=0.3 + 0.3 * frac, hill=2.5),
        "rlvr": dict(sp=0.77, nss=2e-5, ang=0.3, po=0.24, lo=0.73, po5=0.40, lo5=0.8, sr=3.6 - 1.5 * frac,
                     fro=0.1 + 0.1 * frac, hill=3 - frac),
    }[kind]
    if fam == "alpha-mix" and alpha is not None and alpha <= 0.05:
        base["sr"] = 3.6 - 1.5 * frac  # weak OPD term: RLVR-like rank dynamics
    if fam == "token-sparse":
        base["sr"] *= 1.05
    return base


def matrix_rows(spec: dict, frac: float, matrices: str, flip: bool = False) -> pd.DataFrame:
    p = profile(spec, frac, flip)
    mods = MODULES[:4] if matrices == "attention" else MODULES
    rows = []
    for layer in range(2):
        for i, m in enumerate(mods):
            wiggle = 1 + 0.02 * (i - 3) + 0.01 * layer
            numel = 64 * 64 if m in ("q", "o") else (32 * 64 if m in ("k", "v") else 256 * 64)
            sp = min(max(p["sp"] * wiggle, 0.0), 1.0)
            changed = round((1 - sp) * numel)
            rows.append({
                "name": f"model.layers.{layer}.{m}", "tensor": f"model.layers.{layer}.{m}", "layer": layer,
                "module": m, "group": "attention" if i < 4 else "mlp", "shape": "64x64", "numel": numel,
                "n_changed": changed,
                "n_princ_changed@0.3": round(changed * p["po"]), "n_low_changed@0.3": round(changed * p["lo"]),
                "n_princ_changed@0.5": round(changed * p["po5"]), "n_low_changed@0.5": round(changed * p["lo5"]),
                "bf16_sparsity": 1 - changed / numel, "update_density": changed / numel,
                "nss": p["nss"] * wiggle, "princ_overlap@0.3": p["po"], "low_overlap@0.3": p["lo"],
                "princ_overlap@0.5": p["po5"], "low_overlap@0.5": p["lo5"],
                "frobenius": p["fro"] * wiggle, "stable_rank": p["sr"] * wiggle, "hill_alpha": p["hill"] * wiggle,
                "spectral_norm": 0.01 * wiggle, "spectral_frobenius_ratio": 0.3, "effective_rank": 20.0,
                "top1pct_norm_ratio": 0.8, "angle_u_mean_deg": p["ang"], "angle_v_mean_deg": p["ang"] * 1.1,
                "angle_u_max_deg": p["ang"] * 3, "angle_v_max_deg": p["ang"] * 2,
            })
    return pd.DataFrame(rows)


def accuracy_at(spec: dict, run: str, frac: float) -> float:
    fam = spec["family"]
    if fam == "sft" or fam == "sft-anchor":
        return 0.2 + 0.25 * frac
    if run == "rank16-sft":
        return 0.2 + 0.1 * frac
    if fam == "effopd":
        return 0.45 + 0.11 * min(1.0, 3 * frac)
    return 0.45 + 0.11 * frac


def fake_results(root: Path, grid: Grid, flip: bool = False) -> Path:
    spec = grid.report_spec()
    runs = spec["runs"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "grid.json").write_text(json.dumps(spec))
    for run, step, matrices in grid.diagnostics_targets():
        final = runs[run]["checkpoints"][-1]
        d = root / "diagnostics" / run
        d.mkdir(parents=True, exist_ok=True)
        matrix_rows(runs[run], step / final, matrices, flip).to_csv(d / f"step-{step}.{matrices}.csv", index=False)
        (d / f"step-{step}.{matrices}.json").write_text(json.dumps({"module_norms": {"attention": 1.0, "total": 2.0}}))
    for pair in spec["reference_pairs"]:
        d = root / "diagnostics" / "reference"
        d.mkdir(parents=True, exist_ok=True)
        fake = {"family": "x", "method": spec["reference_pairs"][pair]["method"]}
        matrix_rows(fake, 1.0, "all").to_csv(d / f"{pair}.all.csv", index=False)
    for run in grid.similarity_runs():
        cks = runs[run]["checkpoints"]
        rows = []
        for s in cks:
            f = s / cks[-1]
            kind = runs[run]["method"]
            sim = 1.0 if s == cks[-1] else {"sft": 0.2 + 0.6 * f, "rlvr": 0.15 + 0.6 * f}.get(kind, 0.85)
            for layer in range(2):
                for m in MODULES[:4]:
                    rows.append({"checkpoint": f"x/step-{s}", "step": s, "name": f"l{layer}.{m}", "layer": layer,
                                 "module": m, "k": 16, "sim": sim})
        pd.DataFrame(rows).to_csv(root / "diagnostics" / run / "similarity.csv", index=False)
    for subject, step, bench in grid.eval_targets():
        kind = grid.benchmarks[bench]["kind"]
        k = grid.benchmarks[bench]["samples"]
        if step == "model":
            path, acc = root / "eval" / "models" / subject / f"{bench}.json", 0.95
        else:
            path = root / "eval" / subject / f"step-{step}" / f"{bench}.json"
            acc = accuracy_at(runs[subject], subject, int(step) / runs[subject]["checkpoints"][-1])
        path.parent.mkdir(parents=True, exist_ok=True)
        metrics = {f"avg@{k}": acc, f"pass@{k}": min(1.0, acc + 0.3)}
        if kind == "math":
            metrics[f"maj@{k}"] = acc + 0.05
        path.write_text(json.dumps({"benchmark": bench, "kind": kind, "model": "m", "n": 200,
                                    "samples_per_problem": k, "metrics": metrics}))
    for run, r in runs.items():
        d = root / "runs" / run
        d.mkdir(parents=True, exist_ok=True)
        lines = []
        for step in range(r["start_step"] + 1, r["checkpoints"][-1] + 1):
            row = {"step": step, "lr": 1e-5, "loss": 1 / step, "grad_norm": 1.0, "tokens": 100, "tokens_per_s": 1e4}
            if r["method"] != "sft":
                row.update(entropy=0.5, response_len=12.0, clip_frac=0.0, gen_s=0.1)
            if r["method"] in ("opd", "mix"):
                row.update(mean_r_t=0.1 / step, kl_k3=0.01)
            if r["method"] in ("rlvr", "mix"):
                row["reward"] = 0.5
            if r["extrapolation"] and step & (step - 1) == 0:
                row["extrapolation"] = {"step": step, "factors": [0, 2, 4], "scores": [0.4, 0.5, 0.45],
                                        "accepted_factor": 2.0, "accepted_score": 0.5}
            lines.append(json.dumps(row))
        (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def mini_grid(repo):
    return Grid.from_file(repo / "config/config.yaml")


def aggregated(root: Path) -> ReportData:
    grid = json.loads((root / "grid.json").read_text())
    summary, matrices, similarity = aggregate.aggregate_diagnostics(root, expected_inputs(grid))
    return ReportData(grid=grid, summary=summary, matrices=matrices,
                      similarity=similarity, accuracy=aggregate.aggregate_eval(root, expected_inputs(grid)))


@pytest.fixture(scope="module")
def good(tmp_path_factory, mini_grid) -> ReportData:
    root = fake_results(tmp_path_factory.mktemp("good"), mini_grid)
    data = aggregated(root)
    loaded = ReportData.load(root)  # reads the training logs (aggregated tables are not written here)
    data.metrics, data.searches = loaded.metrics, loaded.searches
    return data


def partial_of(data: ReportData) -> ReportData:
    """Only the OPD side of the grid: no SFT / RLVR diagnostics, no projected or EffOPD accuracy,
    no training logs beyond one run."""
    keep = ~data.summary["run"].isin(["sft-8b", "rlvr-8b", "opd-sparse-topkl-0.25"])
    acc = data.accuracy[~data.accuracy["subject"].isin(["rank16-opd", "effopd", "sft-8b"])]
    return ReportData(grid=data.grid, summary=data.summary[keep], matrices=data.matrices[data.matrices["run"] != "sft-8b"],
                      similarity=data.similarity[data.similarity["run"] != "rlvr-8b"], accuracy=acc,
                      metrics={"opd-8b-t32b": data.metrics["opd-8b-t32b"]})


@pytest.fixture(scope="module")
def flipped(tmp_path_factory, mini_grid) -> ReportData:
    return aggregated(fake_results(tmp_path_factory.mktemp("flipped"), mini_grid, flip=True))


# ---- aggregation ---------------------------------------------------------------------------------------

def _matrix_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def _row(name, module, numel, sp, **kw):
    base = {m: 0.0 for m in aggregate.METRICS}
    base.update(name=name, layer=0, module=module, numel=numel, bf16_sparsity=sp, update_density=1 - sp)
    base.update(kw)
    return base


def test_summary_is_weighted_for_sparsity_and_finite_mean_otherwise():
    df = pd.DataFrame([_row("a", "q", 100, 0.1, nss=1.0, hill_alpha=math.inf, **{"princ_overlap@0.5": math.nan}),
                       _row("b", "up", 300, 0.5, nss=3.0, hill_alpha=2.0, **{"princ_overlap@0.5": 0.4})])
    df["group"] = ["attention", "mlp"]
    s = aggregate.summarize_matrices(df)
    assert s["bf16_sparsity"] == pytest.approx((100 * 0.1 + 300 * 0.5) / 400)  # 0.4, not the plain mean 0.3
    # Update density per matrix, then the mean (App. C.3): 0.7, not 1 - the weighted sparsity (0.6)
    assert s["update_density"] == pytest.approx((0.9 + 0.5) / 2)
    assert s["nss"] == pytest.approx(2.0)
    assert s["hill_alpha"] == pytest.approx(2.0)          # inf left out
    assert s["princ_overlap@0.5"] == pytest.approx(0.4)   # NaN left out
    assert s["numel"] == 400 and s["n_matrices"] == 2
    assert math.isnan(s["princ_overlap_pooled@0.5"])      # no count columns: not invented


def test_overlaps_at_every_mask_fraction_and_the_sparsity_with_embeddings(tmp_path):
    rows = [_row("q0", "q", 100, 0.5, n_changed=50, **{"princ_overlap@0.3": 0.2, "n_princ_changed@0.3": 10,
                                                         "princ_overlap@0.5": 0.4, "n_princ_changed@0.5": 20}),
            _row("up0", "up", 300, 0.9, n_changed=30, **{"princ_overlap@0.3": 0.5, "n_princ_changed@0.3": 15,
                                                          "princ_overlap@0.5": 0.6, "n_princ_changed@0.5": 18})]
    path = tmp_path / "diagnostics" / "opd" / "step-40.all.csv"
    _matrix_csv(path, rows)
    # 1000 embedding entries of which 100 changed: (50 + 30 + 100) / (400 + 1000) changed in all
    path.with_suffix(".json").write_text(json.dumps({"extra_tensors": {"embedding": {
        "n_tensors": 2, "numel": 1000, "n_changed": 100, "bf16_sparsity": 0.9}}}))
    summary, _, _ = aggregate.aggregate_diagnostics(tmp_path, [DIAGNOSES[1]])
    s = summary[summary["scope"] == "all"].iloc[0]
    assert s["princ_overlap@0.3"] == pytest.approx(0.35) and s["princ_overlap@0.5"] == pytest.approx(0.5)
    assert s["princ_overlap_pooled@0.3"] == pytest.approx(25 / 80)
    assert s["princ_overlap_pooled@0.5"] == pytest.approx(38 / 80)
    assert s["bf16_sparsity"] == pytest.approx(1 - 80 / 400)
    assert s["bf16_sparsity_with_embeddings"] == pytest.approx(1 - 180 / 1400)
    grid = {**small_grid(), "diagnostics": {"alpha": [0.3, 0.5], "endpoint_matrices": "all"}}
    data = ReportData(grid={**grid, "runs": {"opd-8b-t32b": {**grid["runs"]["opd-8b-t32b"], "checkpoints": [40]}}},
                      summary=summary.assign(run="opd-8b-t32b"))
    t = tables.update_masks(data).frame.set_index("run")
    assert t.loc["opd-8b-t32b", "princ_overlap_pct@0.3"] == pytest.approx(35.0)
    assert t.loc["opd-8b-t32b", "princ_overlap_pct@0.5"] == pytest.approx(50.0)
    assert t.loc["opd-8b-t32b", "princ_vs_random@0.3"] == "at/above"
    assert t.loc["opd-8b-t32b", "princ_vs_random@0.5"] == "at/above"
    assert t.loc["opd-8b-t32b", "update_density_pct"] == pytest.approx(30.0)          # (50% + 10%) / 2
    assert t.loc["opd-8b-t32b", "update_density_weighted_pct"] == pytest.approx(20.0)  # 80 / 400
    t1 = tables.table1_sparsity(data).frame.set_index("run")
    assert t1.loc["opd-8b-t32b", "with_embeddings_pct"] == pytest.approx(100 * (1 - 180 / 1400))
    assert t1.loc["opd-8b-t32b", "sparsity_pct"] == pytest.approx(80.0)


DIAGNOSES = [Expected("diagnostics", "opd", 20, "attention", "diagnostics/opd/step-20.attention.csv"),
             Expected("diagnostics", "opd", 40, "all", "diagnostics/opd/step-40.all.csv"),
             Expected("reference", "pair-a", None, "all", "diagnostics/reference/pair-a.all.csv"),
             Expected("similarity", "opd", None, None, "diagnostics/opd/similarity.csv")]


def test_aggregate_diagnostics_tree(tmp_path):
    d = tmp_path / "diagnostics"
    _matrix_csv(d / "opd" / "step-20.attention.csv", [_row("q0", "q", 100, 0.5), _row("k0", "k", 100, 0.7)])
    _matrix_csv(d / "opd" / "step-40.all.csv",
                [_row("q0", "q", 100, 0.4), _row("up0", "up", 300, 0.8, n_changed=60, n_low_changed=30)])
    _matrix_csv(d / "reference" / "pair-a.all.csv", [_row("q0", "q", 10, 0.9)])
    (d / "opd" / "step-40.all.json").write_text(json.dumps({"overall": {"bf16_sparsity": 0.7},
                                                            "module_norms": {"total": 3.0}}))
    pd.DataFrame({"checkpoint": ["c/step-20", "c/step-40"], "step": [20, 40], "name": ["q0", "q0"],
                  "layer": [0, 0], "module": ["q", "q"], "k": [16, 16], "sim": [0.8, 1.0]}
                 ).to_csv(d / "opd" / "similarity.csv", index=False)
    (d / "summary.csv").write_text("stale aggregate output, must be ignored\n")
    # A run no longer in the grid: its files are not inputs, so they never reach a table.
    _matrix_csv(d / "gone" / "step-20.all.csv", [_row("q0", "q", 100, 0.1)])
    pd.DataFrame({"step": [20], "name": ["q0"], "sim": [0.5]}).to_csv(d / "gone" / "similarity.csv", index=False)
    summary, matrices, sim = aggregate.aggregate_diagnostics(tmp_path, DIAGNOSES)
    all_ = summary[summary["scope"] == "all"].set_index(["kind", "run", "matrices"])
    assert all_.loc[("run", "opd", "attention"), "bf16_sparsity"] == pytest.approx(0.6)
    assert all_.loc[("run", "opd", "all"), "bf16_sparsity"] == pytest.approx(0.7)
    assert all_.loc[("run", "opd", "all"), "step"] == 40
    assert all_.loc[("run", "opd", "all"), "norm_total"] == 3.0
    assert pd.isna(all_.loc[("reference", "pair-a", "all"), "step"])
    assert set(summary.loc[summary["run"] == "opd", "scope"]) >= {"all", "attention", "mlp", "q", "k", "up"}
    assert list(matrices.columns[:4]) == ["kind", "run", "step", "matrices"] and len(matrices) == 5
    assert list(sim["run"]) == ["opd", "opd"] and list(sim["sim"]) == [0.8, 1.0]
    assert "gone" not in set(summary["run"]) | set(sim["run"])


def test_aggregate_diagnostics_names_the_file_and_column(tmp_path):
    path = tmp_path / "diagnostics" / "opd" / "step-20.all.csv"
    _matrix_csv(path, [{"name": "q0", "layer": 0, "module": "q", "bf16_sparsity": 0.5}])
    with pytest.raises(UserError, match=r"step-20\.all\.csv: missing column\(s\) numel"):
        aggregate.aggregate_diagnostics(tmp_path, [Expected("diagnostics", "opd", 20, "all",
                                                            "diagnostics/opd/step-20.all.csv")])


def test_aggregate_stops_on_a_missing_input_and_the_partial_report_skips_it(tmp_path):
    with pytest.raises(UserError, match=r"step-20\.attention\.csv: does not exist"):
        aggregate.aggregate_diagnostics(tmp_path, DIAGNOSES)
    errors = []
    summary, matrices, sim = aggregate.aggregate_diagnostics(tmp_path, DIAGNOSES, errors)
    assert summary.empty and sim.empty and errors == []  # missing is not unreadable: missing.md lists it


def test_aggregate_diagnostics_without_inputs_gives_empty_tables(tmp_path):
    summary, matrices, sim = aggregate.aggregate_diagnostics(tmp_path, [])
    assert summary.empty and matrices.empty and sim.empty
    assert {"run", "step", "bf16_sparsity"} <= set(summary.columns)


def test_aggregate_eval_tree(tmp_path):
    def put(path, metrics, **kw):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"benchmark": path.stem, "kind": "math", "n": 50, "samples_per_problem": 8,
                                    "metrics": metrics, **kw}))
    put(tmp_path / "eval" / "opd" / "step-20" / "math.json", {"avg@8": 0.5, "pass@8": 0.9})
    put(tmp_path / "eval" / "models" / "teacher" / "math.json", {"avg@8": 0.95})
    (tmp_path / "eval" / "opd" / "step-20" / "math.samples.jsonl").write_text("{}\n")
    put(tmp_path / "eval" / "gone" / "step-20" / "math.json", {"avg@8": 0.1})  # not an input
    expected = [Expected("eval", "opd", 20, "math", "eval/opd/step-20/math.json"),
                Expected("eval", "teacher", None, "math", "eval/models/teacher/math.json")]
    df = aggregate.aggregate_eval(tmp_path, expected)
    assert list(df.columns) == aggregate.EVAL_COLUMNS
    run = df[df["kind"] == "run"].set_index("metric")
    assert run.loc["avg@8", "value"] == 0.5 and run.loc["avg@8", "step"] == 20 and run.loc["avg@8", "n"] == 50
    model = df[df["kind"] == "model"]
    assert list(model["subject"]) == ["teacher"] and model["step"].isna().all()

    assert set(df["subject"]) == {"opd", "teacher"}

    put(tmp_path / "eval" / "opd" / "step-40" / "math.json", {"avg@8": "high"})
    with pytest.raises(UserError, match=r"step-40/math\.json: metrics\.avg@8 is not a number"):
        aggregate.aggregate_eval(tmp_path, [*expected, Expected("eval", "opd", 40, "math", "eval/opd/step-40/math.json")])


# ---- tables -------------------------------------------------------------------------------------------

def small_grid(pairs=None) -> dict:
    def run(family, method, ck=(10, 20), **kw):
        return {"family": family, "method": method, "teacher": kw.get("teacher"), "init": kw.get("init", "base"),
                "w0": kw.get("init", "base"), "start_step": 0, "checkpoints": list(ck), "eval": ["math"],
                "diagnostics": kw.get("diagnostics", "trajectory"), "projection": kw.get("projection"),
                "extrapolation": kw.get("extrapolation"), "objective": kw.get("objective", {}),
                "rollout_source": "student"}
    return {"name": "small", "runs": {
        "sft-8b": run("sft", "sft"),
        "opd-8b-t32b": run("opd", "opd", teacher="T", init="sft-8b"),
        "rlvr-8b": run("rlvr", "rlvr", init="sft-8b"),
        "opd-4b-t8b": run("teacher-scale", "opd", teacher="T", init="sft-8b", diagnostics="endpoint"),
        "rank16-opd": run("rank16", "opd", ck=(20,), teacher="T", init="opd-8b-t32b@10", diagnostics="none",
                          projection={"run": "opd-8b-t32b", "step": 10, "rank": 16}),
        "effopd": run("effopd", "opd", teacher="T", init="sft-8b", diagnostics="endpoint",
                      extrapolation={"candidates": 5}),
    }, "benchmarks": {"math": {"kind": "math"}}, "teachers": {"T": ["math"]},
        "reference_pairs": pairs or {}, "diagnostics": {"alpha": 0.5, "endpoint_matrices": "all",
                                                        "trajectory_matrices": "attention", "sim_k": 16}}


def summary_rows(values: dict) -> pd.DataFrame:
    """{(run, step, matrices): {metric: value}} -> summary frame (scope all)."""
    rows = [{"kind": "run", "run": r, "step": s, "matrices": m, "scope": "all", **v} for (r, s, m), v in values.items()]
    return pd.DataFrame(rows)


def test_table1_aligns_paper_column_and_keeps_missing_rows():
    data = ReportData(grid=small_grid(), summary=summary_rows({
        ("sft-8b", 20, "all"): {"bf16_sparsity": 0.12, "n_matrices": 14},
        ("opd-8b-t32b", 20, "all"): {"bf16_sparsity": 0.5, "n_matrices": 14},
        ("opd-8b-t32b", 20, "attention"): {"bf16_sparsity": 0.9},   # trajectory set: not the endpoint
        ("rlvr-8b", 10, "all"): {"bf16_sparsity": 0.99},             # not the final step
    }))
    t = tables.table1_sparsity(data).frame.set_index("run")
    assert list(t.index) == ["sft-8b", "opd-8b-t32b", "rlvr-8b", "opd-4b-t8b", "effopd"]  # rank16: no diagnostics
    assert t.loc["sft-8b", "sparsity_pct"] == pytest.approx(12.0) and t.loc["sft-8b", "paper_pct"] == 8.1
    assert t.loc["opd-8b-t32b", "sparsity_pct"] == pytest.approx(50.0) and t.loc["opd-8b-t32b", "paper_pct"] == 51.6
    assert math.isnan(t.loc["rlvr-8b", "sparsity_pct"]) and t.loc["rlvr-8b", "paper_pct"] == 77.2
    assert t.loc["opd-4b-t8b", "paper_pct"] == 50.3 and t.loc["opd-4b-t8b", "group"] == "OPD variants"
    assert math.isnan(t.loc["effopd", "paper_pct"])
    assert "published reference" not in set(t["group"])


def test_table1_reference_rows_only_with_pairs():
    pairs = {"own": {"name": "own", "base": "a", "tuned": "b", "method": "sft"},
             "renamed": {"name": "renamed", "base": "qwen3-4b", "tuned": "polaris-4b-preview", "method": "rlvr"},
             "klear-8b-grpo": {"name": "klear-8b-grpo", "base": "klear-reasoner-8b-sft",
                               "tuned": "klear-reasoner-8b", "method": "rlvr"}}
    summary = pd.DataFrame([{"kind": "reference", "run": "klear-8b-grpo", "step": None, "matrices": "all",
                             "scope": "all", "bf16_sparsity": 0.7}])
    t = tables.table1_sparsity(ReportData(grid=small_grid(pairs), summary=summary)).frame
    ref = t[t["group"] == "published reference"].set_index("run")
    assert list(ref.index) == ["klear-8b-grpo", "renamed", "own"]  # the paper's order, unknown pairs last
    assert ref.loc["klear-8b-grpo", "sparsity_pct"] == pytest.approx(70.0)
    assert ref.loc["klear-8b-grpo", "paper_pct"] == 69.9
    assert ref.loc["renamed", "paper_pct"] == 79.9            # matched by (base, tuned)
    assert math.isnan(ref.loc["renamed", "sparsity_pct"]) and math.isnan(ref.loc["own", "paper_pct"])


def test_run_order_restores_config_order():
    grid = small_grid()
    grid["runs"] = dict(sorted(grid["runs"].items()))          # as spec_json writes it
    grid["run_order"] = list(small_grid()["runs"])
    assert list(ReportData(grid=grid).runs) == list(small_grid()["runs"])


def test_update_masks_baseline_and_paper_by_role():
    data = ReportData(grid=small_grid(), summary=summary_rows({
        ("opd-8b-t32b", 20, "all"): {"update_density": 0.5, "princ_overlap@0.5": 0.45, "low_overlap@0.5": 0.6},
        ("sft-8b", 20, "all"): {"update_density": 0.9, "princ_overlap@0.5": 0.55, "low_overlap@0.5": 0.3}}))
    t = tables.update_masks(data).frame.set_index("run")
    assert t.loc["opd-8b-t32b", "princ_vs_random@0.5"] == "below"
    assert t.loc["sft-8b", "princ_vs_random@0.5"] == "at/above"
    assert t.loc["opd-8b-t32b", "paper_update_density_pct"] == 46.28
    assert t.loc["rlvr-8b", "paper_low_overlap_pct"] == 73.48 and math.isnan(t.loc["rlvr-8b", "low_overlap_pct@0.5"])
    assert math.isnan(t.loc["opd-4b-t8b", "paper_update_density_pct"])


def acc_rows(values: dict, n: int = 200) -> pd.DataFrame:
    """{(subject, step or None): acc} -> tidy accuracy frame on 'math' (avg@8)."""
    return pd.DataFrame([{"subject": s, "kind": "model" if st is None else "run", "step": st, "benchmark": "math",
                          "metric": "avg@8", "value": v, "n": n, "samples_per_problem": 8}
                         for (s, st), v in values.items()])


def test_accuracy_table_init_rows_and_teacher_gap():
    acc = acc_rows({("sft-8b", 10): 0.3, ("sft-8b", 20): 0.4, ("opd-8b-t32b", 10): 0.5,
                    ("opd-8b-t32b", 20): 0.6, ("T", None): 0.9, ("rank16-opd", 20): 0.58})
    data = ReportData(grid=small_grid(), accuracy=acc)
    t = tables.accuracy(data).frame
    opd = t[t["run"] == "opd-8b-t32b"]
    assert list(opd["point"]) == ["init", "checkpoint", "checkpoint"]
    assert list(opd["avg@8"]) == [0.4, 0.5, 0.6] and opd["source"].iloc[0] == "sft-8b@20"
    r16 = t[t["run"] == "rank16-opd"]
    assert list(r16["step"]) == [0, 20] and list(r16["avg@8"]) == [0.5, 0.58]   # init = opd@10
    assert t[t["run"] == "rlvr-8b"]["avg@8"].isna().sum() == 2                # not evaluated: kept, empty
    th = tables.teachers(data).frame.set_index("student_run")
    assert th.loc["opd-8b-t32b", "teacher_acc"] == 0.9
    assert th.loc["opd-8b-t32b", "gap"] == pytest.approx(0.5)
    assert th.loc["opd-8b-t32b", "gap_closed_pct"] == pytest.approx(40.0)


def test_teachers_table_names_an_anchor_the_config_never_evaluates():
    grid = small_grid()
    grid["runs"]["opd-code"] = {**grid["runs"]["opd-8b-t32b"], "family": "code", "eval": ["code"]}
    grid["teachers"]["T"] = ["math", "code"]
    md = render(tables.teachers(ReportData(grid=grid)))
    assert "never evaluates** (add the benchmark to the anchor run's `eval` to measure the gap): " \
           "sft-8b on code (anchor of opd-code)." in md


def test_effopd_speedup_known_answer():
    acc = acc_rows({("sft-8b", 20): 0.4, ("opd-8b-t32b", 10): 0.45, ("opd-8b-t32b", 20): 0.6,
                    ("effopd", 10): 0.61, ("effopd", 20): 0.62})
    data = ReportData(grid=small_grid(), accuracy=acc,
                      searches={"effopd": [{"step": 1, "accepted_factor": 2.0}, {"step": 2, "accepted_factor": 0.0}]})
    s = tables.effopd_speedup(data).iloc[0]
    assert s["vanilla"] == "opd-8b-t32b"
    assert s["threshold"] == pytest.approx(0.6)            # vanilla OPD's final accuracy (was 90% of its gain)
    assert s["vanilla_steps"] == 20 and s["effopd_steps"] == 10 and s["speedup"] == pytest.approx(2.0)
    assert s["accepted_extrapolations"] == "1:x2, 2:x0"
    assert math.isnan(s["speedup_ci_low"]) and "no confidence interval" in s["note"]  # no per-problem scores
    md = render(tables.effopd_spectral(data))
    assert "steps to reach vanilla OPD's final accuracy" in md and "| effopd | opd-8b-t32b |" in md


def test_effopd_speedup_undefined_without_gain():
    acc = acc_rows({("sft-8b", 20): 0.7, ("opd-8b-t32b", 20): 0.6, ("effopd", 20): 0.65})
    s = tables.effopd_speedup(ReportData(grid=small_grid(), accuracy=acc)).iloc[0]
    assert math.isnan(s["threshold"]) and "did not improve" in s["note"]


def effopd_tree(root: Path, correct: dict[tuple[str, int], set[int]], n: int = 40) -> ReportData:
    """Per-sample files of `n` problems (2 samples each, both right for the problems in the set)
    and the matching accuracy rows, for the EffOPD run and its vanilla reference."""
    grid, rows, inputs = small_grid(), {}, []
    for (run, step), right in correct.items():
        f = f"eval/{run}/step-{step}/math.json"
        path = root / f
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".samples.jsonl").write_text("".join(
            json.dumps({"id": i, "sample": j, "correct": i in right}) + "\n" for i in range(n) for j in range(2)))
        rows[(run, step)] = len(right) / n
        inputs.append([run, str(step), "math", f])
    grid["inputs"] = {"eval": inputs}
    return ReportData(grid=grid, accuracy=acc_rows({("sft-8b", 20): 0.1, **rows}, n=n), results=root)


def test_effopd_speedup_confidence_interval_is_a_paired_bootstrap(tmp_path):
    v10, v20 = set(range(8)), set(range(24))
    # EffOPD at step 10 solves every problem vanilla solves at 20, and two more: in every resample
    # it reaches vanilla's final accuracy at step 10, vanilla only at 20: the interval is [2, 2].
    data = effopd_tree(tmp_path / "a", {("opd-8b-t32b", 10): v10, ("opd-8b-t32b", 20): v20,
                                        ("effopd", 10): v20 | {30, 31}, ("effopd", 20): v20 | {30, 31}})
    s = tables.effopd_speedup(data).iloc[0]
    assert (s["speedup"], s["speedup_ci_low"], s["speedup_ci_high"]) == (2.0, 2.0, 2.0)
    assert s["p_never"] == 0.0 and s["problems"] == 40 and s["effopd_steps_ci"] == "10 .. 10"
    c = claims.judge(data, claims.effopd_headline(data))
    assert c.reproduced == claims.YES and c.runs == "effopd, opd-8b-t32b"
    # EffOPD's weights equal vanilla's (every extrapolation rejected): speed-up 1 in every
    # resample, the interval lies at 1, and the claim is "no".
    same = {("opd-8b-t32b", 10): v10, ("opd-8b-t32b", 20): v20, ("effopd", 10): v10, ("effopd", 20): v20}
    data = effopd_tree(tmp_path / "b", same)
    s = tables.effopd_speedup(data).iloc[0]
    assert (s["speedup"], s["speedup_ci_low"], s["speedup_ci_high"]) == (1.0, 1.0, 1.0)
    assert claims.judge(data, claims.effopd_headline(data)).reproduced == claims.NO
    # EffOPD at step 10 solves as many problems as vanilla's final, but different ones: the
    # point estimate is 2, yet resamples go both ways, and the claim cannot be decided.
    data = effopd_tree(tmp_path / "c", {("opd-8b-t32b", 10): v10, ("opd-8b-t32b", 20): v20,
                                        ("effopd", 10): set(range(16, 40)), ("effopd", 20): v20})
    s = tables.effopd_speedup(data).iloc[0]
    assert s["speedup"] == 2.0 and s["speedup_ci_low"] == 1.0 and s["speedup_ci_high"] == 2.0
    assert s["effopd_steps_ci"] == "10 .. 20" and s["p_never"] == 0.0
    c = claims.judge(data, claims.effopd_headline(data))
    assert c.reproduced == claims.INSUFFICIENT and "contains 1" in c.reason


# ---- claims ---------------------------------------------------------------------------------------------

def verdicts(data) -> dict:
    return dict(zip(*claims.check_all(data)[["id", "reproduced"]].T.values))


def test_claims_hold_on_paper_shaped_results(good):
    v = verdicts(good)
    for cid in ("C1", "C2", "C3", "C4", "C6", "C7", "C8", "C9", "C10", "C11", "C12", "C13", "C14",
                "C15", "C16", "C17", "C18", "C19", "C20"):
        assert v[cid] == claims.YES, (cid, claims.check_all(good).set_index("id").loc[cid].to_dict())
    assert v["C5"] == claims.YES  # fixture NSS 2e-3 / 3e-4 / 2e-5
    assert v["C21"] == claims.INSUFFICIENT  # no per-problem scores in this tree: no interval


def test_claims_fail_when_numbers_contradict(flipped):
    v = verdicts(flipped)
    # OPD and RLVR swapped: every ordering through OPD fails, and is reported as failing.
    for cid in ("C1", "C3", "C4", "C6", "C7", "C9", "C11"):
        assert v[cid] == claims.NO, cid
    assert v["C18"] == claims.NO  # low alpha now looks like the (RLVR-like) baseline


def test_control_tracking_fails_and_missing_runs_are_insufficient():
    grid = small_grid()
    grid["runs"]["sparse-a"] = {**grid["runs"]["opd-8b-t32b"], "family": "token-sparse"}
    grid["runs"]["sparse-b"] = {**grid["runs"]["opd-8b-t32b"], "family": "token-sparse"}
    base = {("opd-8b-t32b", 10, "attention"): {"stable_rank": 3.0}, ("opd-8b-t32b", 20, "attention"): {"stable_rank": 3.0}}
    near = {("sparse-a", 10, "attention"): {"stable_rank": 3.3}, ("sparse-a", 20, "attention"): {"stable_rank": 2.7}}
    far = {("sparse-b", 10, "attention"): {"stable_rank": 3.0}, ("sparse-b", 20, "attention"): {"stable_rank": 4.0}}
    c = claims.token_sparse_tracks(ReportData(grid=grid, summary=summary_rows({**base, **near})))
    assert c.reproduced == claims.INSUFFICIENT and "sparse-b: no shared trajectory steps" in c.numbers
    c = claims.token_sparse_tracks(ReportData(grid=grid, summary=summary_rows({**base, **near, **far})))
    assert c.reproduced == claims.NO and "sparse-b: max deviation 0.333" in c.numbers
    far[("sparse-b", 20, "attention")] = {"stable_rank": 3.4}
    c = claims.token_sparse_tracks(ReportData(grid=grid, summary=summary_rows({**base, **near, **far})))
    assert c.reproduced == claims.YES


def test_claims_without_data_are_insufficient():
    v = verdicts(ReportData())
    assert set(v.values()) == {claims.INSUFFICIENT}
    assert len(v) == len(claims.CHECKS)


def test_projection_claims_use_standard_error_tolerance():
    # n = 200, p ~ 0.6: SE ~ 0.0346 each; tolerance 2 * sqrt(2) * SE ~ 0.098
    acc = acc_rows({("opd-8b-t32b", 20): 0.60, ("rank16-opd", 20): 0.55})
    assert claims.projection_keeps_opd(ReportData(grid=small_grid(), accuracy=acc)).reproduced == claims.YES
    acc = acc_rows({("opd-8b-t32b", 20): 0.60, ("rank16-opd", 20): 0.45})
    c = claims.projection_keeps_opd(ReportData(grid=small_grid(), accuracy=acc))
    assert c.reproduced == claims.NO and "tolerance 0.09" in c.numbers


def role_matrices(values: dict[str, dict[int, dict]], step: int = 20) -> pd.DataFrame:
    """{run: {layer: {column: value}}} -> per-matrix rows (two matrices a layer) at the endpoint."""
    rows = [{"kind": "run", "run": run, "step": step, "matrices": "all", "name": f"{run}.{layer}.{m}", "layer": layer,
             "module": m, **cols} for run, layers in values.items() for layer, cols in layers.items() for m in ("q", "up")]
    return pd.DataFrame(rows)


def test_rotation_and_nss_levels_at_the_representative_layer_and_over_all_matrices():
    angles = {"sft-8b": 12.0, "opd-8b-t32b": 1.0, "rlvr-8b": 0.3}
    nss = {"sft-8b": 9e-4, "opd-8b-t32b": 1.1e-4, "rlvr-8b": 2e-5}   # 9e-4 is at the 1e-3 level
    summary = summary_rows({(r, 20, "all"): {"angle_mean_deg": angles[r], "nss": nss[r]} for r in angles})
    # Layers 0..3: the representative layer is the middle one, 2; there OPD rotates more than SFT.
    per_layer = {r: {layer: {"angle_u_mean_deg": a, "angle_v_mean_deg": a, "nss": nss[r]} for layer in range(4)}
                 for r, a in angles.items()}
    per_layer["opd-8b-t32b"][2] = {"angle_u_mean_deg": 20.0, "angle_v_mean_deg": 30.0, "nss": 1.1e-4}
    data = ReportData(grid=small_grid(), summary=summary, matrices=role_matrices(per_layer))
    assert data.representative_layer("opd-8b-t32b") == 2
    assert data.layer_mean("opd-8b-t32b", 2, "angle_mean_deg") == 25.0
    c3 = claims.rotation_order(data)
    assert c3.reproduced == claims.NO and "representative layer 2 (the middle layer, L // 2)" in c3.numbers
    c5 = claims.nss_levels(data)
    assert c5.reproduced == claims.YES and "SFT log10 -3.05" in c5.numbers   # floor(log10) said -4: "no"
    grid = small_grid()
    grid["diagnostics"] = {**grid["diagnostics"], "representative_layer": 1}
    data = ReportData(grid=grid, summary=summary, matrices=role_matrices(per_layer))
    assert claims.rotation_order(data).reproduced == claims.YES
    nss["opd-8b-t32b"] = 3e-5                                             # more than half a decade off: -4.52
    summary = summary_rows({(r, 20, "all"): {"angle_mean_deg": angles[r], "nss": nss[r]} for r in angles})
    assert claims.nss_levels(ReportData(grid=grid, summary=summary, matrices=role_matrices(per_layer))
                             ).reproduced == claims.NO


def test_mask_claims_use_the_first_mask_fraction():
    grid = {**small_grid(), "diagnostics": {**small_grid()["diagnostics"], "alpha": [0.3, 0.5]}}
    values = {"sft-8b": (0.55, 0.52), "opd-8b-t32b": (0.40, 0.45), "rlvr-8b": (0.35, 0.40)}
    summary = summary_rows({(r, 20, "all"): {"princ_overlap@0.3": a, "princ_overlap@0.5": b}
                            for r, (a, b) in values.items()})
    c8 = claims.principal_overlap(ReportData(grid=grid, summary=summary))
    assert c8.reproduced == claims.NO and "alpha = 0.3" in c8.test    # 40% and 35% are above 30%
    grid["diagnostics"]["alpha"] = [0.5, 0.3]
    assert claims.principal_overlap(ReportData(grid=grid, summary=summary)).reproduced == claims.YES


def sim_rows(curves: dict[str, dict[int, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"run": r, "step": s, "name": "m", "sim": v} for r, c in curves.items() for s, v in c.items()])


def test_sim_claim_compares_at_equal_fractions_and_tests_gradual_convergence():
    grid = small_grid()
    grid["runs"]["sft-8b"]["checkpoints"] = [5, 20, 40, 100]
    grid["runs"]["rlvr-8b"]["checkpoints"] = [12, 25, 50, 100]
    grid["runs"]["opd-8b-t32b"]["checkpoints"] = [21, 42, 100]
    opd = {21: 0.85, 42: 0.9, 100: 1.0}
    rlvr = {12: 0.2, 25: 0.3, 50: 0.7, 100: 1.0}
    # SFT's first checkpoint (5%) is low, but at 21% of training it is already above OPD: on main
    # the first checkpoints were compared (SFT 0.3 at 5% vs OPD 0.85 at 21%) and the claim held.
    sft = {5: 0.3, 20: 0.9, 40: 0.95, 100: 1.0}
    c = claims.sim_first_checkpoint(ReportData(grid=grid, similarity=sim_rows(
        {"sft-8b": sft, "opd-8b-t32b": opd, "rlvr-8b": rlvr})))
    assert c.reproduced == claims.NO and "at 21% of training" in c.numbers
    sft = {5: 0.1, 20: 0.3, 40: 0.6, 100: 1.0}
    c = claims.sim_first_checkpoint(ReportData(grid=grid, similarity=sim_rows(
        {"sft-8b": sft, "opd-8b-t32b": opd, "rlvr-8b": rlvr})))
    assert c.reproduced == claims.YES, c.numbers
    # RLVR above 0.5 already at 12%, before OPD's first checkpoint, yet below OPD at 21%: it did
    # not converge more gradually.
    rlvr = {12: 0.6, 25: 0.55, 50: 0.7, 100: 1.0}
    c = claims.sim_first_checkpoint(ReportData(grid=grid, similarity=sim_rows(
        {"sft-8b": sft, "opd-8b-t32b": opd, "rlvr-8b": rlvr})))
    assert c.reproduced == claims.NO and "RLVR at 12%" in c.numbers


def mix_grid(*alphas: float) -> dict:
    grid = small_grid()
    for a in alphas:
        grid["runs"][f"mix-{a}"] = {**grid["runs"]["opd-8b-t32b"], "family": "alpha-mix", "method": "mix",
                                     "objective": {"alpha": a}}
    return grid


def trajectories(values: dict[str, list[float]]) -> pd.DataFrame:
    return summary_rows({(r, s, "attention"): {"stable_rank": v} for r, vs in values.items()
                         for s, v in zip((10, 20), vs)})


def test_opd_dominant_means_alpha_above_one_half_and_flat_rewards_are_no_evidence():
    grid = mix_grid(0.75, 0.5)
    summary = trajectories({"opd-8b-t32b": [3.0, 3.0], "mix-0.75": [3.1, 3.1], "mix-0.5": [4.5, 5.0]})
    c = claims.high_alpha_tracks(ReportData(grid=grid, summary=summary))
    assert c.reproduced == claims.YES and "mix-0.5" not in c.numbers   # on main 0.5 counted: "no"
    # The fixture's case: random models earn no reward, so the mix's RLVR term is 0 at every
    # step and the mix is scaled OPD: no evidence for the mix, whatever its numbers.
    logs = {"mix-0.75": log([1, 1, 1], reward=[0.0, 0.0, 0.0])}
    data = ReportData(grid=grid, summary=summary, metrics=logs)
    c = claims.judge(data, claims.high_alpha_tracks(data))
    assert c.reproduced == claims.INSUFFICIENT
    assert "mix-0.75 is no evidence for the mix: every reward was 0 in 3 logged steps" in c.reason
    # Rewards that never differ within a group (the logged count), though their mean moves.
    logs = {"mix-0.75": log([1, 1], reward=[0.5, 0.25], reward_varied_samples=[0.0, 0.0])}
    data = ReportData(grid=grid, summary=summary, metrics=logs)
    assert claims.judge(data, claims.high_alpha_tracks(data)).reproduced == claims.INSUFFICIENT
    missing = claims.missing_table(data).frame
    assert list(missing.loc[missing["problem"] == "reward never varied", "subject"]) == ["mix-0.75"]
    logs = {"mix-0.75": log([1, 1], reward=[0.5, 0.25], reward_varied_samples=[4.0, 0.0])}
    data = ReportData(grid=grid, summary=summary, metrics=logs)
    assert claims.judge(data, claims.high_alpha_tracks(data)).reproduced == claims.YES
    assert ReportData(grid=grid, metrics={"rlvr-8b": log([1], reward=[0.0])}).no_reward_signal("rlvr-8b") == []


def test_frobenius_and_hill_claims():
    def data_with(values):
        return ReportData(grid=small_grid(), summary=summary_rows(
            {(r, s, "attention"): dict(zip(("frobenius", "stable_rank", "hill_alpha"), v))
             for r, steps in values.items() for s, v in zip((10, 20), steps)}))
    base = {"sft-8b": [(1, 5, 2.0), (3, 9, 2.5)], "opd-8b-t32b": [(0.5, 3, 2.5), (0.8, 3.1, 2.6)],
            "rlvr-8b": [(0.1, 4, 3.0), (0.2, 2.5, 2.5)]}
    assert claims.frobenius_at_comparable_rank(data_with(base)).reproduced == claims.YES   # 4x, 3.1 vs 2.5
    assert claims.hill_trends(data_with(base)).reproduced == claims.YES
    rank_apart = {**base, "rlvr-8b": [(0.1, 4, 3.0), (0.2, 1.5, 2.5)]}                     # 3.1 / 1.5 > 1.5
    assert claims.frobenius_at_comparable_rank(data_with(rank_apart)).reproduced == claims.NO
    smaller = {**base, "rlvr-8b": [(0.1, 4, 3.0), (0.9, 2.5, 2.5)]}
    assert claims.frobenius_at_comparable_rank(data_with(smaller)).reproduced == claims.NO
    opd_moves = {**base, "opd-8b-t32b": [(0.5, 3, 2.0), (0.8, 3.1, 2.6)]}                   # range 0.26
    assert claims.hill_trends(data_with(opd_moves)).reproduced == claims.NO
    assert claims.hill_trends(ReportData(grid=small_grid())).reproduced == claims.INSUFFICIENT


def test_stable_rank_band_and_trend_thresholds():
    def data_with(run, values):
        return ReportData(grid=small_grid(), summary=summary_rows(
            {(run, s, "attention"): {"stable_rank": v} for s, v in zip((10, 20), values)}))
    assert claims.stable_rank_band(data_with("opd-8b-t32b", [3.0, 3.6])).reproduced == claims.YES   # 0.18
    assert claims.stable_rank_band(data_with("opd-8b-t32b", [3.0, 4.0])).reproduced == claims.NO    # 0.29
    sft_grows = claims.CHECKS[9]
    assert sft_grows(data_with("sft-8b", [5.0, 5.4])).reproduced == claims.NO                      # +8%
    assert sft_grows(data_with("sft-8b", [5.0, 6.0])).reproduced == claims.YES


def test_claims_markdown_counts(good):
    md = render(claims.claims_table(good))
    assert "| C1 |" in md and "Reproduced:" in md


# ---- figures --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(FIGURES))
def test_figure_writes_png_and_pdf_with_and_without_data(name, good, tmp_path):
    for label, data in (("full", good), ("partial", partial_of(good)), ("empty", ReportData())):
        paths = FIGURES[name](data, tmp_path / label / name)
        assert [p.suffix for p in paths] == [".png", ".pdf"]
        for p in paths:
            assert p.stat().st_size > 1000
        assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[1].read_bytes()[:5] == b"%PDF-"


# ---- the command line, on a fake tree of the miniature grid's shape -----------------------------------------

def test_cli_end_to_end(tmp_path, mini_grid):
    root = fake_results(tmp_path / "results", mini_grid)
    spec = json.dumps(mini_grid.report_spec())
    assert geopd_main(["report", "grid", "--spec", spec, "--out", str(root / "grid.json")]) == 0
    d = root / "diagnostics"
    assert geopd_main(["report", "aggregate-diagnostics", "--results", str(root), "--out-summary",
                       str(d / "summary.csv"), "--out-matrices", str(d / "matrices.csv"),
                       "--out-similarity", str(d / "similarity.csv")]) == 0
    assert geopd_main(["report", "aggregate-eval", "--results", str(root), "--out",
                       str(root / "eval" / "accuracy.csv")]) == 0
    for sub in ("tables", "claims"):
        assert geopd_main(["report", sub, "--results", str(root), "--grid", str(root / "grid.json")]) == 0
    declared = [Path(p) for p in mini_grid.table_files() + mini_grid.claims_files()]
    for p in declared:
        assert (root / p.relative_to("results")).exists(), p
    t1 = pd.read_csv(root / "tables" / "table1_sparsity.csv").set_index("run")
    assert t1.loc["opd-8b-t32b", "paper_pct"] == 51.6 and t1.loc["sft-8b", "sparsity_pct"] < 20
    c = pd.read_csv(root / "tables" / "claims.csv").set_index("id")
    assert c.loc["C1", "reproduced"] == "yes"


def test_cli_bad_grid_is_a_user_error(tmp_path, capsys):
    (tmp_path / "grid.json").write_text("{}")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "accuracy.csv").write_text("run,step,benchmark,accuracy\n")  # past the results-folder check
    assert geopd_main(["report", "tables", "--results", str(tmp_path)]) == 2
    assert "grid.json: expected an object with a 'runs' mapping" in capsys.readouterr().err


# ---- evidence: runs that did not move, undefined accuracy, missing inputs --------------------------------

def endpoints(values: dict[str, float], key: str = "bf16_sparsity", step: int = 20) -> dict:
    return {(run, step, "all"): {key: v, "n_matrices": 14} for run, v in values.items()}


def log(run_updates: list[int], **cols) -> pd.DataFrame:
    return pd.DataFrame({"step": range(1, len(run_updates) + 1), "updates": run_updates, **cols})


def test_a_run_that_did_not_move_makes_every_claim_using_it_insufficient():
    # SFT 10% < OPD 50% < RLVR 100%: the ordering "holds" only because RLVR never changed a weight.
    summary = summary_rows({**endpoints({"sft-8b": 0.1, "opd-8b-t32b": 0.5, "rlvr-8b": 1.0}),
                            ("opd-8b-t32b", 10, "attention"): {"stable_rank": 3.0},
                            ("opd-8b-t32b", 20, "attention"): {"stable_rank": 3.2}})
    data = ReportData(grid=small_grid(), summary=summary)
    c1 = claims.judge(data, claims.sparsity_order(data))
    assert c1.reproduced == claims.INSUFFICIENT and c1.runs == "sft-8b, opd-8b-t32b, rlvr-8b"
    assert "rlvr-8b did not move: no weight changed by step 20" in c1.reason and "sparsity 100%" in c1.reason
    assert claims.judge(data, claims.stable_rank_band(data)).reproduced == claims.YES   # OPD alone: decided
    late = ReportData(grid=small_grid(), summary=summary_rows(
        {("rlvr-8b", 10, "all"): {"bf16_sparsity": 1.0}, ("rlvr-8b", 20, "all"): {"bf16_sparsity": 0.7}}))
    assert late.stillness("rlvr-8b") == []    # moved by its final checkpoint: a late start is a start

    # The training log says it first: no optimizer update (zero-variance groups filtered out),
    # or zero gradient at every step; and a "no" resting on such a run is no evidence either.
    summary = summary_rows(endpoints({"sft-8b": 0.9, "opd-8b-t32b": 0.5, "rlvr-8b": 0.7}))
    data = ReportData(grid=small_grid(), summary=summary,
                      metrics={"rlvr-8b": log([0, 0, 0], reward=[0.0, 0.0, 0.0], grad_norm=[0.0] * 3),
                               "sft-8b": pd.DataFrame({"step": [1, 2], "grad_norm": [0.0, 0.0]}),
                               "opd-8b-t32b": log([2, 2, 2], grad_norm=[1.0, 0.5, 0.7])})
    v = verdicts(data)
    c1 = claims.check_all(data).set_index("id").loc["C1"]
    assert v["C1"] == claims.INSUFFICIENT   # the numbers alone would say "no"
    assert "rlvr-8b did not move: no optimizer update in 3 logged steps" in c1["reason"]
    assert "updates = 0; reward 0 at every step" in c1["reason"]
    assert "sft-8b did not move: zero gradient in all 2 logged steps" in c1["reason"]
    assert data.stillness("opd-8b-t32b") == []
    missing = claims.missing_table(data).frame
    still = missing[missing["problem"] == "did not move"].set_index("subject")
    assert set(still.index) == {"rlvr-8b", "sft-8b"} and "C1" in still.loc["rlvr-8b", "claims"]


def test_undefined_or_floor_accuracy_decides_no_projection_claim():
    def c13(acc):
        return claims.judge(ReportData(grid=small_grid(), accuracy=acc), claims.projection_keeps_opd(
            ReportData(grid=small_grid(), accuracy=acc)))
    ok = acc_rows({("opd-8b-t32b", 20): 0.60, ("rank16-opd", 20): 0.55})
    assert c13(ok).reproduced == claims.YES and c13(ok).runs == "rank16-opd, opd-8b-t32b"
    # Two zeros: SE = 0, so "projected >= unconstrained - tol" would pass with nothing measured.
    zeros = acc_rows({("opd-8b-t32b", 20): 0.0, ("rank16-opd", 20): 0.0})
    c = c13(zeros)
    assert c.reproduced == claims.INSUFFICIENT and "opd-8b-t32b has accuracy 0 at step 20" in c.reason
    c = c13(acc_rows({("opd-8b-t32b", 20): 0.60, ("rank16-opd", 20): 0.55}, n=0))
    assert c.reproduced == claims.INSUFFICIENT and "n = 0 problems" in c.reason
    c = c13(acc_rows({("opd-8b-t32b", 20): 0.60, ("rank16-opd", 20): math.nan}))
    assert c.reproduced == claims.INSUFFICIENT and "rank16-opd at step 20 on math: accuracy is NaN" in c.reason
    # Only the last common checkpoint of the grid decides: an earlier one does not stand in.
    c = c13(acc_rows({("opd-8b-t32b", 10): 0.60, ("opd-8b-t32b", 20): 0.6, ("rank16-opd", 10): 0.6}))
    assert c.reproduced == claims.INSUFFICIENT and "no accuracy of rank16-opd at step 20 on math" in c.reason


def test_figure_titles_take_k_r_and_the_matrix_set_from_the_config():
    from geopd.report.figures.common import setting, used_per_matrix
    grid = {**small_grid(), "diagnostics": {"k": 512, "r": 64, "sim_k": 16, "endpoint_matrices": "all"}}
    matrices = pd.DataFrame({"kind": "run", "run": "sft-8b", "step": 20, "matrices": "all", "name": ["q", "k"],
                             "layer": 0, "module": ["q", "k"], "numel": [1024, 512], "k": [32, 16],
                             "rows": [32, 16], "cols": [32, 32]})
    data = ReportData(grid=grid, matrices=matrices)
    assert setting(data, "k", used_per_matrix(data, "k", "all")) == "k = 512, capped per matrix at 16-32"
    assert setting(data, "r", used_per_matrix(data, "r", "all")) == "r = 64, capped per matrix at 16-32"
    assert setting(data, "sim_k", [16, 16]) == "K = 16"
    assert setting(ReportData(grid={**grid, "diagnostics": {"k": 16}}), "k", [16]) == "k = 16"


def test_partial_report_of_a_paper_shaped_grid_names_what_is_missing(tmp_path, repo):
    """The paper grid's run names, families, benchmarks (aime24, lcb-v5) and reference pairs
    through aggregation, tables, figures and claims, with a few inputs missing or broken."""
    grid = Grid.from_file(repo / "config/paper.yaml")
    root = fake_results(tmp_path / "results", grid)
    gone = {
        "diagnostics/rlvr-8b/step-1023.all.csv",          # RLVR's endpoint: C1 and its kin
        "diagnostics/reference/klear-8b-grpo.all.csv",    # a hub checkpoint that could not be read
        "eval/rank16-opd/step-299/aime24.json",           # C13's deciding evaluation
        "eval/models/qwen3-8b/aime24.json",               # a teacher's evaluation
    }
    for f in gone:
        (root / f).unlink()
    (root / "eval/opd-8b-t32b-code/step-63/lcb-v5.json").write_text("{not json")
    assert geopd_main(["report", "partial", "--results", str(root), "--out-dir", str(root / "partial")]) == 0
    out = root / "partial"

    missing = pd.read_csv(out / "tables" / "missing.csv")
    files = dict(zip(missing["file"], missing["problem"]))
    assert {f: files.get(f) for f in gone} == {f: "missing input" for f in gone}
    assert files["eval/opd-8b-t32b-code/step-63/lcb-v5.json"] == "unreadable input"
    claims_ = pd.read_csv(out / "tables" / "claims.csv").set_index("id")
    for cid in ("C1", "C2", "C3", "C4", "C6", "C7"):
        assert claims_.loc[cid, "reproduced"] == "insufficient data", cid
        assert "missing diagnostics/rlvr-8b/step-1023.all.csv" in claims_.loc[cid, "reason"], cid
    assert "missing eval/rank16-opd/step-299/aime24.json" in claims_.loc["C13", "reason"]
    assert claims_.loc["C14", "reproduced"] == "yes"          # rank16-sft vs sft-8b at step 5375
    for cid in ("C9", "C10", "C11", "C12", "C15", "C16", "C17", "C18"):
        assert claims_.loc[cid, "reproduced"] == "yes", (cid, claims_.loc[cid, "reason"])
    row = missing.set_index("file").loc["diagnostics/rlvr-8b/step-1023.all.csv"]
    assert "C1" in row["claims"] and "C9" not in row["claims"]

    t1 = pd.read_csv(out / "tables" / "table1_sparsity.csv").set_index("run")
    assert set(grid.runs) - {"rank16-opd", "rank16-sft"} == set(t1.index) - set(grid.reference_pairs())
    assert t1.loc["opd-8b-t32b-code", "paper_pct"] == 57.1 and t1.loc["opd-8b-t30ba3b", "paper_pct"] == 48.6
    assert math.isnan(t1.loc["rlvr-8b", "sparsity_pct"]) and t1.loc["rlvr-8b", "paper_pct"] == 77.2
    assert math.isnan(t1.loc["klear-8b-grpo", "sparsity_pct"]) and t1.loc["klear-8b-grpo", "paper_pct"] == 69.9
    assert t1.loc["polaris-4b-dapo", "sparsity_pct"] > 0
    assert "`diagnostics/reference/klear-8b-grpo.all.csv`" in (out / "tables" / "table1_sparsity.md").read_text()

    acc = pd.read_csv(out / "tables" / "accuracy.csv")
    assert set(acc.loc[acc["run"] == "opd-8b-t32b-code", "benchmark"]) == {"lcb-v5"}
    code = acc[(acc["run"] == "opd-8b-t32b-code") & (acc["point"] == "checkpoint")].set_index("step")
    assert math.isnan(code.loc[63, "avg@1"]) and code.loc[299, "avg@1"] > 0
    assert set(acc.loc[acc["run"] == "rlvr-8b", "benchmark"]) == {"aime24"}
    teachers_ = pd.read_csv(out / "tables" / "teachers.csv")
    assert {("qwen3-32b", "lcb-v5"), ("qwen3-32b", "aime24"), ("qwen3-8b", "aime24")} <= set(
        zip(teachers_["teacher"], teachers_["benchmark"]))
    assert teachers_.loc[teachers_["teacher"] == "qwen3-8b", "teacher_acc"].isna().all()   # its eval is missing
    assert list(teachers_.loc[teachers_["benchmark"] == "lcb-v5", "student_run"]) == ["opd-8b-t32b-code"]
    for name in FIGURES:
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    assert (out / "diagnostics" / "summary.csv").exists() and (out / "eval" / "accuracy.csv").exists()


# ---- the workflow's report_partial target ------------------------------------------------------------------

def _upstream(results: Path, grid: Grid) -> None:
    """Stand-ins for what the per-checkpoint files are made from (data, models, checkpoints),
    older than everything made from them, so Snakemake sees the tree as up to date."""
    made = sorted(p for p in results.rglob("*"))
    for ds in grid.datasets:
        (results / "data" / ds).mkdir(parents=True, exist_ok=True)
    for model in grid.models:
        (results / "models" / model).mkdir(parents=True, exist_ok=True)
    for run in grid.runs:
        (results / "runs" / run / "checkpoints").mkdir(parents=True, exist_ok=True)
    for f in grid.eval_files():
        Path(f.replace("results", str(results), 1)).with_suffix(".samples.jsonl").write_text("{}\n")
    old = time.time() - 3600
    for rank, group in enumerate([results.glob("data/*"), results.glob("models/*-tbase"), results.glob("models/*"),
                                  [results / "runs" / "sft-8b" / "checkpoints"], results.glob("runs/*/*"),
                                  made, results.rglob("*.samples.jsonl")]):
        for p in group:
            os.utime(p, (old + 60 * rank, old + 60 * rank))


@pytest.mark.slow
def test_report_partial_builds_from_what_exists_and_the_full_dag_still_waits(tmp_path, repo):
    slice_cfg = repo / "tests" / "configs" / "slice.yaml"
    grid = Grid.from_file(slice_cfg)
    results = tmp_path / "results"
    fake_results(results, grid)
    _upstream(results, grid)
    lost = ["eval/rlvr-8b/step-4/math-heldout.json", "diagnostics/opd-8b-t32b/step-4.all.csv"]
    for f in lost:
        (results / f).unlink()

    def smk(*args):
        proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-s", str(repo / "Snakefile"),
                               "-d", str(tmp_path), "--configfile", str(slice_cfg), "--cores", "1", *args],
                              cwd=repo, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    def jobs(text):
        stats = text.split("Job stats:")[1] if "Job stats:" in text else ""
        return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)
                if m.group(1) not in ("total", "all")}

    # The complete DAG still waits for every evaluation and diagnosis ...
    # (and each run's training curves, which this tree lacks)
    assert jobs(smk("-n", "--quiet", "rules")) == {"evaluate": 1, "diagnose": 1, "aggregate_eval": 1,
                                                  "aggregate_diagnostics": 1, "tables": 1, "figures": 1, "claims": 1,
                                                  "run_curves": 3}
    # ... report_partial makes none of them, only the report from the rest.
    assert jobs(smk("-n", "--quiet", "rules", "--", "report_partial")) == {"report_partial": 1}
    smk("report_partial")
    out = results / "partial"
    missing = pd.read_csv(out / "tables" / "missing.csv")
    assert set(lost) <= set(missing.loc[missing["problem"] == "missing input", "file"])
    claims_ = pd.read_csv(out / "tables" / "claims.csv").set_index("id")
    assert claims_.loc["C1", "reproduced"] == "insufficient data"
    assert "missing diagnostics/opd-8b-t32b/step-4.all.csv" in claims_.loc["C1", "reason"]
    assert (out / "figures" / "fig2_angles_nss.png").stat().st_size > 1000
    assert not (results / lost[0]).exists() and not (results / "tables").exists()


def test_a_teacher_no_stronger_than_the_anchor_is_no_evidence_of_distillation():
    """The fixture's case: random teacher and student both score 0, so an OPD run matched one
    random model to another; C9 (and every claim on such a run) is then insufficient data."""
    summary = trajectories({"opd-8b-t32b": [3.0, 3.3]})                     # band 0.095: "yes" by its numbers
    flat = acc_rows({("sft-8b", 20): 0.0, ("T", None): 0.0, ("opd-8b-t32b", 20): 0.0})
    data = ReportData(grid=small_grid(), summary=summary, accuracy=flat)
    assert claims.stable_rank_band(data).reproduced == claims.YES
    c = claims.judge(data, claims.stable_rank_band(data))
    assert c.reproduced == claims.INSUFFICIENT
    assert "opd-8b-t32b is no evidence of distillation: its teacher T is no stronger than its anchor" in c.reason
    missing = claims.missing_table(data).frame
    assert "opd-8b-t32b" in set(missing.loc[missing["problem"] == "teacher no stronger", "subject"])
    assert data.no_teacher_signal("rlvr-8b") == []                           # no teacher, nothing to say
    # A weaker teacher voids too; a stronger one, or none evaluated, does not.
    weaker = ReportData(grid=small_grid(), summary=summary,
                        accuracy=acc_rows({("sft-8b", 20): 0.4, ("T", None): 0.3}))
    assert claims.judge(weaker, claims.stable_rank_band(weaker)).reproduced == claims.INSUFFICIENT
    stronger = ReportData(grid=small_grid(), summary=summary,
                          accuracy=acc_rows({("sft-8b", 20): 0.4, ("T", None): 0.41}))
    assert claims.judge(stronger, claims.stable_rank_band(stronger)).reproduced == claims.YES
    unevaluated = ReportData(grid=small_grid(), summary=summary, accuracy=acc_rows({("sft-8b", 20): 0.4}))
    assert unevaluated.no_teacher_signal("opd-8b-t32b") == []


def test_run_curves_of_a_run_with_a_dot_in_its_name(tmp_path):
    """Mix runs are named opd-mix-0.50: the figure must be opd-mix-0.50.png, not opd-mix-0.png
    (the miniature's run_curves job for opd-sparse-random-0.50 failed on that)."""
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "lr": 1e-5, "updates": 1}) + "\n"
                               for s in (1, 2, 3)))
    out = tmp_path / "figures" / "opd-mix-0.50.png"
    proc = subprocess.run([sys.executable, "-m", "geopd.cli", "report", "run-curves", "--metrics", str(metrics),
                           "--run", "opd-mix-0.50", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.parent.iterdir()) == ["opd-mix-0.50.pdf", "opd-mix-0.50.png"]
