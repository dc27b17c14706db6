"""The grid: config -> runs, their dependencies, output paths, resources and jobs.

Shared by the Snakefile (targets, inputs, params, resources) and the planner (`geopd plan`),
so both always agree on what the grid is. Pure Python: no torch, no Snakemake imports.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from geopd.config import deep_merge, read_yaml, validate
from geopd.errors import UserError
from geopd.paths import FIGURES, TABLES, Layout, summary_file

RULES = ("prepare_data", "pretrain_model", "finetune_model", "train", "diagnose", "similarity",
         "evaluate", "report")
MATRIX_SETS = ("all", "attention")


@dataclass(frozen=True)
class Ref:
    """What a run starts from: a model of the `models` section, or a run's checkpoint."""

    kind: str  # "model" | "run"
    name: str
    step: int | None = None  # for runs: None = final checkpoint

    def __str__(self) -> str:
        return self.name if self.step is None else f"{self.name}@{self.step}"


@dataclass
class Run:
    name: str
    family: str
    method: str
    init: Ref
    w0: Ref
    teacher: str | None
    data: str
    seed: int
    steps: int
    start_step: int
    checkpoints: list[int]
    diagnostics: str
    eval: list[str]
    settings: dict[str, Any]  # batch_size, max_length, optim, rollout, objective
    projection: dict | None = None
    extrapolation: dict | None = None
    resources: dict = field(default_factory=dict)

    @property
    def final_step(self) -> int:
        return self.checkpoints[-1]


class Grid:
    def __init__(self, config: dict, sources: Iterable[str | Path] = (), results: str | None = None):
        self.config = config
        self.sources = [str(s) for s in sources] or ["(config)"]
        self.results = Path(results or config.get("results", "results"))
        self.layout = Layout(self.results)
        self.models: dict[str, dict] = config["models"]
        self.datasets: dict[str, dict] = config["datasets"]
        self.benchmarks: dict[str, dict] = config["benchmarks"]
        # Hub models and data sets are read from here (geopd.mirror) when set, never downloaded
        # by a compute job.
        self.mirror = Path(config["hub_mirror"]) if config.get("hub_mirror") else None
        self.runs: dict[str, Run] = {}
        self._raw_runs = self._resolve_extends(config["runs"])
        self._check_model_builds()
        for name, raw in self._raw_runs.items():
            self.runs[name] = self._make_run(name, raw)
        self._check_run_cycles()
        for ref in config.get("reference_pairs", []):
            for key in ("base", "tuned"):
                if ref[key] not in self.models:
                    self._fail(f"reference_pairs.{ref['name']}.{key}", f"unknown model '{ref[key]}'")

    # ---- construction ------------------------------------------------------------------

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

    def _resolve_extends(self, runs: dict) -> dict[str, dict]:
        resolved: dict[str, dict] = {}

        def resolve(name: str, chain: tuple[str, ...]) -> dict:
            if name in resolved:
                return resolved[name]
            raw = runs[name]
            parent = raw.get("extends")
            if parent is None:
                out = dict(raw)
            else:
                if parent not in runs:
                    self._fail(f"runs.{name}.extends", f"unknown run '{parent}'")
                if parent in chain:
                    cycle = " -> ".join((*chain, name, parent)[chain.index(parent):])
                    self._fail(f"runs.{name}.extends", f"cycle between runs: {cycle}")
                base = {k: v for k, v in resolve(parent, (*chain, name)).items()
                        # Identity and analysis choices are not inherited: a variant is its
                        # own run and states its own family.
                        if k not in ("family", "extends")}
                out = deep_merge(base, {k: v for k, v in raw.items() if k != "extends"})
            resolved[name] = out
            return out

        for name in runs:
            resolve(name, ())
        return resolved

    def _check_model_builds(self) -> None:
        sizes = self.config.get("model_sizes", {})
        for name, model in self.models.items():
            build = model.get("build")
            if not build:
                continue
            if "size" in build and build["size"] not in sizes:
                self._fail(f"models.{name}.build.size", f"unknown size '{build['size']}' (not in model_sizes)")
            if "from" in build:
                if build["from"] not in self.models:
                    self._fail(f"models.{name}.build.from", f"unknown model '{build['from']}'")
                seen, cur = [name], build["from"]
                while cur is not None:
                    if cur in seen:
                        self._fail(f"models.{name}.build.from", f"cycle between models: {' -> '.join(seen + [cur])}")
                    seen.append(cur)
                    cur = self.models[cur].get("build", {}).get("from")
            stage = build.get("pretrain") or build.get("finetune")
            for key in ("corpus", "data"):
                if key in stage and stage[key] not in self.datasets:
                    self._fail(f"models.{name}.build.{'pretrain' if 'pretrain' in build else 'finetune'}.{key}",
                               f"unknown data set '{stage[key]}'")

    def _parse_ref(self, key: str, text: str) -> Ref:
        name, _, step = text.partition("@")
        if step:
            if not step.isdigit():
                self._fail(key, f"'{text}': the step after '@' must be an integer")
            if name not in self.config["runs"]:
                self._fail(key, f"unknown run '{name}' in '{text}'")
            return Ref("run", name, int(step))
        if name in self.config["runs"]:
            return Ref("run", name)
        if name in self.models:
            return Ref("model", name)
        self._fail(key, f"unknown run or model '{text}'")

    def _make_run(self, name: str, raw: dict) -> Run:
        key = f"runs.{name}"
        method = raw.get("method")
        if method is None:
            self._fail(f"{key}.method", "missing (set it or `extends` a run that has one)")
        defaults = self.config["method_defaults"].get(method)
        if defaults is None:
            self._fail(f"{key}.method", f"no method_defaults for '{method}'")
        merged = deep_merge(defaults, raw)
        if "init" not in merged:
            self._fail(f"{key}.init", "missing")
        init = self._parse_ref(f"{key}.init", merged["init"])
        w0 = self._parse_ref(f"{key}.w0", merged["w0"]) if "w0" in merged else init
        teacher = merged.get("teacher")
        needs_teacher = method in ("opd", "mix")
        if needs_teacher and teacher is None:
            self._fail(f"{key}.teacher", f"method '{method}' needs a teacher")
        if teacher is not None:
            if not needs_teacher:
                self._fail(f"{key}.teacher", f"method '{method}' takes no teacher")
            if teacher not in self.models:
                self._fail(f"{key}.teacher", f"unknown model '{teacher}'")
        data = merged.get("data")
        if data not in self.datasets:
            self._fail(f"{key}.data", f"unknown data set '{data}'")
        for bench in merged.get("eval", []):
            if bench not in self.benchmarks:
                self._fail(f"{key}.eval", f"unknown benchmark '{bench}'")
        start = init.step or 0  # a run started from run@step counts on from that step
        steps = merged["steps"]
        checkpoints = sorted(set(merged["checkpoints"]) | {steps})
        bad = [c for c in checkpoints if c <= start or c > steps]
        if bad:
            self._fail(f"{key}.checkpoints", f"steps {bad} outside ({start}, {steps}]")
        if merged.get("rollout", {}).get("source") == "teacher" and not needs_teacher:
            self._fail(f"{key}.rollout.source", "off-policy rollouts need a teacher")
        if method == "mix" and "alpha" not in merged.get("objective", {}):
            self._fail(f"{key}.objective.alpha", "method 'mix' needs alpha")
        projection = merged.get("projection")
        if projection is not None:
            if projection["run"] not in self.config["runs"]:
                self._fail(f"{key}.projection.run", f"unknown run '{projection['run']}'")
        settings = {k: merged[k] for k in ("batch_size", "max_length", "optim", "rollout", "objective", "engine",
                                              "teacher_engine")
                    if k in merged}
        return Run(
            name=name,
            family=merged.get("family", method),
            method=method,
            init=init,
            w0=w0,
            teacher=teacher,
            data=data,
            seed=merged.get("seed", self.config["seed"]),
            steps=steps,
            start_step=start,
            checkpoints=checkpoints,
            diagnostics=merged.get("diagnostics", "endpoint"),
            eval=list(merged.get("eval", [])),
            settings=settings,
            projection=projection,
            extrapolation=merged.get("extrapolation"),
            resources=merged.get("resources", {}),
        )

    def _run_deps(self, run: Run) -> list[tuple[str, str]]:
        deps = [("init", run.init), ("w0", run.w0)]
        if run.projection:
            deps.append(("projection.run", Ref("run", run.projection["run"], run.projection["step"])))
        return [(k, r) for k, r in deps if r.kind == "run"]

    def _check_run_cycles(self) -> None:
        state: dict[str, int] = {}  # 1 visiting, 2 done

        def visit(name: str, path: list[str]):
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = " -> ".join(path[path.index(name):] + [name])
                self._fail(f"runs.{path[-1]}.init", f"cycle between runs: {cycle}")
            state[name] = 1
            for key, ref in self._run_deps(self.runs[name]):
                target = self.runs[ref.name]
                if ref.step is not None and ref.step not in target.checkpoints:
                    self._fail(f"runs.{name}.{key}",
                               f"run '{ref.name}' saves no checkpoint at step {ref.step} "
                               f"(it saves {target.checkpoints})")
                visit(ref.name, path + [ref.name])
            state[name] = 2

        for name in self.runs:
            visit(name, [name])

    # ---- paths -------------------------------------------------------------------------

    def data_dir(self, name: str) -> str:
        return self.layout.data_dir(name)

    def built_model_dir(self, name: str) -> str:
        return self.layout.built_model_dir(name)

    def checkpoints_dir(self, run: str) -> str:
        return self.layout.checkpoints_dir(run)

    def checkpoint(self, run: str, step: int | None = None) -> str:
        step = self.runs[run].final_step if step is None else step
        return self.layout.checkpoint(run, step)

    def metrics_file(self, run: str) -> str:
        return self.layout.metrics_file(run)

    def state_dir(self, run: str) -> str:
        return self.layout.state_dir(run)

    def model_source(self, name: str) -> str:
        """Where a model's weights are read from: a built or local dir, its hub mirror copy, or
        (no mirror configured) the hub id itself."""
        model = self.models[name]
        if "build" in model:
            return self.built_model_dir(name)
        if "path" in model:
            return model["path"]
        if self.mirror is not None:
            return self.mirror_dir("models", model["hub"])
        return model["hub"]

    def model_inputs(self, name: str) -> list[str]:
        """Files Snakemake must make before a model can be read: a built model's folder, a hub
        model's prefetch marker (with a mirror), nothing for local paths."""
        model = self.models[name]
        if "build" in model:
            return [self.built_model_dir(name)]
        if "hub" in model and self.mirror is not None:
            return [self.prefetch_marker("models", model["hub"])]
        return []

    # ---- the hub mirror ------------------------------------------------------------------

    def mirror_dir(self, kind: str, repo: str) -> str:
        from geopd import mirror

        return str(mirror.repo_dir(self.mirror, kind, repo))

    def prefetch_marker(self, kind: str, repo: str) -> str:
        from geopd import mirror

        return str(mirror.marker(self.mirror, kind, repo))

    def hub_repos(self) -> list[tuple[str, str]]:
        """(kind, repo) of every hub model and data set the config names, in config order."""
        out = [("models", m["hub"]) for m in self.models.values() if "hub" in m and "path" not in m]
        out += [("datasets", d["hub"]) for d in self.datasets.values() if "hub" in d and "path" not in d]
        return list(dict.fromkeys(out))

    def prefetch_spec(self, kind: str, repo: str) -> dict:
        """What `geopd prefetch` downloads for one repo: models their weights, config and
        tokenizer; LiveCodeBench only the release files its data sets read; others whole."""
        if self.mirror is None:
            self._fail("hub_mirror", "not set: there is no mirror to prefetch into")
        if (kind, repo) not in self.hub_repos():
            self._fail("models" if kind == "models" else "datasets", f"no {kind[:-1]} with hub id '{repo}'")
        spec: dict[str, Any] = {"kind": kind, "repo": repo, "mirror": str(self.mirror)}
        if kind == "datasets":
            specs = [d for d in self.datasets.values() if d.get("hub") == repo]
            if specs and all(d["kind"] == "hub-lcb" for d in specs):
                from geopd.data.lcb import RELEASE_FILES

                names = sorted({n for d in specs for n in RELEASE_FILES.get(d.get("release", "release_v5"), [])})
                spec["allow_patterns"] = ["README.md", *names]
        return spec

    def ref_source(self, ref: Ref) -> str:
        if ref.kind == "model":
            return self.model_source(ref.name)
        return self.checkpoint(ref.name, ref.step)

    def ref_inputs(self, ref: Ref) -> list[str]:
        if ref.kind == "model":
            return self.model_inputs(ref.name)
        return [self.checkpoints_dir(ref.name)]

    # ---- specs handed to the package's commands ----------------------------------------

    def data_spec(self, name: str) -> dict:
        spec = {"name": name, "seed": self.config["seed"], **self.datasets[name]}
        if "hub" in spec and "path" not in spec and self.mirror is not None:
            spec["path"] = self.mirror_dir("datasets", spec["hub"])
        return spec

    def data_inputs(self, name: str) -> list[str]:
        """What prepare_data of a data set needs first: its hub mirror copy, if it has one."""
        data = self.datasets[name]
        if "hub" in data and "path" not in data and self.mirror is not None:
            return [self.prefetch_marker("datasets", data["hub"])]
        return []

    def model_spec(self, name: str) -> dict:
        build = self.models[name]["build"]
        spec: dict[str, Any] = {"name": name, "seed": self.config["seed"], "device": self.config.get("device", "cpu")}
        if "pretrain" in build:
            spec["size"] = self.config["model_sizes"][build["size"]]
            spec["stage"] = "pretrain"
            spec["settings"] = build["pretrain"]
            spec["data_dir"] = self.data_dir(build["pretrain"]["corpus"])
        else:
            spec["from"] = self.model_source(build["from"])
            spec["stage"] = "finetune"
            spec["settings"] = build["finetune"]
            spec["data_dir"] = self.data_dir(build["finetune"]["data"])
        return spec

    def model_stage(self, name: str) -> str | None:
        build = self.models[name].get("build")
        if not build:
            return None
        return "pretrain" if "pretrain" in build else "finetune"

    def model_build_inputs(self, name: str) -> list[str]:
        spec = self.model_spec(name)
        inputs = [spec["data_dir"]]
        if spec["stage"] == "finetune":
            inputs += self.model_inputs(self.models[name]["build"]["from"])
        return inputs

    def run_spec(self, name: str) -> dict:
        run = self.runs[name]
        spec: dict[str, Any] = {
            "run": run.name,
            "family": run.family,
            "method": run.method,
            "seed": run.seed,
            "device": self.config.get("device", "cpu"),
            "init": self.ref_source(run.init),
            "start_step": run.start_step,
            "teacher": self.model_source(run.teacher) if run.teacher else None,
            "data": {"name": run.data, "dir": self.data_dir(run.data), "kind": self.datasets[run.data]["kind"]},
            "steps": run.steps,
            "checkpoints": run.checkpoints,
            "state_dir": self.state_dir(name),
            **run.settings,
        }
        if run.projection:
            p = run.projection
            ref_run = self.runs[p["run"]]
            spec["projection"] = {
                "checkpoint": self.checkpoint(p["run"], p["step"]),
                "origin": self.ref_source(ref_run.init),
                "rank": p["rank"],
            }
        if run.extrapolation:
            spec["extrapolation"] = run.extrapolation
        spec.update(self.continuation_spec(name))
        return spec

    def train_inputs(self, name: str) -> dict[str, list[str]]:
        run = self.runs[name]
        inputs = {"init": self.ref_inputs(run.init), "data": [self.data_dir(run.data)]}
        if run.teacher:
            inputs["teacher"] = self.model_inputs(run.teacher)
        if run.projection:
            ref_run = self.runs[run.projection["run"]]
            inputs["projection"] = [self.checkpoints_dir(ref_run.name)] + self.ref_inputs(ref_run.init)
        return inputs

    # ---- the per-checkpoint work -------------------------------------------------------

    def diagnostics_targets(self) -> list[tuple[str, int, str]]:
        """(run, step, matrix set) for every checkpoint diagnosis of the grid."""
        diag = self.config["diagnostics"]
        out = []
        for run in self.runs.values():
            if run.diagnostics == "none":
                continue
            if run.diagnostics == "trajectory":
                out += [(run.name, s, diag.get("trajectory_matrices", "attention")) for s in run.checkpoints]
            endpoint = (run.name, run.final_step, diag.get("endpoint_matrices", "all"))
            if endpoint not in out:
                out.append(endpoint)
        return out

    def diagnose_runs(self) -> list[str]:
        """Runs with at least one diagnosis, in config order."""
        return list(dict.fromkeys(r for r, _, _ in self.diagnostics_targets()))

    def diagnostics_run_dir(self, run: str) -> str:
        return self.layout.diagnostics_run_dir(run)

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

    def diagnostics_file(self, run: str, step: int, matrices: str) -> str:
        return self.layout.diagnostics_file(run, step, matrices)

    def similarity_file(self, run: str) -> str:
        return self.layout.similarity_file(run)

    def similarity_runs(self) -> list[str]:
        return [r.name for r in self.runs.values() if r.diagnostics == "trajectory"]

    def reference_file(self, pair: str) -> str:
        return self.layout.reference_file(pair)

    def reference_pairs(self) -> dict[str, dict]:
        return {p["name"]: p for p in self.config.get("reference_pairs", [])}

    def eval_targets(self) -> list[tuple[str, str, str]]:
        """(subject, step-or-'model', benchmark): every checkpoint of every run, and teachers."""
        out = []
        for run in self.runs.values():
            for bench in run.eval:
                out += [(run.name, str(s), bench) for s in run.checkpoints]
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

    # ---- how per-checkpoint work is cut into jobs ----------------------------------------

    def grouping(self, work: str) -> str:
        """`job_grouping.<work>` ("evaluate" or "diagnose"): "checkpoint", one job per checkpoint
        (and benchmark, or matrix set), or "run", one job for all checkpoints of a run (one
        process start-up and import per run). The per-checkpoint files are the same either way."""
        return self.config.get("job_grouping", {}).get(work, "checkpoint")

    def eval_runs(self) -> list[str]:
        """Runs with at least one benchmark, in config order."""
        return [r.name for r in self.runs.values() if r.eval]

    def eval_run_dir(self, run: str) -> str:
        return self.layout.eval_run_dir(run)

    def eval_run_targets(self, run: str) -> list[tuple[int, str]]:
        """(step, benchmark) of every evaluation of one run, checkpoint by checkpoint."""
        r = self.runs[run]
        return [(s, b) for s in r.checkpoints for b in r.eval]

    def eval_inputs(self) -> list[str]:
        """What aggregate_eval waits for: every evaluation file, or with evaluations grouped by
        run, each run's evaluation folder (and the models' files, which stay one job each)."""
        if self.grouping("evaluate") == "checkpoint":
            return self.eval_files()
        return ([self.eval_run_dir(r) for r in self.eval_runs()]
                + [self.model_eval_file(m, b) for m, benches in self.teacher_benchmarks().items() for b in benches])

    def eval_file(self, run: str, step: int | str, bench: str) -> str:
        return self.layout.eval_file(run, step, bench)

    def model_eval_file(self, model: str, bench: str) -> str:
        return self.layout.model_eval_file(model, bench)

    def eval_files(self) -> list[str]:
        return [self.model_eval_file(s, b) if step == "model" else self.eval_file(s, step, b)
                for s, step, b in self.eval_targets()]

    def benchmark_spec(self, bench: str) -> dict:
        spec = dict(self.benchmarks[bench])
        spec["name"] = bench
        spec["data_dir"] = self.data_dir(spec["data"])
        return spec

    # ---- report outputs ----------------------------------------------------------------

    def report_spec(self) -> dict:
        """What the report needs to know about the grid (families, origins, steps, teachers)."""
        runs = {}
        for name, run in self.runs.items():
            runs[name] = {
                "family": run.family, "method": run.method, "teacher": run.teacher,
                "init": str(run.init), "w0": str(run.w0), "start_step": run.start_step,
                "checkpoints": run.checkpoints, "eval": run.eval, "diagnostics": run.diagnostics,
                "projection": run.projection, "extrapolation": run.extrapolation,
                "objective": run.settings.get("objective", {}),
                "rollout_source": run.settings.get("rollout", {}).get("source", "student"),
            }
        # Every per-checkpoint file the report reads, relative to results/, so a report built
        # from what exists can name what is missing (geopd.report.evidence).
        rel = self.layout.relative
        inputs = {
            "diagnostics": [[r, s, m, rel(self.diagnostics_file(r, s, m))] for r, s, m in self.diagnostics_targets()],
            "similarity": {r: rel(self.similarity_file(r)) for r in self.similarity_runs()},
            "reference": {p: rel(self.reference_file(p)) for p in self.reference_pairs()},
            "eval": [[s, st, b, rel(f)] for (s, st, b), f in zip(self.eval_targets(), self.eval_files())],
            "metrics": {r: rel(self.metrics_file(r)) for r in self.runs},
        }
        return {"name": self.config["name"], "runs": runs, "run_order": list(self.runs), "benchmarks": self.benchmarks,
                "teachers": self.teacher_benchmarks(), "reference_pairs": self.reference_pairs(),
                "diagnostics": self.config["diagnostics"], "inputs": inputs}

    TABLES = TABLES
    FIGURES = FIGURES

    def table_files(self) -> list[str]:
        return self.layout.table_files()

    def figure_files(self) -> list[str]:
        return self.layout.figure_files()

    def claims_files(self) -> list[str]:
        return self.layout.claims_files()

    def final_targets(self) -> list[str]:
        return self.table_files() + self.figure_files() + self.claims_files()

    # ---- resources -----------------------------------------------------------------------

    # Rules that share another rule's resource entry in the config.
    RESOURCE_CLASS = {"evaluate_model": "evaluate", "evaluate_run": "evaluate", "diagnose_reference": "diagnose",
                      "diagnose_run": "diagnose",
                      "aggregate_diagnostics": "report", "aggregate_eval": "report",
                      "tables": "report", "figures": "report", "claims": "report",
                      "grid_spec": "report"}

    def resources(self, rule: str, run: str | None = None) -> dict:
        """Resolved resources of one job: default < rule < run (train only)."""
        res = self.config["resources"]
        rule = self.RESOURCE_CLASS.get(rule, rule)
        out = deep_merge(res["default"], res.get(rule, {}))
        if run is not None and rule == "train":
            out = deep_merge(out, self.runs[run].resources)
            # One launcher task per node: torchrun spawns the per-GPU workers.
            out.setdefault("tasks", out.get("nodes", 1))
            out["tasks"] = max(out["tasks"], out.get("nodes", 1))
        return out

    def gpu_hours(self, rule: str, run: str | None = None) -> float:
        r = self.resources(rule, run)
        return r.get("gpus", 0) * r.get("nodes", 1) * r["runtime"] / 60.0

    def continuation_spec(self, name: str) -> dict:
        """Runs started from run@step continue that run (weights, Adam moments, data position,
        learning-rate schedule): the reference keeps its training state at those steps beside
        its checkpoints ("keep_state"), and the continuing run reads it ("continues")."""
        out: dict[str, Any] = {}
        keep = sorted({r.init.step for r in self.runs.values() if r.init.kind == "run" and r.init.name == name
                       and r.init.step is not None})
        if keep:
            out["keep_state"] = keep
        init = self.runs[name].init
        if init.kind == "run" and init.step is not None:
            out["continues"] = {"run": init.name, "step": init.step,
                                "state": self.layout.kept_state(init.name, init.step)}
        return out


def merged_config(paths: Iterable[str | Path]) -> dict:
    """Config files merged in order (mappings key by key, anything else replaced)."""
    config: dict = {}
    for path in paths:
        config = deep_merge(config, read_yaml(path))
    return config


def spec_json(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))

