"""The results layout: every path the workflow writes, in one place.

Used by the grid (targets and job inputs), the Snakemake rules (output patterns: pass a
wildcard such as "{run}" for a name and the same string comes back with the wildcard in it)
and the report (the aggregated files it reads). Pure string work: no I/O, no config.

    <results>/data/<dataset>/                       prepared data (train/test JSONL)
    <results>/models/<model>/                       built (miniature) models
    <results>/runs/<run>/checkpoints/step-<N>/      checkpoints; state-<N>/ kept training states
    <results>/runs/<run>/metrics.jsonl              per-step training metrics
    <results>/runs/<run>/state/                     resume state (not an output)
    <results>/runs/<run>/tensorboard/               TensorBoard event files (geopd.train.tracking)
    <results>/runs/<run>/progress.json              where the run is (geopd status reads it)
    <results>/runs/<run>/wandb/                     W&B's files (offline runs, for `wandb sync`)
    <results>/diagnostics/<run>/step-<N>.<set>.csv  per-matrix diagnostics (+ .json summary)
    <results>/diagnostics/<run>/similarity.csv      Sim_K of each checkpoint to the final one
    <results>/diagnostics/reference/<pair>.all.csv  reference (base, tuned) model pairs
    <results>/diagnostics/{summary,matrices,similarity}.csv   aggregated
    <results>/eval/<run>/step-<N>/<bench>.json      accuracy (+ .samples.jsonl)
    <results>/eval/models/<model>/<bench>.json      a model's accuracy (teachers)
    <results>/eval/accuracy.csv                     aggregated
    <results>/grid.json                             the grid description the report reads
    <results>/tables/, <results>/figures/           the paper's tables, figures, claims
    <results>/figures/runs/<run>.png                each run's training curves
    <results>/logs/<rule>/...                       one log per job
"""
from __future__ import annotations

from pathlib import Path

TABLES = ("table1_sparsity", "update_masks", "effopd_spectral", "accuracy", "teachers")
FIGURES = ("fig2_angles_nss", "fig3_mask_overlap", "fig4_trajectories", "fig5_sim16",
           "fig6_projection", "fig8_projection_benchmarks", "fig7_controls", "training_curves",
           "effopd_accuracy")


class RunFiles:
    """What a training run writes into its folder beside its outputs while it trains (not
    outputs: Snakemake neither makes nor removes them)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.tensorboard = self.run_dir / "tensorboard"   # TensorBoard event files
        self.progress = self.run_dir / "progress.json"    # step, total, timing, host/pid/Slurm job
        self.wandb_root = self.run_dir                     # W&B writes <wandb_root>/wandb/

# The lm-eval task YAMLs geopd ships (a benchmark's `task` names one): package data, not results.
TASKS_DIR = Path(__file__).resolve().parent / "evaluate" / "tasks"


class Layout:
    """Paths under one results root (a str or Path; every method returns a str)."""

    def __init__(self, root: str | Path = "results"):
        self.root = Path(root)

    def _p(self, *parts: str) -> str:
        return str(self.root.joinpath(*parts))

    # ---- data and models -----------------------------------------------------------------
    def data_dir(self, dataset: str) -> str:
        return self._p("data", dataset)

    def built_model_dir(self, model: str) -> str:
        return self._p("models", model)

    # ---- runs ---------------------------------------------------------------------------
    def run_dir(self, run: str) -> str:
        return self._p("runs", run)

    def checkpoints_dir(self, run: str) -> str:
        return self._p("runs", run, "checkpoints")

    def checkpoint(self, run: str, step: int | str) -> str:
        return f"{self.checkpoints_dir(run)}/step-{step}"

    def kept_state(self, run: str, step: int | str) -> str:
        """A training state a continuing run starts from (`keep_state`), beside the checkpoints."""
        return f"{self.checkpoints_dir(run)}/state-{step}"

    def metrics_file(self, run: str) -> str:
        return self._p("runs", run, "metrics.jsonl")

    def state_dir(self, run: str) -> str:
        return self._p("runs", run, "state")

    def run_files(self, run: str) -> RunFiles:
        return RunFiles(self.run_dir(run))

    def run_curves(self, run: str) -> str:
        """A run's training curves for the report (png; pdf beside it)."""
        return self._p("figures", "runs", f"{run}.png")

    # ---- diagnostics --------------------------------------------------------------------
    def diagnostics_run_dir(self, run: str) -> str:
        return self._p("diagnostics", run)

    def diagnostics_file(self, run: str, step: int | str, matrices: str) -> str:
        return self._p("diagnostics", run, f"step-{step}.{matrices}.csv")

    def similarity_file(self, run: str) -> str:
        return self._p("diagnostics", run, "similarity.csv")

    def reference_file(self, pair: str) -> str:
        return self._p("diagnostics", "reference", f"{pair}.all.csv")

    def diagnostics_summary(self) -> str:
        return self._p("diagnostics", "summary.csv")

    def diagnostics_matrices(self) -> str:
        return self._p("diagnostics", "matrices.csv")

    def similarity_summary(self) -> str:
        return self._p("diagnostics", "similarity.csv")

    # ---- evaluation ---------------------------------------------------------------------
    def eval_run_dir(self, run: str) -> str:
        return self._p("eval", run)

    def eval_file(self, run: str, step: int | str, bench: str) -> str:
        return self._p("eval", run, f"step-{step}", f"{bench}.json")

    def model_eval_file(self, model: str, bench: str) -> str:
        return self._p("eval", "models", model, f"{bench}.json")

    def accuracy_file(self) -> str:
        return self._p("eval", "accuracy.csv")

    # ---- report -------------------------------------------------------------------------
    def grid_file(self) -> str:
        return self._p("grid.json")

    def table_files(self) -> list[str]:
        return [self._p("tables", f"{t}.{ext}") for t in TABLES for ext in ("csv", "md")]

    def figure_files(self) -> list[str]:
        return [self._p("figures", f"{f}.{ext}") for f in FIGURES for ext in ("png", "pdf")]

    def claims_files(self) -> list[str]:
        return [self._p("tables", f"claims.{ext}") for ext in ("csv", "md")]

    def log(self, *parts: str) -> str:
        return self._p("logs", *parts)

    def relative(self, path: str | Path) -> str:
        """`path` relative to the results root, '/'-separated (as grid.json records inputs)."""
        return Path(path).relative_to(self.root).as_posix()


def samples_file(eval_file: str) -> str:
    """The per-sample generations beside an evaluation's JSON."""
    if not eval_file.endswith(".json"):
        raise ValueError(f"not an evaluation file: {eval_file}")
    return eval_file[:-len(".json")] + ".samples.jsonl"


def summary_file(diagnostics_csv: str) -> str:
    """The JSON summary beside a diagnosis' per-matrix CSV."""
    if not diagnostics_csv.endswith(".csv"):
        raise ValueError(f"not a diagnostics file: {diagnostics_csv}")
    return diagnostics_csv[:-len(".csv")] + ".json"
