"""The grid's runs: `extends` resolved, method_defaults merged, references parsed, every
cross-reference and cycle checked; the result typed (`Run`, its `Settings`).

What the schema cannot say is checked here, each failure naming the config key: unknown runs,
models, data sets and benchmarks; cycles between runs (init, w0, projection) and between model
builds; checkpoints outside a run's steps; the method's teacher rules.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NoReturn

from geopd.config import deep_merge
from geopd.spec import RL_METHODS, TEACHER_METHODS, Extrapolation, Projection, Settings, SpecError

Fail = Callable[[str, str], NoReturn]  # fail(config key, message) raises a UserError naming the sources


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


def resolve_runs(config: dict, fail: Fail) -> dict[str, Run]:
    """Every run of `config` (schema-valid), in config order, checked."""
    raw_runs = resolve_extends(config["runs"], fail)
    check_model_builds(config, fail)
    runs = {name: make_run(config, name, raw, fail) for name, raw in raw_runs.items()}
    check_run_cycles(runs, fail)
    for name in config.get("train_resources") or {}:
        if name not in runs:
            fail(f"train_resources.{name}", f"unknown run '{name}'")
    for ref in config.get("reference_pairs", []):
        for key in ("base", "tuned"):
            if ref[key] not in config["models"]:
                fail(f"reference_pairs.{ref['name']}.{key}", f"unknown model '{ref[key]}'")
    return runs


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
            if parent in chain:
                cycle = " -> ".join((*chain, name, parent)[chain.index(parent):])
                fail(f"runs.{name}.extends", f"cycle between runs: {cycle}")
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
    for name, model in models.items():
        build = model.get("build")
        if not build:
            continue
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
        stage = build.get("pretrain") or build.get("finetune")
        for key in ("corpus", "data"):
            if key in stage and stage[key] not in config["datasets"]:
                fail(f"models.{name}.build.{'pretrain' if 'pretrain' in build else 'finetune'}.{key}",
                     f"unknown data set '{stage[key]}'")


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
    if data not in config["datasets"]:
        fail(f"{key}.data", f"unknown data set '{data}'")
    for bench in merged.get("eval", []):
        if bench not in config["benchmarks"]:
            fail(f"{key}.eval", f"unknown benchmark '{bench}'")
    start = init.step or 0  # a run started from run@step counts on from that step
    steps = merged["steps"]
    checkpoints = sorted(set(merged["checkpoints"]) | {steps})
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
    settings = Settings.from_dict({k: merged[k] for k in Settings.keys() if k in merged}, key)
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
                fail(f"{key}.{block}", str(exc))
    projection = merged.get("projection")
    if projection is not None:
        projection = Projection.from_dict(projection, f"{key}.projection")
        if projection.run not in config["runs"]:
            fail(f"{key}.projection.run", f"unknown run '{projection.run}'")
    extrapolation = merged.get("extrapolation")
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
        extrapolation=None if extrapolation is None else Extrapolation.from_dict(extrapolation, f"{key}.extrapolation"),
        resources=merged.get("resources", {}),
        eval_at=eval_at,
    )


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
                     f"run '{ref.name}' saves no checkpoint at step {ref.step} (it saves {target.saved_steps})")
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

