"""Glue between the grid and Snakemake: config resources -> Snakemake/Slurm resources.

Resource names are those of snakemake-executor-plugin-slurm (slurm_partition, slurm_account,
runtime in minutes, mem_mb, cpus_per_task, nodes, tasks, gres).

Retries (the profile's `retries`) come back with more time and, where the config says how much
a node has, more memory, so a job killed at its time limit or for memory can finish; training
also resumes from its last saved state, so a retry never starts over. A request Slurm would
reject is worse than no growth at all (the job then never starts), hence the caps:
- runtime x attempt, at most `max_runtime` (minutes; the partition's time limit), default
  DEFAULT_MAX_RUNTIME;
- mem_mb x attempt, at most `max_mem_mb` (what one node has for jobs); without `max_mem_mb`
  memory is not scaled, as nothing says how much a node has. A request at its cap (a whole
  node) stays as it is.

Training jobs also ask Slurm for an early signal (`slurm_extra`: --signal=USR1@lead, lead from
geopd.plan.signal_lead: the longest step plus a state save, with margin): the trainer saves its
state after the step it is in and exits 75, and the retry resumes from there (geopd.launch relays
the signal to every worker). "B:USR1" (to the batch shell alone) would kill the executor plugin's
`sh` batch script and the job with it; without "B:" Slurm signals every process of the job's
steps, where `geopd launch` always runs the training.

Jobs that request GPUs run the `geopd` of the GPU environment (config `environments.gpu`, default
DEFAULT_GPU_ENVIRONMENT, made by scripts/bootstrap-gpu.sh), every other job the `geopd` of the
environment Snakemake runs in: `geopd_commands`.
"""
from __future__ import annotations

import os
from pathlib import Path

from geopd.errors import UserError
from geopd.grid import Grid
from geopd.grid.checks import resource_problems
from geopd.plan import signal_lead
from geopd.spec import DEFAULT_MAX_RUNTIME, STATE_EVERY_MIN

DEFAULT_GPU_ENVIRONMENT = ".venv-gpu"
GPU_RULE_CLASSES = ("train", "evaluate")  # the resource classes whose jobs may request GPUs


class Unversioned:
    """A rule parameter that is not a setting of the job's outputs (e.g. where a run also logs):
    Snakemake records only parameters of plain types (str, numbers, containers) to decide
    whether a job must rerun, so changing this one reruns nothing. In a shell command it formats
    as its text (`{params.x:q}` quotes it)."""

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Unversioned({self.text!r})"


def retry_runtime(res: dict, attempt: int) -> int:
    """Minutes asked for on this attempt (1-based): runtime x attempt, capped at max_runtime."""
    return min(res["runtime"] * attempt, res.get("max_runtime", DEFAULT_MAX_RUNTIME))


def retry_mem_mb(res: dict, attempt: int) -> int:
    """Memory per node (MB) asked for on this attempt: mem_mb x attempt, capped at max_mem_mb;
    unscaled when max_mem_mb is not set."""
    cap = res.get("max_mem_mb")
    return res["mem_mb"] if cap is None else min(res["mem_mb"] * attempt, cap)


def check_resources(grid: Grid, rule: str) -> None:
    """Refuse a request above its own cap: Slurm would reject every attempt of the job (the
    check geopd.grid.checks makes for every rule when the workflow starts and when planning)."""
    found = resource_problems(grid, rule)
    if found:
        raise UserError(found[0])


def _resolved(grid: Grid, rule: str, wildcards) -> dict:
    run = getattr(wildcards, "run", None) if rule == "train" else None
    return grid.resources(rule, run)


def snakemake_resources(grid: Grid, rule: str) -> dict:
    check_resources(grid, rule)

    def pick(key):
        return lambda wildcards: _resolved(grid, rule, wildcards)[key]

    def gres(wildcards):
        gpus = _resolved(grid, rule, wildcards).get("gpus", 0)
        return f"gpu:{gpus}" if gpus else ""

    resources = {
        "slurm_partition": pick("partition"),
        "runtime": lambda wildcards, attempt=1: retry_runtime(_resolved(grid, rule, wildcards), attempt),
        "mem_mb": lambda wildcards, attempt=1: retry_mem_mb(_resolved(grid, rule, wildcards), attempt),
        "cpus_per_task": pick("cpus"),
        "nodes": pick("nodes"),
        "tasks": pick("tasks"),
        "gpus": pick("gpus"),
        "gres": gres,
        # Without it the plugin turns `tasks` of a GPU job into --ntasks-per-gpu.
        "tasks_per_gpu": 0,
    }
    if rule == "train":
        # The job-step plugin must run the rule's shell in the batch step (its "mpi" path), where
        # `geopd launch` starts its own srun step with all the tasks (and Slurm's early signal
        # reaches it). The key's presence picks that path; "srun" also makes sbatch ask for --ntasks.
        resources["mpi"] = lambda wildcards: "srun" if _resolved(grid, rule, wildcards)["tasks"] > 1 else ""
        leads: dict[str, int] = {}

        def early_signal(wildcards):
            if wildcards.run not in leads:
                leads[wildcards.run] = signal_lead(grid, wildcards.run)
            return f"--signal=USR1@{leads[wildcards.run]}"

        resources["slurm_extra"] = early_signal
        resources["state_every_min"] = lambda wildcards: str(
            _resolved(grid, rule, wildcards).get("state_every_min", STATE_EVERY_MIN))
    cls = grid.RESOURCE_CLASS.get(rule, rule)
    if grid.config["resources"]["default"].get("account") or grid.config["resources"].get(cls, {}).get("account"):
        resources["slurm_account"] = pick("account")
    return resources


def threads_of(grid: Grid, rule: str):
    return lambda wildcards: _resolved(grid, rule, wildcards).get("cpus", 1)


# ---- the environment each job runs in ------------------------------------------------------------

def gpu_environment(grid: Grid, workdir: str | os.PathLike) -> Path:
    """The GPU environment's folder (environments.gpu, relative to the workflow's folder `workdir`)."""
    path = Path((grid.config.get("environments") or {}).get("gpu", DEFAULT_GPU_ENVIRONMENT))
    return path if path.is_absolute() else Path(workdir) / path


def gpu_classes(grid: Grid) -> set[str]:
    """The resource classes with jobs that request GPUs (a run's own resources count)."""
    out = set()
    for cls in GPU_RULE_CLASSES:
        requests = [grid.resources(cls, run) for run in grid.runs] if cls == "train" else [grid.resources(cls)]
        if any(r.get("gpus", 0) >= 1 for r in requests):
            out.add(cls)
    return out


def geopd_commands(grid: Grid, workdir: str | os.PathLike) -> dict[str, str]:
    """The `geopd` each resource class's jobs run: the GPU environment's where they request GPUs."""
    gpu = gpu_classes(grid)
    return {cls: str(gpu_environment(grid, workdir) / "bin" / "geopd") if cls in gpu else "geopd"
            for cls in GPU_RULE_CLASSES}


def check_environments(grid: Grid, workdir: str | os.PathLike, rules: set[str]) -> None:
    """Before anything is submitted: the GPU environment exists if a job of `rules` needs it."""
    gpu = gpu_classes(grid)
    needed = sorted(r for r in rules if grid.RESOURCE_CLASS.get(r, r) in gpu)
    if not needed:
        return
    geopd = gpu_environment(grid, workdir) / "bin" / "geopd"
    if not os.access(geopd, os.X_OK):
        raise UserError(
            f"{', '.join(grid.sources)}: environments.gpu: {geopd} does not exist, and the jobs of "
            f"{', '.join(needed)} request GPUs and run it. Make it on a GPU node of the cluster: "
            "`srun -p <gpu partition> --gres=gpu:1 bash scripts/bootstrap-gpu.sh` (envs/gpu.txt; "
            "README, 'Cluster set-up'), or set environments.gpu to an environment with geopd installed")
