"""The grid's per-checkpoint work and how it is cut into jobs: every diagnosis, similarity and
evaluation the grid asks for, what each aggregation waits for, and the final targets.

`Targets` is one part of geopd.grid.Grid (it reads the grid's runs, config and layout).
"""
from __future__ import annotations

from geopd.paths import summary_file


class Targets:
    # ---- diagnostics -----------------------------------------------------------------------

    @property
    def trajectory_matrices(self) -> str:
        """The matrix set diagnosed at every checkpoint of a trajectory run."""
        return self.config["diagnostics"].get("trajectory_matrices", "attention")

    @property
    def endpoint_matrices(self) -> str:
        """The matrix set diagnosed at each run's final checkpoint."""
        return self.config["diagnostics"].get("endpoint_matrices", "all")

    def diagnostics_targets(self) -> list[tuple[str, int, str]]:
        """(run, step, matrix set) for every checkpoint diagnosis of the grid."""
        out = []
        for run in self.runs.values():
            if run.diagnostics == "none":
                continue
            if run.diagnostics == "trajectory":
                out += [(run.name, s, self.trajectory_matrices) for s in run.checkpoints]
            endpoint = (run.name, run.final_step, self.endpoint_matrices)
            if endpoint not in out:
                out.append(endpoint)
        return out

    def diagnose_runs(self) -> list[str]:
        """Runs with at least one diagnosis, in config order."""
        return list(dict.fromkeys(r for r, _, _ in self.diagnostics_targets()))

    def diagnose_run_targets(self, run: str) -> list[tuple[int, str]]:
        """(step, matrix set) of every diagnosis of one run."""
        return [(s, m) for r, s, m in self.diagnostics_targets() if r == run]

    def diagnostics_inputs(self) -> list[str]:
        """What aggregate_diagnostics waits for: every diagnosis and similarity file, or with
        diagnoses grouped by run, each run's diagnostics folder (its similarity inside); the
        reference pairs' files either way."""
        refs = [self.reference_file(p) for p in self.reference_pairs()]
        refs += [summary_file(f) for f in refs]
        if self.grouping("diagnose") == "run":
            return [self.diagnostics_run_dir(r) for r in self.diagnose_runs()] + refs
        files = [self.diagnostics_file(r, s, m) for r, s, m in self.diagnostics_targets()]
        return (files + [summary_file(f) for f in files]
                + [self.similarity_file(r) for r in self.similarity_runs()] + refs)

    def similarity_runs(self) -> list[str]:
        return [r.name for r in self.runs.values() if r.diagnostics == "trajectory"]

    def reference_pairs(self) -> dict[str, dict]:
        return {p["name"]: p for p in self.config.get("reference_pairs", [])}

    # ---- evaluation ------------------------------------------------------------------------

    def eval_targets(self) -> list[tuple[str, str, str]]:
        """(subject, step-or-'model', benchmark): every checkpoint of every run on its `eval`
        benchmarks, the steps of its `eval_at`, and teachers."""
        out = []
        for run in self.runs.values():
            for bench in run.benchmarks:
                out += [(run.name, str(s), bench) for s in run.eval_steps(bench)]
        for model, benches in self.teacher_benchmarks().items():
            out += [(model, "model", b) for b in benches]
        return out

    def teacher_benchmarks(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for run in self.runs.values():
            if run.teacher:
                out.setdefault(run.teacher, [])
                out[run.teacher] += [b for b in run.eval if b not in out[run.teacher]]
        return out

    def eval_runs(self) -> list[str]:
        """Runs with at least one benchmark, in config order."""
        return [r.name for r in self.runs.values() if r.benchmarks]

    def eval_run_targets(self, run: str) -> list[tuple[int, str]]:
        """(step, benchmark) of every evaluation of one run, benchmark by benchmark: a grouped job
        (`geopd batch`) keeps its vLLM engine while the settings stay, and benchmarks with other
        engine settings then cost one engine start each, not one per checkpoint."""
        r = self.runs[run]
        return [(s, b) for b in r.benchmarks for s in r.eval_steps(b)]

    def eval_inputs(self) -> list[str]:
        """What aggregate_eval waits for: every evaluation file, or with evaluations grouped by
        run, each run's evaluation folder (and the models' files, which stay one job each)."""
        if self.grouping("evaluate") == "checkpoint":
            return self.eval_files()
        return ([self.eval_run_dir(r) for r in self.eval_runs()]
                + [self.model_eval_file(m, b) for m, benches in self.teacher_benchmarks().items() for b in benches])

    def eval_files(self) -> list[str]:
        return [self.model_eval_file(s, b) if step == "model" else self.eval_file(s, step, b)
                for s, step, b in self.eval_targets()]

    # ---- jobs ---------------------------------------------------------------------------

    def grouping(self, work: str) -> str:
        """`job_grouping.<work>` ("evaluate" or "diagnose"): "checkpoint", one job per checkpoint
        (and benchmark, or matrix set), or "run", one job for all checkpoints of a run (one
        process start-up and import per run). The per-checkpoint files are the same either way."""
        return self.config.get("job_grouping", {}).get(work, "checkpoint")

    def run_curves_files(self) -> list[str]:
        """Each run's training curves (the report's "Training curves" pages)."""
        return [self.layout.run_curves(r) for r in self.runs]

    def final_targets(self) -> list[str]:
        return self.table_files() + self.figure_files() + self.claims_files() + self.run_curves_files()
