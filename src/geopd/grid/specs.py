"""What each command of the grid gets: where a model is read from and what must exist first,
the JSON specs of `geopd prefetch`, `data`, `make-model`, `train` and `evaluate`, the report's
description of the grid, and each job's resources.

`Specs` is one part of geopd.grid.Grid (it reads the grid's runs, config and layout).
"""
from __future__ import annotations

from typing import Any

from geopd import mirror
from geopd.config import deep_merge
from geopd.data.lcb import RELEASE_FILES
from geopd.grid.runs import Ref, continuation
from geopd.spec import (Benchmark, RunSpec, Tracking, colocation_problems, engine_placement_problems,
                        engine_tensor_parallels)


class Specs:
    # Rules that share another rule's resource entry in the config.
    RESOURCE_CLASS = {"evaluate_model": "evaluate", "evaluate_run": "evaluate", "diagnose_reference": "diagnose",
                      "diagnose_run": "diagnose",
                      "aggregate_diagnostics": "report", "aggregate_eval": "report",
                      "tables": "report", "figures": "report", "claims": "report",
                      "grid_spec": "report", "run_curves": "report"}

    # ---- models and where they are read from ---------------------------------------------

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

    def root_model(self, ref: Ref) -> str:
        """The model a reference's weights descend from (a run's init, followed to a model)."""
        while ref.kind == "run":
            ref = self.runs[ref.name].init
        return ref.name

    def ref_source(self, ref: Ref) -> str:
        if ref.kind == "model":
            return self.model_source(ref.name)
        return self.checkpoint(ref.name, ref.step)

    def ref_inputs(self, ref: Ref) -> list[str]:
        if ref.kind == "model":
            return self.model_inputs(ref.name)
        return [self.checkpoints_dir(ref.name)]

    # ---- the hub mirror ------------------------------------------------------------------

    def mirror_dir(self, kind: str, repo: str) -> str:
        return str(mirror.repo_dir(self.mirror, kind, repo))

    def prefetch_marker(self, kind: str, repo: str) -> str:
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
                names = sorted({n for d in specs for n in RELEASE_FILES.get(d.get("release", "release_v5"), [])})
                spec["allow_patterns"] = ["README.md", *names]
        return spec

    # ---- data and model builds -------------------------------------------------------------

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
        spec: dict[str, Any] = {"name": name, "seed": self.config["seed"], "device": self.device}
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

    # ---- training -----------------------------------------------------------------------------

    def run_spec(self, name: str) -> RunSpec:
        """What `geopd train` gets for run `name`."""
        run = self.runs[name]
        spec: dict[str, Any] = {
            "run": run.name,
            "family": run.family,
            "method": run.method,
            "seed": run.seed,
            "device": self.device,
            "init": self.ref_source(run.init),
            "start_step": run.start_step,
            "teacher": self.model_source(run.teacher) if run.teacher else None,
            "data": {"name": run.data, "dir": self.data_dir(run.data), "kind": self.datasets[run.data]["kind"]},
            "steps": run.steps,
            "checkpoints": run.saved_steps,
            "state_dir": self.state_dir(name),
            **run.settings.to_dict(),
        }
        if run.projection:
            p = run.projection
            ref_run = self.runs[p.run]
            spec["projection"] = {
                "checkpoint": self.checkpoint(p.run, p.step),
                "origin": self.ref_source(ref_run.init),
                "rank": p.rank,
            }
        if run.extrapolation:
            spec["extrapolation"] = run.extrapolation.to_dict()
        spec.update(self.continuation_spec(name))
        return RunSpec.from_dict(spec, f"runs.{name}")

    def tracking_spec(self, name: str) -> Tracking:
        """What `geopd train --tracking` gets for run `name`: its folder (TensorBoard, progress
        file, W&B's files) and the config's `tracking` block, W&B grouped by the grid's name."""
        block = dict(self.config.get("tracking") or {})
        if "wandb" in block:
            block["wandb"] = {"group": self.config["name"], **block["wandb"]}
        return Tracking.from_dict({**block, "run_dir": self.layout.run_dir(name)}, "tracking")

    def continuation_spec(self, name: str) -> dict:
        """Runs started from run@step continue that run (weights, Adam moments, data position,
        learning-rate schedule): the reference keeps its training state at those steps beside
        its checkpoints ("keep_state"), and the continuing run reads it ("continues")."""
        out: dict[str, Any] = {}
        keep, init = continuation(self.runs, name)
        if keep:
            out["keep_state"] = keep
        if init is not None:
            out["continues"] = {"run": init.name, "step": init.step,
                                "state": self.layout.kept_state(init.name, init.step)}
        return out

    def train_inputs(self, name: str) -> dict[str, list[str]]:
        run = self.runs[name]
        inputs = {"init": self.ref_inputs(run.init), "data": [self.data_dir(run.data)]}
        if run.teacher:
            inputs["teacher"] = self.model_inputs(run.teacher)
        if run.projection:
            ref_run = self.runs[run.projection.run]
            inputs["projection"] = [self.checkpoints_dir(ref_run.name)] + self.ref_inputs(ref_run.init)
        return inputs

    # ---- evaluation -----------------------------------------------------------------------------

    def benchmark_spec(self, bench: str) -> Benchmark:
        """A benchmark with its name and data folder (geopd.plan.evaluation_spec adds the
        evaluation's parallelism)."""
        config = self.benchmarks[bench]
        return Benchmark.from_dict({**config, "name": bench, "data_dir": self.data_dir(config["data"])},
                                   f"benchmarks.{bench}")

    # ---- the report --------------------------------------------------------------------------

    def report_spec(self) -> dict:
        """What the report needs to know about the grid (families, origins, steps, teachers)."""
        runs = {}
        for name, run in self.runs.items():
            runs[name] = {
                "family": run.family, "method": run.method, "teacher": run.teacher,
                "init": str(run.init), "w0": str(run.w0), "start_step": run.start_step,
                "checkpoints": run.checkpoints, "eval": run.benchmarks,
                "eval_steps": {b: run.eval_steps(b) for b in run.benchmarks}, "diagnostics": run.diagnostics,
                "projection": None if run.projection is None else run.projection.to_dict(),
                "extrapolation": None if run.extrapolation is None else run.extrapolation.to_dict(),
                "objective": run.settings.objective.to_dict(),
                "rollout_source": run.settings.rollout_source,
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

    # ---- where the engines of each job can run ------------------------------------------------

    def placement_problems(self) -> list[str]:
        """Jobs that could not start on what they request, one line each naming the run or
        benchmark and its keys (geopd.spec: where vLLM engines can live): a GPU device without
        GPUs, engines whose tensor_parallel does not fit a node or divide the job's GPUs, two
        engines of a process with different tensor_parallel or both in sleep mode, an evaluation
        with more engines than GPUs. The grid refuses them (the Snakefile and `geopd plan`)."""
        out = []
        gpu = self.device != "cpu"
        for name, run in self.runs.items():
            res = self.resources("train", name)
            where = f"runs.{name}"
            gpus, world = res.get("gpus", 0), res.get("gpus", 0) * res.get("nodes", 1)
            out += [f"{where}: {p}" for p in colocation_problems(run.settings, teacher=run.teacher is not None,
                                                                 device=self.device)]
            if self.device == "cuda" and gpus < 1:
                out.append(f"{where}: device cuda, but resources train gpus is {gpus}: the job would have no GPU")
            elif gpu and gpus >= 1:
                for key, tp in engine_tensor_parallels(run.settings, teacher=run.teacher is not None).items():
                    out += [f"{where}.{p} (resources: {gpus} GPU(s) x {res.get('nodes', 1)} node(s))"
                            for p in engine_placement_problems(key, tp, gpus, world)]
        res = self.resources("evaluate")
        gpus, nodes = res.get("gpus", 0), res.get("nodes", 1)
        evaluated = sorted({b for run in self.runs.values() for b in run.eval})
        if self.device == "cuda" and gpus < 1 and evaluated:
            out.append(f"resources.evaluate: device cuda, but gpus is {gpus}: evaluations would have no GPU")
        elif gpu and gpus >= 1:
            for bench in evaluated:
                spec = self.benchmark_spec(bench)
                if spec.backend == "hf" or spec.tensor_parallel is None:
                    continue  # the planner picks tensor x data parallelism to fit (geopd.plan.evaluation_spec)
                tp, dp = spec.tensor_parallel, spec.data_parallel or max(1, gpus * nodes // spec.tensor_parallel)
                if tp > gpus:
                    out.append(f"benchmarks.{bench}.tensor_parallel {tp} spans more than the {gpus} GPU(s) of an "
                               "evaluate job's node")
                elif tp * dp > gpus * nodes:
                    out.append(f"benchmarks.{bench}: tensor_parallel {tp} x data_parallel {dp} engines need "
                               f"{tp * dp} GPUs, but an evaluate job has {gpus * nodes}")
        return out

    # ---- resources -----------------------------------------------------------------------

    def resources(self, rule: str, run: str | None = None) -> dict:
        """Resolved resources of one job: default < rule < (train only) the run's entry in
        train_resources (the sizing `geopd plan --suggest-resources` writes) < the run's own."""
        res = self.config["resources"]
        rule = self.RESOURCE_CLASS.get(rule, rule)
        out = deep_merge(res["default"], res.get(rule, {}))
        if run is not None and rule == "train":
            out = deep_merge(out, (self.config.get("train_resources") or {}).get(run, {}))
            out = deep_merge(out, self.runs[run].resources)
            # One launcher task per node: torchrun spawns the per-GPU workers.
            out.setdefault("tasks", out.get("nodes", 1))
            out["tasks"] = max(out["tasks"], out.get("nodes", 1))
        return out
