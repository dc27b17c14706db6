"""`geopd plan`: the jobs a config would run and what they cost, before anything is spent.

Built from the same `Grid` the Snakefile uses, so the job list matches `snakemake -n`
(a test checks the per-rule counts). No Snakemake, torch, GPU, Slurm or network needed.
Requested GPU-hours of a job = GPUs per node x nodes x runtime (the config's Slurm request).
Beside it, geopd.costmodel estimates each job's peak memory (per GPU, or per node for the CPU
diagnostics) and its time from token counts; planning fails, naming the rule and run, when a
job does not fit the memory it asks for or asks for far less time than it needs.
"""
from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from geopd import costmodel as cm
from geopd.errors import UserError
from geopd.io.table import Column, fixed
from geopd.grid import Grid, checks
from geopd.grid.runs import Ref
from geopd.spec import DEFAULT_MAX_RUNTIME, Benchmark
from geopd.world.tokenizer import vocabulary


@dataclass
class Job:
    id: str
    rule: str
    family: str
    resources: dict
    deps: set[str] = field(default_factory=set)
    meta: dict = field(default_factory=dict)  # what the cost model needs: run, model, benchmark, ...

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

    def add(job_id: str, rule: str, family: str, deps: set[str], run: str | None = None, **meta) -> str:
        if job_id not in jobs:
            jobs[job_id] = Job(job_id, rule, family, grid.resources(rule, run), set(deps), meta)
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
            deps.add(train(run.projection.run))
            deps |= ref(grid.runs[run.projection.run].init)
        return add(job_id, "train", run.family, deps, run=name, subject=name)

    diagnoses = set()
    if grid.grouping("diagnose") == "run":  # every diagnosis of a run and its similarity: one job
        for name in grid.diagnose_runs():
            run = grid.runs[name]
            diagnoses.add(add(f"diagnose_run:{name}", "diagnose_run", run.family, {train(name)} | ref(run.w0),
                              subject=name))
    else:
        for name, step, matrices in grid.diagnostics_targets():
            run = grid.runs[name]
            deps = {train(name)} | ref(run.w0)
            diagnoses.add(add(f"diagnose:{name}:{step}:{matrices}", "diagnose", run.family, deps,
                              subject=name, matrices=matrices))
        for name in grid.similarity_runs():
            run = grid.runs[name]
            diagnoses.add(add(f"similarity:{name}", "similarity", run.family, {train(name)} | ref(run.w0),
                              subject=name))
    for pair, spec in grid.reference_pairs().items():
        deps = model(spec["base"]) | model(spec["tuned"])
        diagnoses.add(add(f"diagnose_reference:{pair}", "diagnose_reference", "reference", deps,
                          model=spec["base"], matrices="all"))
    evals = set()
    by_run = grid.grouping("evaluate") == "run"
    for subject, step, bench in grid.eval_targets():
        bench_data = data(grid.benchmarks[bench]["data"])
        if step == "model":
            evals.add(add(f"evaluate_model:{subject}:{bench}", "evaluate_model", "teachers",
                          model(subject) | {bench_data}, model=subject, bench=bench))
        elif by_run:  # every checkpoint of the run on every benchmark of it: one job
            job = add(f"evaluate_run:{subject}", "evaluate_run", grid.runs[subject].family, {train(subject)},
                      subject=subject)
            jobs[job].deps.add(bench_data)
            evals.add(job)
        else:
            family = grid.runs[subject].family
            evals.add(add(f"evaluate:{subject}:{step}:{bench}", "evaluate", family,
                          {train(subject), bench_data}, subject=subject, bench=bench))
    for name in grid.runs:  # runs nobody diagnoses or evaluates still train (their logs are plotted)
        train(name)
    agg_d = add("aggregate_diagnostics", "aggregate_diagnostics", "report", diagnoses)
    agg_e = add("aggregate_eval", "aggregate_eval", "report", evals)
    metrics = {f"train:{n}" for n in grid.runs}
    spec = add("grid_spec", "grid_spec", "report", set())
    add("tables", "tables", "report", {agg_d, agg_e, spec})
    add("figures", "figures", "report", {agg_d, agg_e, spec} | metrics)
    add("claims", "claims", "report", {agg_d, agg_e, spec})
    for name in grid.runs:
        add(f"run_curves:{name}", "run_curves", "report", {f"train:{name}"}, subject=name)
    return jobs


# What the cost model says when it lacks an input rather than finds a job that cannot run: a
# hub model's architecture before it is prefetched (`shape: null`), a benchmark's size before its
# data is prepared, a GPU's memory the config does not state. `geopd plan` reports them; the
# workflow, which may be about to prefetch what is missing, does not stop on them.
UNPLANNED = ("no architecture to plan with", "cannot be checked", "number of problems unknown")


def refusals(grid: Grid, *, unplanned: bool = False) -> list[str]:
    """Everything the workflow (workflow/rules/common.smk) refuses, as `geopd plan` does, one line
    each: the config's own checks (geopd.grid.checks), then, once those pass, every job's memory
    and time against what it requests (the cost model); `unplanned`: also what the cost model
    could not check for want of an input (UNPLANNED)."""
    found = checks.problems(grid)
    if found:
        return found
    jobs = build_jobs(grid)
    found = problems(jobs, estimate_jobs(grid, jobs))
    return found if unplanned else [p for p in found if not any(u in p for u in UNPLANNED)]


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


# ---- model shapes ----------------------------------------------------------------------------

class Shapes:
    """Architecture of every model and run: a hub model's config.json in the hub mirror, else
    its `shape:` in the config (both present: they must agree); a built (miniature) model's
    size; a run's, that of the model it starts from."""

    def __init__(self, grid: Grid):
        self.grid = grid
        self._cache: dict[str, cm.Shape | str] = {}

    def mirror_config(self, name: str) -> Path | None:
        mirror, hub = self.grid.config.get("hub_mirror"), self.grid.models[name].get("hub")
        if not mirror or not hub:
            return None
        path = Path(mirror) / "models" / hub / "config.json"
        return path if path.is_file() else None

    def _resolve(self, name: str) -> cm.Shape:
        model = self.grid.models[name]
        if "build" in model:
            build = model["build"]
            if "from" in build:
                return self.model(build["from"])
            return cm.Shape.from_entry({**self.grid.config["model_sizes"][build["size"]], "vocab": self._vocab()})
        # `shape: null` (an overlay unsetting the config's shape) plans with the mirror's config.json alone.
        declared = cm.Shape.from_entry(model["shape"]) if model.get("shape") is not None else None
        path = self.mirror_config(name)
        if path is not None:
            try:
                found = cm.Shape.from_hf_config(json.loads(path.read_text()))
            except (ValueError, KeyError) as exc:
                raise UserError(f"{path}: cannot read the model's architecture ({exc})") from None
            if declared is not None and found != declared:
                raise UserError(f"models.{name}.shape disagrees with {path}: " + "; ".join(declared.differences(found)))
            return found
        if declared is None:
            raise UserError(f"models.{name}: no architecture to plan with: add `shape:` to the model entry "
                            f"or prefetch it into hub_mirror ({self.grid.config.get('hub_mirror', 'not set')})")
        if "params_b" in model and abs(declared.params() / 1e9 - model["params_b"]) > 0.05 * model["params_b"]:
            raise UserError(f"models.{name}: shape gives {declared.params() / 1e9:.2f}B parameters, "
                            f"params_b says {model['params_b']}")
        return declared

    def _vocab(self) -> int:
        return len(vocabulary())  # the miniature tokenizer's (no torch, no hub)

    def model(self, name: str) -> cm.Shape:
        if name not in self._cache:
            try:
                self._cache[name] = self._resolve(name)
            except UserError as exc:
                self._cache[name] = str(exc)
        value = self._cache[name]
        if isinstance(value, str):
            raise UserError(value)
        return value

    def root_model(self, ref: Ref) -> str:
        return self.grid.root_model(ref)

    def run(self, name: str) -> cm.Shape:
        return self.model(self.root_model(Ref("run", name)))


# ---- estimates -------------------------------------------------------------------------------

def benchmark_problems(grid: Grid, bench: str) -> int | None:
    """Problems of a benchmark: its prepared test file when there, else its published size."""
    spec = grid.benchmark_spec(bench)
    path = Path(spec.data_dir) / f"{spec.split}.jsonl"
    if path.is_file():
        with open(path) as fh:
            n = sum(1 for line in fh if line.strip())
    else:
        n = cm.BENCHMARK_PROBLEMS.get(grid.datasets[spec.data].get("hub"))
    if n is None or spec.limit is None:
        return n
    return min(n, spec.limit)


def evaluation_spec(grid: Grid, bench: str, *, run: str | None = None, model: str | None = None) -> Benchmark:
    """The benchmark spec one evaluation job runs with: tensor_parallel x data_parallel filled in
    from the cost model (the smallest tensor-parallel group that holds the evaluated model, then
    every GPU the job requests), unless the benchmark fixes them. The evaluate rules and the
    planner use this one choice, so what `geopd plan` checked is what runs."""
    spec = grid.benchmark_spec(bench)
    res = grid.resources("evaluate")
    # "auto" runs vLLM on a GPU node (evaluate.run.resolve_backend), and the cost model plans it so.
    if spec.backend == "hf" or res.get("gpus", 0) == 0 or grid.device == "cpu":
        return spec
    shapes = Shapes(grid)
    name = model if model is not None else shapes.root_model(Ref("run", run))
    gpu_bytes = cm.gpu_memory_bytes(res) or float("inf")
    tp, dp = cm.eval_parallelism(shapes.model(name), spec, res["gpus"], res.get("nodes", 1), gpu_bytes,
                                 spec.model_len(cm.ASSUMPTIONS.max_prompt_tokens))
    return spec.updated(tensor_parallel=tp, data_parallel=dp)


def train_estimate(grid: Grid, run: str, shapes: Shapes | None = None) -> cm.Estimate:
    """The cost model's estimate of run `run`'s training job."""
    shapes = shapes or Shapes(grid)
    r = grid.runs[run]
    return cm.estimate_train(r, shapes.run(run), shapes.model(r.teacher) if r.teacher else None,
                             grid.resources("train", run), device=grid.device)


def signal_lead(grid: Grid, run: str) -> int:
    """Seconds before its time limit that run `run`'s training job asks Slurm for USR1 (sbatch
    --signal=USR1@lead; geopd.costmodel.signal_lead_s): the estimate's, the resources' own, or the
    default for a job whose models the plan cannot read."""
    try:
        return train_estimate(grid, run).info["signal_lead_s"]
    except UserError:
        return cm.job_signal_lead(cm.Estimate("train", run, 0, 1, 0), grid.resources("train", run))


def estimate_jobs(grid: Grid, jobs: dict[str, Job]) -> dict[str, cm.Estimate]:
    """An estimate for every job the cost model covers (training, evaluation, diagnostics);
    jobs with the same inputs share one."""
    shapes, device = Shapes(grid), grid.device
    cache: dict[tuple, cm.Estimate] = {}
    out = {}
    for job_id, job in jobs.items():
        meta, res = job.meta, job.resources
        try:
            if job.rule == "train":
                run = grid.runs[meta["subject"]]
                key = ("train", run.name)
                make = lambda: train_estimate(grid, run.name, shapes)
            elif job.rule in ("evaluate", "evaluate_model"):
                # one estimate per (model, benchmark): every checkpoint of a run has its init's shape
                model = meta.get("model") or shapes.root_model(Ref("run", meta["subject"]))
                key = (job.rule, model, meta["bench"], json.dumps(res, sort_keys=True))
                make = lambda: cm.estimate_eval(job.rule, model, shapes.model(model), grid.benchmark_spec(meta["bench"]),
                                                benchmark_problems(grid, meta["bench"]), res, device=device)
            elif job.rule in ("diagnose", "diagnose_reference", "similarity"):
                model = meta.get("model") or shapes.root_model(Ref("run", meta["subject"]))
                checkpoints = len(grid.runs[meta["subject"]].checkpoints) if job.rule == "similarity" else 1
                matrices = meta.get("matrices") or grid.trajectory_matrices
                label = f"{model} {matrices}" + (f", {checkpoints} checkpoints" if job.rule == "similarity" else "")
                key = (job.rule, model, matrices, checkpoints, json.dumps(res, sort_keys=True))
                make = lambda: cm.estimate_svd_job(job.rule, label, shapes.model(model), matrices, res,
                                                   checkpoints=checkpoints)
            else:
                continue
            if key not in cache:
                cache[key] = make()
        except UserError as exc:
            key = ("error", job_id)
            cache[key] = cm.Estimate(job.rule, meta.get("subject") or meta.get("model") or job_id,
                                     res.get("gpus", 0), res.get("nodes", 1), res["runtime"] / 60,
                                     problems=[str(exc)])
        out[job_id] = cache[key]
    return out


def problems(jobs: dict[str, Job], estimates: dict[str, cm.Estimate]) -> list[str]:
    """One line per rule and problem, naming the runs (or models) and benchmarks it concerns."""
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for job_id, est in estimates.items():
        job = jobs[job_id]
        who = job.meta.get("subject") or job.meta.get("model") or job_id
        if "bench" in job.meta:
            who = f"{who} on {job.meta['bench']}"
        for problem in est.problems:
            if who not in found[(job.rule, problem)]:
                found[(job.rule, problem)].append(who)
    return [f"rule {rule}, {', '.join(who)}: {problem}" for (rule, problem), who in found.items()]


# ---- right-sizing the training jobs ----------------------------------------------------------

@dataclass(frozen=True)
class Sizing:
    """How `geopd plan --suggest-resources` sizes jobs from their estimates, so that requested
    GPU-hours follow the estimates. A training run gets the fewest of `node_counts` nodes with
    which it fits in GPU and host memory (and its engines' tensor-parallel groups fit) and its
    estimate x `margin` stays within `max_hours`; where no node count gets there (a run bound
    by decoding its longest responses one token at a time, which more GPUs do not speed up), the
    fewest nodes whose estimate is within `tail_tolerance` of the shortest any count gives. Its
    runtime is its estimate there x `margin`, rounded up to the hour. The evaluate rule gets
    the longest evaluation's estimate x `margin`, rounded up. The margin covers the estimate's
    error (the model is checked against the trainer's memory, its throughputs only against
    their sources); a job that still runs out of time is retried with runtime x attempt (up to
    max_runtime) and resumes from its last training state."""
    margin: float = 1.25
    max_hours: float = 72.0
    tail_tolerance: float = 0.25
    node_counts: tuple[int, ...] = (1, 2, 4, 8, 16)

    def runtime(self, hours: float) -> int:
        """Minutes to request for an estimate of `hours`: x margin, up to whole hours."""
        return 60 * max(1, math.ceil(round(hours * self.margin, 6)))


@dataclass
class Suggestion:
    run: str
    nodes: int
    runtime: int              # minutes
    est_hours: float
    note: str = ""


def suggest_train(grid: Grid, sizing: Sizing = Sizing()) -> list[Suggestion]:
    """Nodes and runtime of every training run (see Sizing); a UserError names a run that fits
    at no node count."""
    shapes, out = Shapes(grid), []
    for name, run in grid.runs.items():
        base = grid.resources("train", name)
        if not base.get("gpus") or grid.device == "cpu":
            continue  # not modelled (CPU training)
        fits: list[tuple[int, cm.Estimate]] = []
        for nodes in sizing.node_counts:
            # no time limit in the trial: only what does not fit (memory, engines) is a problem
            res = {**base, "nodes": nodes, "tasks": nodes, "runtime": 10 ** 9}
            est = cm.estimate_train(run, shapes.run(name), shapes.model(run.teacher) if run.teacher else None,
                                    res, device=grid.device)
            if not est.problems and est.hours is not None:
                fits.append((nodes, est))
        if not fits:
            raise UserError(f"run {name}: fits in memory on none of {list(sizing.node_counts)} nodes of "
                            f"{base['gpus']} GPUs (geopd plan {name} --detail)")
        within = [(n, e) for n, e in fits if e.hours * sizing.margin <= sizing.max_hours]
        note = ""
        if not within:
            shortest = min(e.hours for _, e in fits)
            within = [(n, e) for n, e in fits if e.hours <= (1 + sizing.tail_tolerance) * shortest]
            note = (f"over {sizing.max_hours:g} h on every node count (shortest {shortest:.1f} h): the fewest "
                    f"nodes within {sizing.tail_tolerance:.0%} of it")
        nodes, est = within[0]
        runtime, cap = sizing.runtime(est.hours), base.get("max_runtime", DEFAULT_MAX_RUNTIME)
        if runtime > cap:  # Slurm refuses more than the partition's limit: the run resumes over several jobs
            note += f"{'; ' if note else ''}capped at max_runtime: ~{math.ceil(runtime / cap)} jobs, each resuming the last"
            runtime = cap
        out.append(Suggestion(name, nodes, runtime, est.hours, note))
    return out


def suggest_evaluate(grid: Grid, jobs: dict[str, Job], estimates: dict[str, cm.Estimate],
                     sizing: Sizing = Sizing()) -> tuple[int, float] | None:
    """(runtime in minutes, the longest estimate in hours) of the evaluate rule's jobs."""
    hours = [e.hours for j, e in estimates.items()
             if jobs[j].rule in ("evaluate", "evaluate_model") and e.hours is not None]
    return None if not hours else (sizing.runtime(max(hours)), max(hours))


def render_suggestion(grid: Grid, config_name: str, sizing: Sizing = Sizing()) -> str:
    """The train_resources block (and the evaluate runtime) to paste into the config."""
    jobs = build_jobs(grid)
    train = suggest_train(grid, sizing)
    evaluate = suggest_evaluate(grid, jobs, estimate_jobs(grid, jobs), sizing)
    counts = ", ".join(str(n) for n in sizing.node_counts)
    lines = [f"# Written by `geopd plan --configfile {config_name} --suggest-resources` (geopd.plan.Sizing):",
             f"# nodes = the fewest of {counts} with which the run fits in memory and its estimate x "
             f"{sizing.margin:g} stays within {sizing.max_hours:g} h",
             f"# (none does: the fewest within {sizing.tail_tolerance:.0%} of the shortest estimate); "
             f"runtime (minutes) = the estimate there x {sizing.margin:g}, rounded up to the hour.",
             "train_resources:"]
    width = max((len(s.run) for s in train), default=0) + 2
    for s in train:
        lines.append(f"  {s.run + ':':<{width}}{{nodes: {s.nodes}, runtime: {s.runtime}}}"
                     f"   # est {s.est_hours:.1f} h{'; ' + s.note if s.note else ''}")
    if evaluate is not None:
        lines += [f"# resources.evaluate.runtime: {evaluate[0]}   (the longest evaluation, est {evaluate[1]:.1f} h, "
                  f"x {sizing.margin:g}, rounded up to the hour)"]
    return "\n".join(lines)


# ---- summary ---------------------------------------------------------------------------------

def summarize(jobs: dict[str, Job], estimates: dict[str, cm.Estimate] | None = None) -> dict:
    estimates = estimates or {}
    per_rule: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "gpu_hours": 0.0, "est_gpu_hours": 0.0,
                                                     "estimated": 0, "peak_gib": None})
    per_family: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "gpu_hours": 0.0})
    for job_id, job in jobs.items():
        for table, key in ((per_rule, job.rule), (per_family, job.family)):
            table[key]["jobs"] += 1
            table[key]["gpu_hours"] += job.gpu_hours
        est = estimates.get(job_id)
        row = per_rule[job.rule]
        if est is not None and est.hours is not None:
            row["estimated"] += 1
            row["est_gpu_hours"] += est.gpu_hours
        if est is not None and est.peak is not None:
            row["peak_gib"] = max(row["peak_gib"] or 0.0, est.peak / cm.GiB)
            row["limit_gib"] = None if est.memory_limit is None else est.memory_limit / cm.GiB
            row["memory_kind"] = est.memory_kind
    hours, chain = critical_path(jobs)
    return {
        "jobs": len(jobs),
        "gpu_hours": sum(j.gpu_hours for j in jobs.values()),
        "est_gpu_hours": sum(r["est_gpu_hours"] for r in per_rule.values()),
        "per_rule": dict(per_rule),
        "per_family": dict(per_family),
        "critical_path_hours": hours,
        "critical_path": chain,
    }


def _gib(value: float | None, limit: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value / cm.GiB:.1f}" + (f"/{limit / cm.GiB:.0f}" if limit not in (None, float("inf")) else "")


def _hours(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def estimate_tables(jobs: dict[str, Job], estimates: dict[str, cm.Estimate]) -> list[str]:
    lines = []
    train = [(jobs[j], e) for j, e in estimates.items() if jobs[j].rule == "train"]
    if train:
        cols = [Column("training runs", 24, "<"), Column("GPUs", 6), Column("micro", 7), Column("peak GiB/GPU", 15),
                Column(" (phase)", 18, "<"), Column("est h", 8), Column("req h", 8), Column("upd/step", 9),
                Column("updates", 8)]
        rows = []
        for job, e in train:
            upd = e.info.get("updates_per_step", "-")
            if e.info.get("leftover_samples"):
                upd = f"{upd}+"
            rows.append((e.subject, f"{e.nodes}x{e.gpus}" if e.gpus else "cpu", e.info.get("micro_batch_tokens", "-"),
                         _gib(e.peak, e.memory_limit), f" ({e.peak_phase})" if e.peak_phase else "",
                         _hours(e.hours), f"{e.requested_hours:.1f}", upd, e.info.get("updates", "-")))
        lines += fixed(cols, rows)
        lines.append("  (upd/step: optimizer updates per rollout step = prompts x samples // global_batch_size "
                     "samples, as slime; '+': samples left over)")
        lines.append("")
    groups: dict[tuple, list] = defaultdict(list)
    for j, e in estimates.items():
        if jobs[j].rule != "train":
            groups[(jobs[j].rule, id(e))].append(e)
    evals = [(k[0], v) for k, v in groups.items() if k[0] in ("evaluate", "evaluate_model") and v[0].phases]
    if evals:
        cols = [Column("evaluations (model, benchmark)", 52, "<"), Column("jobs", 5), Column("GPUs", 6),
                Column("tp x dp", 9), Column("peak GiB/GPU", 14), Column("est h", 8), Column("req h", 8)]
        rows = []
        for rule, es in sorted(evals, key=lambda kv: (kv[0], kv[1][0].subject)):
            e = es[0]
            what = f"checkpoints of runs from {e.subject}" if rule == "evaluate" else f"model {e.subject}"
            rows.append((f"{what}, {e.info['bench']}", len(es), e.nodes * e.gpus,
                         f"{e.info['tp']}x{e.info['dp']}" if "tp" in e.info else "-",
                         _gib(e.peak, e.memory_limit), _hours(e.hours), f"{e.requested_hours:.1f}"))
        lines += fixed(cols, rows)
        lines.append("")
    svd = [(k[0], v) for k, v in groups.items() if k[0] in ("diagnose", "diagnose_reference", "similarity")]
    if svd:
        cols = [Column("CPU diagnostics (model, matrices)", 52, "<"), Column("jobs", 5), Column("workers", 8),
                Column("peak GiB/node", 15), Column("est h", 8), Column("req h", 8)]
        rows = [(f"{rule} {es[0].subject}", len(es), es[0].info.get("workers", "-"), _gib(es[0].peak, es[0].memory_limit),
                 _hours(es[0].hours), f"{es[0].requested_hours:.1f}")
                for rule, es in sorted(svd, key=lambda kv: (kv[0], kv[1][0].subject))]
        lines += fixed(cols, rows)
        lines.append("")
    return lines


def detail(estimates: dict[str, cm.Estimate]) -> list[str]:
    """Every phase's memory terms and every time component of each distinct estimate."""
    lines, seen = [], set()
    for e in estimates.values():
        if id(e) in seen or (not e.phases and not e.seconds):
            continue
        seen.add(id(e))
        lines.append(f"{e.rule} {e.subject}" + (f" {e.info['bench']}" if "bench" in e.info else "")
                     + f": {e.nodes} node(s) x {e.gpus} GPU(s)")
        for phase, b in e.phases.items():
            lines.append(f"  {phase}: {b.total / cm.GiB:.1f} GiB per {e.memory_kind}")
            lines += [f"    {k:<58}{v / cm.GiB:>9.2f}" for k, v in b.terms.items()]
        for name, b in e.info.items():
            if isinstance(b, cm.Breakdown):
                lines.append(f"  {name}: {b.total / cm.GiB:.1f} GiB")
                lines += [f"    {k:<58}{v / cm.GiB:>9.2f}" for k, v in b.terms.items()]
        for k, v in e.seconds.items():
            lines.append(f"  time {k:<53}{v / 3600:>9.2f} h")
        if "engine layout (per trainer process)" in e.info:
            lines.append(f"  engines per trainer process: {e.info['engine layout (per trainer process)']}")
        for name in ("rollout", "teacher"):
            fits = e.info.get(f"{name}_utilization_that_fits")
            if fits is not None:
                lines.append(f"  {name} engine: largest gpu_memory_utilization with every phase fitting: {fits:.2f}")
        if e.rule == "train" and "signal_lead_s" in e.info:
            why = (f" (the longest step {e.info['longest_step_s'] / 60:.1f} min + a state save "
                   f"{e.info['state_save_s'] / 60:.1f} min, x margin, + Slurm's resolution)"
                   if "longest_step_s" in e.info else "")
            lines.append(f"  early signal: sbatch --signal=USR1@{e.info['signal_lead_s']}{why}")
        for k in ("rollout_tokens", "teacher_tokens", "train_tokens"):
            if k in e.info:
                lines.append(f"  {k.replace('_', ' '):<58}{e.info[k]:>12.3g}")
        if "decode_tokens_per_s_per_gpu" in e.info:
            lines.append(f"  {'vLLM decode tokens/s per GPU (modelled)':<58}{e.info['decode_tokens_per_s_per_gpu']:>12,.0f}")
        lines.append("")
    return lines


def render(summary: dict, config_name: str, jobs: dict[str, Job] | None = None,
           estimates: dict[str, cm.Estimate] | None = None, show_detail: bool = False) -> str:
    lines = [f"Plan for {config_name}: {summary['jobs']} jobs, "
             f"{summary['gpu_hours']:,.1f} GPU-hours requested (GPUs x nodes x runtime), "
             f"{summary['est_gpu_hours']:,.1f} estimated", ""]
    rows = []
    for key, row in sorted(summary["per_rule"].items(), key=lambda kv: (-kv[1]["gpu_hours"], kv[0])):
        est = f"{row['est_gpu_hours']:,.1f}" if row["estimated"] else "-"
        peak = "-" if row["peak_gib"] is None else (
            f"{row['peak_gib']:.1f}" + (f"/{row['limit_gib']:.0f}" if row.get("limit_gib") else "")
            + (" /GPU" if row.get("memory_kind") == "GPU" else " /node"))
        rows.append((key, row["jobs"], f"{row['gpu_hours']:,.1f}", est, peak))
    lines += fixed([Column("per rule", 24, "<"), Column("jobs", 6), Column("GPU-h req", 12), Column("GPU-h est", 12),
                    Column("peak mem GiB", 16)], rows)
    lines.append("")
    if estimates:
        lines += estimate_tables(jobs, estimates)
        if show_detail:
            lines += detail(estimates)
    lines += fixed([Column("per run family", 24, "<"), Column("jobs", 6), Column("GPU-hours", 14)],
                   [(key, row["jobs"], f"{row['gpu_hours']:,.1f}")
                    for key, row in sorted(summary["per_family"].items(), key=lambda kv: (-kv[1]["gpu_hours"], kv[0]))])
    lines.append("")
    lines.append(f"longest chain of dependent jobs: {summary['critical_path_hours']:,.1f} h wall "
                 f"({len(summary['critical_path'])} jobs)")
    lines += [f"  {j}" for j in summary["critical_path"]]
    if estimates:
        a = cm.ASSUMPTIONS
        lines += ["", f"Estimates assume (geopd/costmodel.py, Assumptions): {a.peak_tflops:g} TFLOP/s and "
                  f"{a.hbm_tb_s:g} TB/s per GPU, training MFU {a.train_mfu:g}, prefill MFU {a.prefill_mfu:g}, "
                  f"decode at {a.decode_bw_eff:g} of HBM bandwidth, mean response {a.response_fraction:g} x "
                  f"max_new_tokens, mean SFT sequence {a.sft_fraction:g} x max_length; memory limit = "
                  f"resources gpu_memory_gb (GPU) or mem_mb (node)."]
    return "\n".join(lines)


def estimate_json(e: cm.Estimate) -> dict:
    """One estimate as `geopd plan --json` prints it (GiB, hours)."""
    return {"rule": e.rule, "subject": e.subject, "peak_gib": None if e.peak is None else e.peak / cm.GiB,
            "peak_phase": e.peak_phase, "memory_limit_gib": None if e.memory_limit is None else e.memory_limit / cm.GiB,
            "memory_kind": e.memory_kind, "phases": {k: b.gib() for k, b in e.phases.items()},
            "est_hours": e.hours, "requested_hours": e.requested_hours,
            "seconds": e.seconds, "problems": e.problems,
            "info": {k: (v.gib() if isinstance(v, cm.Breakdown) else v) for k, v in e.info.items()}}
