"""Glue between the grid and Snakemake: config resources -> Snakemake/Slurm resources.

Resource names are those of snakemake-executor-plugin-slurm (slurm_partition, slurm_account,
runtime in minutes, mem_mb, cpus_per_task, nodes, tasks, gres). Memory and runtime grow with
each retry (`attempt`), so a job killed for memory or time comes back with more.
"""
from __future__ import annotations

from geopd.grid import Grid


def _resolved(grid: Grid, rule: str, wildcards) -> dict:
    run = getattr(wildcards, "run", None) if rule == "train" else None
    return grid.resources(rule, run)


def snakemake_resources(grid: Grid, rule: str) -> dict:
    def pick(key, scale=False):
        def value(wildcards, attempt=1):
            v = _resolved(grid, rule, wildcards)[key]
            return v * attempt if scale else v
        return value

    def gres(wildcards):
        gpus = _resolved(grid, rule, wildcards).get("gpus", 0)
        return f"gpu:{gpus}" if gpus else ""

    resources = {
        "slurm_partition": pick("partition"),
        "runtime": pick("runtime", scale=True),
        "mem_mb": pick("mem_mb", scale=True),
        "cpus_per_task": pick("cpus"),
        "nodes": pick("nodes"),
        "tasks": pick("tasks"),
        "gpus": pick("gpus"),
        "gres": gres,
        # Without it the plugin turns `tasks` of a GPU job into --ntasks-per-gpu.
        "tasks_per_gpu": 0,
    }
    if rule == "train":
        # Several torchrun agents: the job-step plugin must run the rule's shell in the batch
        # step (its "mpi" path), where `geopd launch` starts its own srun with all the tasks.
        # The key's presence picks that path; the value "srun" also makes sbatch ask for --ntasks.
        resources["mpi"] = lambda wildcards: "srun" if _resolved(grid, rule, wildcards)["tasks"] > 1 else ""
    if grid.config["resources"]["default"].get("account") or grid.config["resources"].get(rule, {}).get("account"):
        resources["slurm_account"] = pick("account")
    return resources


def threads_of(grid: Grid, rule: str):
    return lambda wildcards: _resolved(grid, rule, wildcards).get("cpus", 1)
