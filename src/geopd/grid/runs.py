"""The grid's runs: `extends` resolved, method_defaults merged, references parsed, every
cross-reference and cycle checked; the result typed (`Run`, its `Settings`).

What the schema cannot say is checked here, each failure naming the config key: unknown runs,
models, data sets and benchmarks; one name for two things (a run and a model, ...); cycles
between runs (init, w0, projection) and between model builds; checkpoints outside a run's steps;
the method's teacher rules; a data set that cannot feed what reads it (its records' kind, an
empty split).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NoReturn

from geopd.config import deep_merge
from geopd.spec import RL_METHODS, TEACHER_METHODS, Extrapolation, Projection, Settings, SpecError

# fail(config key, message, *more keys) raises a UserError naming the file(s) of the keys
Fail = Callable[..., NoReturn]


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
    settings: Settings  # batch_size, max_length, optim, rollout, objective, engine, teacher_engine
    projection: Projection | None = None
    extrapolation: Extrapolation | None = None
    resources: dict = field(default_factory=dict)
    eval_at: dict[str, list[int]] = field(default_factory=dict)  # benchmark -> further steps

    @property
    def final_step(self) -> int:
        return self.checkpoints[-1]

    @property
    def benchmarks(self) -> list[str]:
        """Every benchmark the run is evaluated on: `eval` (at every checkpoint), then those
        `eval_at` adds at its own steps."""
        return list(dict.fromkeys([*self.eval, *self.eval_at]))

    def eval_steps(self, bench: str) -> list[int]:
        """The steps at which `bench` is evaluated: every checkpoint for a benchmark of `eval`,
        and the steps `eval_at` lists for it."""
        return sorted(set(self.checkpoints if bench in self.eval else []) | set(self.eval_at.get(bench, [])))

    @property
    def saved_steps(self) -> list[int]:
        """The steps whose weights the trainer saves: the checkpoints (diagnosed and evaluated)
        and the evaluation-only steps of `eval_at`."""
        return sorted(set(self.checkpoints).union(*self.eval_at.values()))


# Folders of the results layout (geopd.paths) beside the runs' own: no run may take their names.
RESERVED_RUN_NAMES = ("models", "reference", "summary.csv", "matrices.csv", "similarity.csv", "accuracy.csv")

# The records a data set kind is prepared into (geopd.data), and the records each use reads.
RECORDS = {"synthetic-corpus": "corpus", "synthetic-demos": "demos", "hub-sft": "sft",
           "synthetic-math": "math", "hub-math": "math", "synthetic-code": "code", "hub-code": "code",
           "hub-mcq": "mcq", "hub-lcb": "lcb"}
READS = {"sft": ("demos", "sft"), "opd": ("math", "code", "mcq"), "rlvr": ("math", "code"),
         "mix": ("math", "code"), "pretrain": ("corpus",), "finetune": ("demos", "sft"),
         # benchmarks, by kind
         "bench:math": ("math",), "bench:code": ("code",), "bench:lcb": ("lcb",), "bench:mcq": ("mcq",)}


def resolve_runs(config: dict, fail: Fail) -> dict[str, Run]:
    """Every run of `config` (schema-valid), in config order, checked."""
    check_names(config, fail)
    raw_runs = resolve_extends(config["runs"], fail)
    check_model_builds(config, fail)
    check_benchmarks(config, fail)
    check_ref_cycles(config, raw_runs, fail)
    runs = {name: make_run(config, name, raw, fail) for name, raw in raw_runs.items()}
    check_run_cycles(runs, fail)
    names = [ref["name"] for ref in config.get("reference_pairs", [])]
    for name in sorted({n for n in names if names.count(n) > 1}):
        fail("reference_pairs", f"two pairs named '{name}': each writes diagnostics/reference/{name}.all.csv")
    for name in config.get("train_resources") or {}:
        if name not in runs:
            fail(f"train_resources.{name}", f"unknown run '{name}'")
    for ref in config.get("reference_pairs", []):
        for key in ("base", "tuned"):
            if ref[key] not in config["models"]:
                fail(f"reference_pairs.{ref['name']}.{key}", f"unknown model '{ref[key]}'")
    return runs


def check_names(config: dict, fail: Fail) -> None:
    """One name, one thing: `init: x` resolves a run before a model, so a run named like a model
    would silently replace it for every run that starts from it."""
    sections = (("runs", "run"), ("models", "model"), ("datasets", "data set"))
    for i, (a, what) in enumerate(sections):
        for b, other in sections[i + 1:]:
            for name in config[a]:
                if name in config[b]:
                    fail(f"{a}.{name}", f"'{name}' names both a {what} and a {other} ({b}.{name}): "
                                        f"give them different names")
    for name in config["runs"]:
        if name in RESERVED_RUN_NAMES:
            fail(f"runs.{name}", f"'{name}' is a name of the results layout ({', '.join(RESERVED_RUN_NAMES)}): "
                                 f"name the run otherwise")


def check_size(key: str, size: dict, fail: Fail) -> None:
    """An architecture Qwen3 can be built with: whole heads, key/value heads that group them, as
    many experts per token as there are experts."""
    heads, kv = size.get("heads"), size.get("kv_heads")
    if heads and kv and heads % kv:
        fail(f"{key}.kv_heads", f"{kv} key/value heads do not divide {heads} attention heads", f"{key}.heads")
    if "head_dim" not in size and heads and size.get("hidden", 0) % heads:
        fail(f"{key}.heads", f"hidden {size['hidden']} is not a whole number of {heads} heads: set head_dim")
    if size.get("experts_per_tok", 0) > size.get("num_experts", size.get("experts_per_tok", 0)):
        fail(f"{key}.experts_per_tok", f"{size['experts_per_tok']} experts per token of {size['num_experts']}")


def data_splits(dataset: dict) -> dict[str, str]:
    """The splits `geopd data` writes records into, each with why the other one is empty."""
    kind = dataset["kind"]
    if not kind.startswith("synthetic-"):
        split = dataset.get("as_split", "train")
        return {split: ""}
    counts = {"train": dataset.get("n_train", 0),
              "test": 0 if kind in ("synthetic-corpus", "synthetic-demos") else dataset.get("n_test", 0)}
    return {s: "" for s, n in counts.items() if n > 0}


def check_data(config: dict, key: str, name: str, reads: str, split: str, fail: Fail,
               split_key: str | None = None) -> None:
    """`name` must be a data set whose records `reads` understands, with records in `split`
    (`split_key`: the key that chose the split, if any)."""
    dataset = config["datasets"].get(name)
    if dataset is None:
        fail(key, f"unknown data set '{name}'")
    records = RECORDS[dataset["kind"]]
    if records not in READS[reads]:
        user = reads.removeprefix("bench:")
        fail(key, f"data set '{name}' ({dataset['kind']}: {records} records) cannot feed "
                  f"{'a ' + user + ' benchmark' if reads.startswith('bench:') else user}, which reads "
                  f"{' or '.join(READS[reads])} records")
    splits = data_splits(dataset)
    if split not in splits:
        if not dataset["kind"].startswith("synthetic-"):
            why = f"it is written as its {next(iter(splits))} split (as_split)"
        elif dataset["kind"] in ("synthetic-corpus", "synthetic-demos") and split == "test":
            why = f"a {dataset['kind']} set has a train split only"
        else:
            why = f"n_{split} is {dataset.get('n_' + split, 0)}"
        fail(split_key or key, f"data set '{name}' has no {split} split ({why})", key, f"datasets.{name}")


def check_benchmarks(config: dict, fail: Fail) -> None:
    for name, bench in config["benchmarks"].items():
        check_data(config, f"benchmarks.{name}.data", bench["data"], f"bench:{bench['kind']}",
                   bench.get("split", "test"), fail, f"benchmarks.{name}.split")


def check_ref_cycles(config: dict, raw_runs: dict[str, dict], fail: Fail) -> None:
    """A run that starts (init, w0, projection) from itself or from a run that starts from it,
    before anything else about those references is checked."""
    edges: dict[str, list[tuple[str, str]]] = {}
    for name, raw in raw_runs.items():
        merged = deep_merge(config["method_defaults"].get(raw.get("method"), {}), raw)
        refs = [("init", merged.get("init")), ("w0", merged.get("w0")),
                ("projection.run", (merged.get("projection") or {}).get("run"))]
        edges[name] = [(key, ref.partition("@")[0]) for key, ref in refs
                       if isinstance(ref, str) and ref.partition("@")[0] in raw_runs]
    state: dict[str, int] = {}

    def visit(name: str, path: list[tuple[str, str]]):
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            names = [n for n, _ in path]
            start = names.index(name)
            cycle = " -> ".join(names[start:] + [name])
            first, key = path[start]
            own = " (a run cannot start from its own checkpoints)" if len(names) - start == 1 else ""
            fail(f"runs.{first}.{key}", f"cycle between runs: {cycle}{own}",
                 *(f"runs.{n}.{k}" for n, k in path[start:]))
        state[name] = 1
        for key, target in edges[name]:
            visit(target, path + [(name, key)])
        state[name] = 2

    for name in raw_runs:
        visit(name, [])


def resolve_extends(runs: dict, fail: Fail) -> dict[str, dict]:
    """Each run's keys with those of the run it `extends` (recursively) underneath."""
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
                fail(f"runs.{name}.extends", f"unknown run '{parent}'")
            path = (*chain, name)
            if parent in path:
                members = path[path.index(parent):]
                cycle = " -> ".join((*members, parent))
                fail(f"runs.{name}.extends", f"cycle between runs: {cycle}",
                     *(f"runs.{m}.extends" for m in members))
            base = {k: v for k, v in resolve(parent, (*chain, name)).items()
                    # Identity and analysis choices are not inherited: a variant is its
                    # own run and states its own family and its extra evaluations.
                    if k not in ("family", "extends", "eval_at")}
            out = deep_merge(base, {k: v for k, v in raw.items() if k != "extends"})
        resolved[name] = out
        return out

    for name in runs:
        resolve(name, ())
    return resolved


def check_model_builds(config: dict, fail: Fail) -> None:
    models, sizes = config["models"], config.get("model_sizes", {})
    for name, size in sizes.items():
        check_size(f"model_sizes.{name}", size, fail)
    for name, model in models.items():
        if model.get("shape"):
            check_size(f"models.{name}.shape", model["shape"], fail)
        build = model.get("build")
        if not build:
            continue
        if ("size" in build) == ("from" in build) or ("pretrain" in build) == ("finetune" in build):
            fail(f"models.{name}.build", f"give size + pretrain (a model made from random weights) or from + "
                                         f"finetune (one fine-tuned), not {' + '.join(sorted(build))}")
        if "size" in build and build["size"] not in sizes:
            fail(f"models.{name}.build.size", f"unknown size '{build['size']}' (not in model_sizes)")
        if "from" in build:
            if build["from"] not in models:
                fail(f"models.{name}.build.from", f"unknown model '{build['from']}'")
            seen, cur = [name], build["from"]
            while cur is not None:
                if cur in seen:
                    fail(f"models.{name}.build.from", f"cycle between models: {' -> '.join(seen + [cur])}")
                seen.append(cur)
                cur = models[cur].get("build", {}).get("from")
        kind = "pretrain" if "pretrain" in build else "finetune"
        stage = build[kind]
        key = "corpus" if kind == "pretrain" else "data"
        if key not in stage:
            fail(f"models.{name}.build.{kind}.{key}", "missing: the data set it trains on")
        check_data(config, f"models.{name}.build.{kind}.{key}", stage[key], kind, "train", fail)


def parse_ref(config: dict, key: str, text: str, fail: Fail) -> Ref:
    """"model", "run" (its final checkpoint) or "run@step"."""
    name, _, step = text.partition("@")
    if step:
        if not step.isdigit():
            fail(key, f"'{text}': the step after '@' must be an integer")
        if name not in config["runs"]:
            fail(key, f"unknown run '{name}' in '{text}'")
        return Ref("run", name, int(step))
    if name in config["runs"]:
        return Ref("run", name)
    if name in config["models"]:
        return Ref("model", name)
    fail(key, f"unknown run or model '{text}'")


def make_run(config: dict, name: str, raw: dict, fail: Fail) -> Run:
    key = f"runs.{name}"
    method = raw.get("method")
    if method is None:
        fail(f"{key}.method", "missing (set it or `extends` a run that has one)")
    defaults = config["method_defaults"].get(method)
    if defaults is None:
        fail(f"{key}.method", f"no method_defaults for '{method}'")
    merged = deep_merge(defaults, raw)
    if "init" not in merged:
        fail(f"{key}.init", "missing")
    init = parse_ref(config, f"{key}.init", merged["init"], fail)
    w0 = parse_ref(config, f"{key}.w0", merged["w0"], fail) if "w0" in merged else init
    teacher = merged.get("teacher")
    needs_teacher = method in TEACHER_METHODS
    if needs_teacher and teacher is None:
        fail(f"{key}.teacher", f"method '{method}' needs a teacher")
    if teacher is not None:
        if not needs_teacher:
            fail(f"{key}.teacher", f"method '{method}' takes no teacher")
        if teacher not in config["models"]:
            fail(f"{key}.teacher", f"unknown model '{teacher}'")
    data = merged.get("data")
    if data is None:
        fail(f"{key}.data", "missing: the data set the run trains on")
    check_data(config, f"{key}.data", data, method, "train", fail)
    for bench in merged.get("eval", []):
        if bench not in config["benchmarks"]:
            fail(f"{key}.eval", f"unknown benchmark '{bench}'")
    start = init.step or 0  # a run started from run@step counts on from that step
    if "steps" not in merged:
        fail(f"{key}.steps", "missing: the run's final step")
    steps = merged["steps"]
    if steps <= start:
        fail(f"{key}.steps", f"{steps} is not after the step it starts from ({init}): nothing to train",
             f"{key}.init")
    checkpoints = sorted(set(merged.get("checkpoints", [])) | {steps})
    bad = [c for c in checkpoints if c <= start or c > steps]
    if bad:
        fail(f"{key}.checkpoints", f"steps {bad} outside ({start}, {steps}]")
    eval_at = {b: sorted(set(at)) for b, at in (merged.get("eval_at") or {}).items()}
    for bench, at in eval_at.items():
        if bench not in config["benchmarks"]:
            fail(f"{key}.eval_at", f"unknown benchmark '{bench}'")
        bad = [c for c in at if c <= start or c > steps]
        if bad:
            fail(f"{key}.eval_at.{bench}", f"steps {bad} outside ({start}, {steps}]")
    if "optim" not in merged:
        fail(f"{key}.optim", "missing: the optimizer's settings (at least lr)")
    if method == "sft":
        for k in ("batch_size", "max_length"):
            if k not in merged:
                fail(f"{key}.{k}", "missing: an sft run needs it")
    elif "rollout" not in merged:
        fail(f"{key}.rollout", f"missing: method '{method}' samples rollouts")
    settings = _typed(Settings, {k: merged[k] for k in Settings.keys() if k in merged}, key, fail)
    if settings.rollout_source == "teacher" and not needs_teacher:
        fail(f"{key}.rollout.source", "off-policy rollouts need a teacher")
    if method == "mix" and not settings.objective.given("alpha"):
        fail(f"{key}.objective.alpha", "method 'mix' needs alpha")
    if method in RL_METHODS:  # what the method's objective and rollout can use (geopd.spec)
        for block in ("objective", "rollout"):
            value = getattr(settings, block)
            try:
                if value is not None:
                    value.check_method(method)
            except SpecError as exc:
                named = str(exc).split(" ", 1)[0]  # "objective.reward grades ...": that key
                fail(f"{key}.{named if named.startswith(block + '.') else block}", str(exc))
    projection = merged.get("projection")
    if projection is not None:
        projection = _typed(Projection, projection, f"{key}.projection", fail)
        if projection.run not in config["runs"]:
            fail(f"{key}.projection.run", f"unknown run '{projection.run}'")
    extrapolation = merged.get("extrapolation")
    if extrapolation is not None:
        if method == "sft":
            fail(f"{key}.extrapolation", "EffOPD scores the student's own samples: an sft run has none")
        if settings.rollout_source == "teacher":
            fail(f"{key}.extrapolation", "EffOPD scores the student's own samples: not with rollout.source teacher",
                 f"{key}.rollout.source")
    return Run(
        name=name,
        family=merged.get("family", method),
        method=method,
        init=init,
        w0=w0,
        teacher=teacher,
        data=data,
        seed=merged.get("seed", config["seed"]),
        steps=steps,
        start_step=start,
        checkpoints=checkpoints,
        diagnostics=merged.get("diagnostics", "endpoint"),
        eval=list(merged.get("eval", [])),
        settings=settings,
        projection=projection,
        extrapolation=None if extrapolation is None else _typed(Extrapolation, extrapolation, f"{key}.extrapolation", fail),
        resources=merged.get("resources", {}),
        eval_at=eval_at,
    )


def _typed(cls, data: dict, key: str, fail: Fail):
    """cls.from_dict(data), its SpecError as a failure naming the key (and so the file)."""
    try:
        return cls.from_dict(data, key)
    except SpecError as exc:
        where, sep, rest = str(exc).partition(": ")
        if sep and where.startswith(key) and " " not in where:
            fail(where, rest)
        fail(key, str(exc))


def run_deps(run: Run) -> list[tuple[str, Ref]]:
    """(config key, ref) of every run `run` reads a checkpoint of."""
    deps = [("init", run.init), ("w0", run.w0)]
    if run.projection:
        deps.append(("projection.run", Ref("run", run.projection.run, run.projection.step)))
    return [(k, r) for k, r in deps if r.kind == "run"]


def check_run_cycles(runs: dict[str, Run], fail: Fail) -> None:
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, path: list[str]):
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = " -> ".join(path[path.index(name):] + [name])
            fail(f"runs.{path[-1]}.init", f"cycle between runs: {cycle}")
        state[name] = 1
        for key, ref in run_deps(runs[name]):
            target = runs[ref.name]
            if ref.step is not None and ref.step not in target.saved_steps:
                fail(f"runs.{name}.{key}",
                     f"run '{ref.name}' saves no checkpoint at step {ref.step} (it saves {target.saved_steps})",
                     *([f"runs.{name}.projection.step"] if key == "projection.run" else []))
            visit(ref.name, path + [ref.name])
        state[name] = 2

    for name in runs:
        visit(name, [name])


def continuation(runs: dict[str, Run], name: str) -> tuple[list[int], Ref | None]:
    """(steps of `name` that other runs start from: its training state is kept there, the
    run@step `name` itself continues, if any)."""
    keep = sorted({r.init.step for r in runs.values() if r.init.kind == "run" and r.init.name == name
                   and r.init.step is not None})
    init = runs[name].init
    return keep, init if init.kind == "run" and init.step is not None else None

