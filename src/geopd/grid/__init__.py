"""The grid: config -> runs, their dependencies, output paths, resources and jobs.

Shared by the Snakefile (targets, inputs, params, resources) and the planner (`geopd plan`),
so both always agree on what the grid is. Pure Python: no torch, no Snakemake imports.

`Grid` is assembled from three parts: geopd.grid.runs (the typed runs: `extends`, references
and every cross-reference checked), geopd.grid.specs (what each command and job gets) and
geopd.grid.targets (the per-checkpoint work and how it is cut into jobs). Every path is
geopd.paths.Layout's; the methods below name them for the rules.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from geopd.config import deep_merge, read_yaml, validate
from geopd.errors import UserError
from geopd.grid.runs import Run, resolve_runs
from geopd.grid.specs import Specs
from geopd.grid.targets import Targets
from geopd.paths import Layout


class Grid(Specs, Targets):
    def __init__(self, config: dict, sources: Iterable[str | Path] = (), results: str | None = None):
        self.config = config
        self.sources = [str(s) for s in sources] or ["(config)"]
        self.results = Path(results or config.get("results", "results"))
        self.layout = Layout(self.results)
        self.device: str = config.get("device", "cpu")
        self.models: dict[str, dict] = config["models"]
        self.datasets: dict[str, dict] = config["datasets"]
        self.benchmarks: dict[str, dict] = config["benchmarks"]
        # Hub models and data sets are read from here (geopd.mirror) when set, never downloaded
        # by a compute job.
        self.mirror = Path(config["hub_mirror"]) if config.get("hub_mirror") else None
        self.runs: dict[str, Run] = resolve_runs(config, self._fail)
        placement = self.placement_problems()
        if placement:
            raise UserError(f"{', '.join(self.sources)}: jobs that could not start on what they request "
                            f"({len(placement)} problem(s)):\n  " + "\n  ".join(placement))

    @classmethod
    def from_file(cls, path: str | Path, overrides: dict | None = None) -> "Grid":
        config = read_yaml(path)
        if overrides:
            config = deep_merge(config, overrides)
        return cls(validate(config, [path]), [path])

    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> "Grid":
        """Several config files merged in order, as `snakemake --configfile a b` merges them."""
        paths = list(paths)
        return cls(validate(merged_config(paths), paths), paths)

    def _fail(self, key: str, message: str):
        raise UserError(f"{', '.join(self.sources)}: {key}: {message}")

    # ---- paths (geopd.paths.Layout) ---------------------------------------------------------

    def data_dir(self, name: str) -> str:
        return self.layout.data_dir(name)

    def built_model_dir(self, name: str) -> str:
        return self.layout.built_model_dir(name)

    def checkpoints_dir(self, run: str) -> str:
        return self.layout.checkpoints_dir(run)

    def checkpoint(self, run: str, step: int | None = None) -> str:
        """A run's checkpoint at `step` (default: its final one)."""
        step = self.runs[run].final_step if step is None else step
        return self.layout.checkpoint(run, step)

    def metrics_file(self, run: str) -> str:
        return self.layout.metrics_file(run)

    def state_dir(self, run: str) -> str:
        return self.layout.state_dir(run)

    def diagnostics_run_dir(self, run: str) -> str:
        return self.layout.diagnostics_run_dir(run)

    def diagnostics_file(self, run: str, step: int, matrices: str) -> str:
        return self.layout.diagnostics_file(run, step, matrices)

    def similarity_file(self, run: str) -> str:
        return self.layout.similarity_file(run)

    def reference_file(self, pair: str) -> str:
        return self.layout.reference_file(pair)

    def eval_run_dir(self, run: str) -> str:
        return self.layout.eval_run_dir(run)

    def eval_file(self, run: str, step: int | str, bench: str) -> str:
        return self.layout.eval_file(run, step, bench)

    def model_eval_file(self, model: str, bench: str) -> str:
        return self.layout.model_eval_file(model, bench)

    def table_files(self) -> list[str]:
        return self.layout.table_files()

    def figure_files(self) -> list[str]:
        return self.layout.figure_files()

    def claims_files(self) -> list[str]:
        return self.layout.claims_files()


def merged_config(paths: Iterable[str | Path]) -> dict:
    """Config files merged in order (mappings key by key, anything else replaced)."""
    config: dict = {}
    for path in paths:
        config = deep_merge(config, read_yaml(path))
    return config
