"""Requests no job could carry out, found from the config alone, before anything runs.

`problems(grid)` is called by both `geopd plan` and the workflow (workflow/rules/common.smk, so
`snakemake -n` and `--profile slurm` too; through geopd.plan.refusals, which adds the cost
model's memory and time checks): one line per problem, each naming the file and key it comes
from. The grid itself (geopd.grid.runs) has already refused what makes it inconsistent:
unknown names, cycles, clashes, data sets that cannot feed their users. Here:

- where results go: not the source tree (the repository, its src/, workflow/, config/, ...);
- resources Slurm would refuse or that waste the allocation: above a partition's time,
  memory or node limit (max_runtime, max_mem_mb, max_nodes), no GPU for a job that computes on
  `device: cuda`;
- sequences an engine cannot hold: a response of max_new_tokens at or beyond max_model_len;
- batches the trainer cannot cut: rollout.global_batch_size above a step's samples;
- every command's settings as the command will get them (each run's `geopd train` spec and
  its tracking, each benchmark's `geopd evaluate` spec), built once here so a mistake in them
  stops the workflow at planning rather than at a job's start.
"""
from __future__ import annotations

from pathlib import Path

from geopd.config import REPO
from geopd.data import demo_tasks
from geopd.errors import UserError
from geopd.grid.runs import Ref
from geopd.paths import TASKS_DIR
from geopd.spec import DEFAULT_MAX_RUNTIME

# Nodes one job may span unless the config states its partition's (`sinfo -o "%P %D"`).
DEFAULT_MAX_NODES = 64
# Folders of the repository that outputs must never land in (nor the repository itself).
SOURCE_DIRS = ("src", "workflow", "config", "tests", "scripts", "envs", "slurm", ".git", ".venv", ".venv-vllm")


def problems(grid, requests: bool = True) -> list[str]:
    """Every problem found, one line each ("file: key: what"); [] when the grid can run.
    requests=False: not the requests above their caps (what `geopd plan --suggest-resources`
    replaces)."""
    out = results_problems(grid) + path_problems(grid)
    for rule in (resource_rules(grid) if requests else []):
        out += resource_problems(grid, rule)
    out += (device_problems(grid) + parallel_problems(grid) + length_problems(grid) + batch_problems(grid)
            + lineage_problems(grid) + data_problems(grid) + spec_problems(grid))
    return list(dict.fromkeys(out))


def refuse(lines: list[str], what: str) -> None:
    if lines:
        raise UserError(f"{len(lines)} problem(s) in {what}:\n  " + "\n  ".join(lines))


def _line(grid, key: str, message: str) -> str:
    return f"{grid.origins.of(key)}: {key}: {message}"


# ---- results -----------------------------------------------------------------------------------

def results_problems(grid, repo: Path = REPO) -> list[str]:
    """The folders the workflow writes (results, and the hub mirror the prefetch rule fills)."""
    out = []
    for key, default in (("results", "results"), ("hub_mirror", None)):
        value = grid.config.get(key, default)
        if value is not None:
            out += _folder_problems(grid, key, Path(value), repo.resolve())
    return out


def _folder_problems(grid, key: str, root: Path, repo: Path) -> list[str]:
    resolved = root.resolve()
    if resolved.is_file():
        return [_line(grid, key, f"'{root}' is a file: the workflow writes into a folder there")]
    if resolved == repo or repo.is_relative_to(resolved):
        return [_line(grid, key, f"'{root}' is {'the repository' if resolved == repo else 'above the repository'} "
                                 f"({repo}): outputs would mix with the sources; use a folder of its own")]
    for name in SOURCE_DIRS:
        source = repo / name
        if source.exists() and resolved.is_relative_to(source.resolve()):
            return [_line(grid, key, f"'{root}' is inside the source tree ({source}): use a folder of its own")]
    return []


def path_problems(grid) -> list[str]:
    """A model or data set read from a local folder the config names must be there."""
    out = []
    for section, what in (("models", "model"), ("datasets", "data set")):
        for name, entry in grid.config[section].items():
            path = entry.get("path")
            if path is not None and not Path(path).exists():
                out.append(_line(grid, f"{section}.{name}.path", f"'{path}': no such file or folder (the {what}'s "
                                                                 f"local copy)"))
    return out


# ---- resources -----------------------------------------------------------------------------------

# What every job's resources must resolve to (default < rule < run): the Slurm request.
REQUIRED_RESOURCES = ("partition", "gpus", "nodes", "tasks", "cpus", "mem_mb", "runtime")

def resource_rules(grid) -> list[str]:
    """One rule per resource entry the grid's jobs use (train: every run)."""
    rules = ["prepare_data", "train", "report"]
    stages = {grid.model_stage(m) for m in grid.models}
    rules += [f"{s}_model" for s in ("pretrain", "finetune") if s in stages]
    if grid.diagnostics_targets() or grid.reference_pairs():
        rules.append("diagnose")
    if grid.similarity_runs() and grid.grouping("diagnose") == "checkpoint":
        rules.append("similarity")
    if grid.eval_targets():
        rules.append("evaluate")
    return rules


def _blocks(grid, cls: str, run: str | None) -> list[tuple[str, dict]]:
    """The config blocks a job's resources merge, the most specific first: the run's own, its
    train_resources entry, resources.<class>, resources.default."""
    out = []
    if run is not None:
        out += [(f"runs.{run}.resources", grid.runs[run].resources),
                (f"train_resources.{run}", (grid.config.get("train_resources") or {}).get(run, {}))]
    return out + [(f"resources.{b}", grid.config["resources"].get(b, {})) for b in (cls, "default")]


def _origin(grid, cls: str, run: str | None, keys: tuple[str, ...]) -> str:
    """The config block a resolved value came from (the most specific that sets one of keys)."""
    return next((name for name, block in _blocks(grid, cls, run) if any(k in block for k in keys)),
                f"resources.{cls}")


def _where(grid, cls: str, run: str | None, keys: tuple[str, ...]) -> str:
    """"file(s): block" for a message about resolved keys: the files of the blocks that set them
    (train_resources.<run> may set runtime and resources.train max_runtime), and the block of the
    first key set."""
    found = {k: next((name for name, block in _blocks(grid, cls, run) if k in block), None) for k in keys}
    found = {k: b for k, b in found.items() if b is not None} or {keys[0]: f"resources.{cls}"}
    files = grid.origins.of(*(f"{b}.{k}" for k, b in found.items()))
    return f"{files}: {next(iter(found.values()))}"


def resource_problems(grid, rule: str) -> list[str]:
    """Requests above their own caps (Slurm would reject every attempt of the job), or beyond
    the partition's nodes."""
    cls = grid.RESOURCE_CLASS.get(rule, rule)
    out = []
    for run in (list(grid.runs) if cls == "train" else [None]):
        res = grid.resources(rule, run)
        where = f"rule {rule}" + (f", run {run}" if run else "")
        missing = [k for k in REQUIRED_RESOURCES if k not in res]
        if missing:
            out.append(_line(grid, "resources.default", f"no {', '.join(missing)} for {where}: every job needs "
                                                        f"them (set them under resources.default)"))
            continue

        def line(keys: tuple[str, ...], message: str) -> str:
            return f"{_where(grid, cls, run, keys)}: {message}"

        cap = res.get("max_runtime", DEFAULT_MAX_RUNTIME)
        if res["runtime"] > cap:
            named = ("max_runtime" if "max_runtime" in res
                     else f"max_runtime (default {DEFAULT_MAX_RUNTIME} min = 48 h)")
            out.append(line(("runtime", "max_runtime"),
                            f"runtime {res['runtime']} min exceeds {named} {cap} ({where}); set max_runtime to "
                            f"your partition's time limit or lower runtime"))
        if "max_mem_mb" in res and res["mem_mb"] > res["max_mem_mb"]:
            out.append(line(("mem_mb", "max_mem_mb"),
                            f"mem_mb {res['mem_mb']} exceeds max_mem_mb {res['max_mem_mb']} ({where}): "
                            f"no node could run it"))
        nodes, max_nodes = res.get("nodes", 1), res.get("max_nodes", DEFAULT_MAX_NODES)
        if nodes > max_nodes:
            named = "max_nodes" if "max_nodes" in res else f"max_nodes (default {DEFAULT_MAX_NODES})"
            out.append(line(("nodes", "max_nodes"),
                            f"nodes {nodes} exceeds {named} {max_nodes} ({where}); set max_nodes to your "
                            f"partition's node count or ask for fewer"))
    return out


def device_problems(grid) -> list[str]:
    """`device: cuda` computes on GPUs: a job of it that asks for none would not start (or would
    run a GPU job on a CPU for days)."""
    if grid.device != "cuda":
        return []
    out = []
    jobs = [("train", run) for run in grid.runs] + [(r, None) for r in resource_rules(grid)
                                                     if r in ("pretrain_model", "finetune_model", "evaluate")]
    for rule, run in jobs:
        if grid.resources(rule, run).get("gpus", 0) < 1:
            cls = grid.RESOURCE_CLASS.get(rule, rule)
            block = _origin(grid, cls, run, ("gpus",))
            what = f"run {run}" if run else f"rule {rule}"
            out.append(f"{grid.origins.of(f'{block}.gpus', 'device')}: {block}: gpus 0 for {what}, but device is cuda: "
                       f"the job would have no GPU (ask for gpus, or set device: cpu)")
    return out


def parallel_problems(grid) -> list[str]:
    """GPU work split the way it can run: a training job's torchrun agents (tasks) each take the
    same number of the job's GPUs; an evaluation whose benchmark fixes both tensor_parallel and
    data_parallel uses exactly the GPUs its job requests (the evaluation refuses otherwise)."""
    out = []
    if grid.device == "cuda":
        for name in grid.runs:
            res = grid.resources("train", name)
            gpus = res.get("gpus", 0) * res.get("nodes", 1)
            if gpus and gpus % res.get("tasks", 1):
                out.append(f"{_where(grid, 'train', name, ('tasks', 'nodes', 'gpus'))}: "
                           f"tasks {res['tasks']} do not divide the {gpus} GPUs of run {name}")
    if grid.eval_targets():
        res = grid.resources("evaluate")
        gpus = res.get("gpus", 0) * res.get("nodes", 1)
        for name, bench in grid.benchmarks.items():
            tp, dp = bench.get("tensor_parallel"), bench.get("data_parallel")
            if gpus and tp and dp and bench.get("backend") != "hf" and tp * dp != gpus:
                out.append(_line(grid, f"benchmarks.{name}.data_parallel",
                                 f"tensor_parallel {tp} x data_parallel {dp} = {tp * dp} GPUs, but an evaluate job "
                                 f"has {gpus} (resources.evaluate): leave data_parallel out to use them all"))
    return out


# ---- lengths and batches ----------------------------------------------------------------------

def _too_long(max_new: int, max_len: int | None) -> bool:
    return max_len is not None and max_new >= max_len


def length_problems(grid) -> list[str]:
    """A response of max_new_tokens must fit an engine's max_model_len beside its prompt."""
    out = []
    for name, bench in grid.benchmarks.items():
        if _too_long(bench["max_new_tokens"], bench.get("max_model_len")):
            out.append(_line(grid, f"benchmarks.{name}.max_new_tokens",
                             f"{bench['max_new_tokens']} tokens do not fit max_model_len {bench['max_model_len']} "
                             f"beside a prompt: lower max_new_tokens or raise max_model_len"))
    for name, run in grid.runs.items():
        r = run.settings.rollout
        if r is None:
            continue
        engines = [("rollout.vllm", r.vllm, r.backend == "vllm")]
        if run.teacher:
            te = run.settings.teacher_engine
            engines.append(("teacher_engine.vllm", te.vllm, te.backend == "vllm"))
        for key, block, used in engines:
            if used and _too_long(r.max_new_tokens, block.max_model_len):
                out.append(_line(grid, f"runs.{name}.rollout.max_new_tokens",
                                 f"{r.max_new_tokens} tokens do not fit {key}.max_model_len {block.max_model_len} "
                                 f"beside a prompt"))
    return out


def batch_problems(grid) -> list[str]:
    """An update of global_batch_size samples must fit in a step's prompts x samples (the trainer
    would otherwise train one update of all of them, not what the config says)."""
    out = []
    for name, run in grid.runs.items():
        r = run.settings.rollout
        if r is not None and r.global_batch_size is not None and r.global_batch_size > r.samples_per_step:
            out.append(_line(grid, f"runs.{name}.rollout.global_batch_size",
                             f"{r.global_batch_size} samples per update, but a step samples only "
                             f"{r.prompts_per_step} prompts x {r.samples} = {r.samples_per_step}: "
                             f"at most {r.samples_per_step}"))
        if (run.method == "rlvr" and r is not None and r.samples == 1
                and run.settings.objective.filter_zero_variance):
            out.append(_line(grid, f"runs.{name}.rollout.samples",
                             "1 sample per prompt: every GRPO group's rewards are equal, so "
                             "filter_zero_variance drops every group and the run never updates"))
    return out


# ---- what a run's models must share ------------------------------------------------------------

def architecture(grid, model: str) -> dict | None:
    """A model's architecture as the config states it (a built model's size, a hub model's
    shape), or None where it does not (a hub model read from its mirror: `shape: null`)."""
    entry = grid.models[model]
    build = entry.get("build")
    if build:
        if "from" in build:
            return architecture(grid, build["from"])
        return {**grid.config.get("model_sizes", {}).get(build["size"], {}), "vocab": "miniature"}
    shape = entry.get("shape")
    return dict(shape) if shape else None


def lineage_problems(grid) -> list[str]:
    """A run's W0 and its projection's reference run must have the run's architecture (their
    weights are subtracted from its own), and its teacher the student's vocabulary (they score
    the same tokens); checked where the config states both."""
    out = []
    for name, run in grid.runs.items():
        root = grid.root_model(run.init)
        mine = architecture(grid, root)
        if mine is None:
            continue
        others = [("w0", run.w0)]
        if run.projection:
            others.append(("projection.run", Ref("run", run.projection.run, run.projection.step)))
        for key, ref in others:
            theirs = architecture(grid, grid.root_model(ref))
            if theirs is not None and theirs != mine:
                differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
                out.append(_line(grid, f"runs.{name}.{key}",
                                 f"'{ref}' descends from {grid.root_model(ref)}, the run from {root}: their "
                                 f"architectures differ ({', '.join(differ)}), so their weights cannot be compared"))
        if run.teacher:
            teacher = architecture(grid, run.teacher)
            if teacher is not None and teacher.get("vocab") != mine.get("vocab"):
                out.append(_line(grid, f"runs.{name}.teacher",
                                 f"{run.teacher}'s vocabulary ({teacher.get('vocab')}) is not the student's "
                                 f"({root}: {mine.get('vocab')}): the teacher cannot score the student's tokens"))
    return out


# ---- data sets and benchmarks ---------------------------------------------------------------------

def data_problems(grid) -> list[str]:
    out = []
    for name, data in grid.datasets.items():
        if data["kind"] == "synthetic-demos" and data.get("mix") is not None:
            tasks = demo_tasks(data)
            if set(data["mix"]) != set(tasks):
                out.append(_line(grid, f"datasets.{name}.mix", f"shares of {sorted(data['mix'])}, but the tasks "
                                                               f"are {sorted(tasks)}"))
    shipped = sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))
    for name, bench in grid.benchmarks.items():
        task = bench.get("task")
        if task is not None and bench["kind"] in ("math", "mcq") and task not in shipped:
            out.append(_line(grid, f"benchmarks.{name}.task", f"'{task}' is not a shipped task "
                                                              f"({', '.join(shipped)})"))
    return out


# ---- the commands' settings ----------------------------------------------------------------------

def spec_problems(grid) -> list[str]:
    """Each run's training spec and each benchmark's evaluation spec, built as the rules build
    them: what the commands would refuse at start-up is refused now."""
    out = []
    for name in grid.runs:
        try:
            grid.run_spec(name)
        except UserError as exc:
            out.append(_line(grid, f"runs.{name}", str(exc)))
    if grid.runs:
        try:
            grid.tracking_spec(next(iter(grid.runs)))
        except UserError as exc:
            out.append(_line(grid, "tracking", str(exc)))
    for name in grid.benchmarks:
        try:
            grid.benchmark_spec(name)
        except UserError as exc:
            out.append(_line(grid, f"benchmarks.{name}", str(exc)))
    return out
