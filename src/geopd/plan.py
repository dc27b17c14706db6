"""`geopd plan`: the jobs a config would run and what they cost, before anything is spent.

Built from the same `Grid` the Snakefile uses, so the job list matches `snakemake -n`
(a test checks the per-rule counts). No Snakemake, torch, GPU, Slurm or network needed.
GPU-hours of a job = GPUs per node x nodes x runtime (the config's Slurm request, i.e. the
budget reserved, not a measured time).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from geopd.errors import UserError
from geopd.grid import Grid, Ref


@dataclass
class Job:
    id: str
    rule: str
    family: str
    resources: dict
    deps: set[str] = field(default_factory=set)

    @property
    def hours(self) -> float:
        return self.resources["runtime"] / 60.0

    @property
    def gpu_hours(self) -> float:
        r = self.resources
        return r.get("gpus", 0) * r.get("nodes", 1) * self.hours


def build_jobs(grid: Grid) -> dict[str, Job]:
    """Every job of the default target (`rule all`), with its dependencies."""
    jobs: dict[str, Job] = {}

    def add(job_id: str, rule: str, family: str, deps: set[str], run: str | None = None) -> str:
        if job_id not in jobs:
            jobs[job_id] = Job(job_id, rule, family, grid.resources(rule, run), set(deps))
        return job_id

    def prefetched(markers: list[str]) -> set[str]:  # hub mirror copies (the prefetch rule)
        return {add(f"prefetch:{Path(m).parent.relative_to(grid.mirror)}", "prefetch", "data", set()) for m in markers}

    def data(name: str) -> str:
        return add(f"prepare_data:{name}", "prepare_data", "data", prefetched(grid.data_inputs(name)))

    def model(name: str) -> set[str]:
        stage = grid.model_stage(name)
        if stage is None:
            return prefetched(grid.model_inputs(name))  # hub: its mirror copy; local path: nothing
        build = grid.models[name]["build"]
        settings = build.get("pretrain") or build.get("finetune")
        deps = {data(settings.get("corpus") or settings.get("data"))}
        if stage == "finetune":
            deps |= model(build["from"])
        return {add(f"{stage}_model:{name}", f"{stage}_model", "models", deps)}

    def ref(r: Ref) -> set[str]:
        return model(r.name) if r.kind == "model" else {train(r.name)}

    def train(name: str) -> str:
        job_id = f"train:{name}"
        if job_id in jobs:
            return job_id
        run = grid.runs[name]
        deps = ref(run.init) | ref(run.w0) | {data(run.data)}
        if run.teacher:
            deps |= model(run.teacher)
        if run.projection:
            deps.add(train(run.projection["run"]))
            deps |= ref(grid.runs[run.projection["run"]].init)
        return add(job_id, "train", run.family, deps, run=name)

    diagnoses = set()
    for name, step, matrices in grid.diagnostics_targets():
        run = grid.runs[name]
        deps = {train(name)} | ref(run.w0)
        diagnoses.add(add(f"diagnose:{name}:{step}:{matrices}", "diagnose", run.family, deps))
    for pair, spec in grid.reference_pairs().items():
        deps = model(spec["base"]) | model(spec["tuned"])
        diagnoses.add(add(f"diagnose_reference:{pair}", "diagnose_reference", "reference", deps))
    for name in grid.similarity_runs():
        run = grid.runs[name]
        diagnoses.add(add(f"similarity:{name}", "similarity", run.family, {train(name)} | ref(run.w0)))
    evals = set()
    for subject, step, bench in grid.eval_targets():
        bench_data = data(grid.benchmarks[bench]["data"])
        if step == "model":
            evals.add(add(f"evaluate_model:{subject}:{bench}", "evaluate_model", "teachers",
                          model(subject) | {bench_data}))
        else:
            family = grid.runs[subject].family
            evals.add(add(f"evaluate:{subject}:{step}:{bench}", "evaluate", family,
                          {train(subject), bench_data}))
    for name in grid.runs:  # runs nobody diagnoses or evaluates still train (their logs are plotted)
        train(name)
    agg_d = add("aggregate_diagnostics", "aggregate_diagnostics", "report", diagnoses)
    agg_e = add("aggregate_eval", "aggregate_eval", "report", evals)
    metrics = {f"train:{n}" for n in grid.runs}
    spec = add("grid_spec", "grid_spec", "report", set())
    add("tables", "tables", "report", {agg_d, agg_e, spec})
    add("figures", "figures", "report", {agg_d, agg_e, spec} | metrics)
    add("claims", "claims", "report", {agg_d, agg_e, spec})
    return jobs


def select(jobs: dict[str, Job], grid: Grid, targets: list[str]) -> dict[str, Job]:
    """Jobs needed for the targets: rule names, run names or job ids, and what they need."""
    if not targets:
        return jobs
    roots = set()
    for target in targets:
        hits = {j for j, job in jobs.items() if job.rule == target or j == target}
        if target in grid.runs:
            hits.add(f"train:{target}")
        if not hits:
            raise UserError(f"unknown target '{target}': give a rule name "
                            f"({', '.join(sorted({j.rule for j in jobs.values()}))}), a run name, or a job id")
        roots |= hits
    needed, stack = set(), list(roots)
    while stack:
        j = stack.pop()
        if j not in needed:
            needed.add(j)
            stack.extend(jobs[j].deps)
    return {j: jobs[j] for j in jobs if j in needed}


def critical_path(jobs: dict[str, Job]) -> tuple[float, list[str]]:
    """Longest chain of dependent jobs by requested runtime (wall hours)."""
    best: dict[str, tuple[float, list[str]]] = {}

    def visit(j: str) -> tuple[float, list[str]]:
        if j not in best:
            tails = [visit(d) for d in jobs[j].deps if d in jobs]
            hours, chain = max(tails, default=(0.0, []))
            best[j] = (hours + jobs[j].hours, chain + [j])
        return best[j]

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    return max((visit(j) for j in jobs), default=(0.0, []))


def summarize(jobs: dict[str, Job]) -> dict:
    per_rule: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "gpu_hours": 0.0})
    per_family: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "gpu_hours": 0.0})
    for job in jobs.values():
        for table, key in ((per_rule, job.rule), (per_family, job.family)):
            table[key]["jobs"] += 1
            table[key]["gpu_hours"] += job.gpu_hours
    hours, chain = critical_path(jobs)
    return {
        "jobs": len(jobs),
        "gpu_hours": sum(j.gpu_hours for j in jobs.values()),
        "per_rule": dict(per_rule),
        "per_family": dict(per_family),
        "critical_path_hours": hours,
        "critical_path": chain,
    }


def render(summary: dict, config_name: str) -> str:
    lines = [f"Plan for {config_name}: {summary['jobs']} jobs, "
             f"{summary['gpu_hours']:,.1f} GPU-hours requested (GPUs x nodes x runtime)", ""]
    for title, table in (("rule", summary["per_rule"]), ("run family", summary["per_family"])):
        lines.append(f"{'per ' + title:<24}{'jobs':>6}{'GPU-hours':>14}")
        for key, row in sorted(table.items(), key=lambda kv: (-kv[1]["gpu_hours"], kv[0])):
            lines.append(f"  {key:<22}{row['jobs']:>6}{row['gpu_hours']:>14,.1f}")
        lines.append("")
    lines.append(f"longest chain of dependent jobs: {summary['critical_path_hours']:,.1f} h wall "
                 f"({len(summary['critical_path'])} jobs)")
    lines += [f"  {j}" for j in summary["critical_path"]]
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help="rule names, run names or job ids (default: everything)")
    parser.add_argument("--configfile", default="config/config.yaml")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def main(args: argparse.Namespace) -> int:
    grid = Grid.from_file(args.configfile)
    jobs = select(build_jobs(grid), grid, args.targets)
    summary = summarize(jobs)
    print(json.dumps(summary, indent=2) if args.json else render(summary, args.configfile))
    return 0
