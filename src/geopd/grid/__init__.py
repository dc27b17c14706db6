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

from geopd.config import Merged, Sources, deep_merge, merge_files, validate
from geopd.errors import UserError
from geopd.grid.runs import Run, resolve_runs
from geopd.grid.specs import Specs
from geopd.grid.targets import Targets
from geopd.paths import Layout


class Grid(Specs, Targets):
    def __init__(self, config: dict, sources: Iterable[str | Path] | Sources = (), results: str | None = None):
        self.config = config
        # Which file set which key, so that every message names the file(s) of its key.
        self.origins = sources if isinstance(sources, Sources) else Sources([str(s) for s in sources])
        self.sources = list(self.origins.files) or ["(config)"]
        # What a later config file changed in a run it redefines (one line per run).
        self.changes: list[str] = []
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
        return cls.load([path], overrides=overrides)

    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> "Grid":
        """Several config files merged in order, as `snakemake --configfile a b` merges them."""
        return cls.load(paths)

    @classmethod
    def load(cls, paths: Iterable[str | Path], config: dict | None = None, overrides: dict | None = None) -> "Grid":
        """The grid of config files, each read strictly (geopd.config.read_yaml), merged in order,
        checked against the schema and for every cross-reference; a UserError naming the file and
        key of the first kind of problem found. `config`: the merged config to use instead (the
        workflow's, which `--config` may have changed); the files still name the keys."""
        merged: Merged = merge_files(paths)
        config = merged.config if config is None else config
        if overrides:
            config = deep_merge(config, overrides)
        grid = cls(validate(config, merged.sources), merged.sources)
        grid.changes = merged.changes
        return grid

    def _fail(self, key: str, message: str, *more: str):
        """A UserError naming the file(s) that set `key` (and `more` keys, for a message about
        several), then the key."""
        raise UserError(f"{self.origins.of(key, *more)}: {key}: {message}")

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
    return merge_files(paths).config
