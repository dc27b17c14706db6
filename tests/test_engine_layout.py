"""The vLLM engines of every paper run, built through the trainer's own code (Trainer._load_teacher,
Trainer._rollout_engine, the engine classes) against a stand-in of vLLM 0.32 on CUDA
(tests/vllm_standin.py) that enforces its process-wide rules as vLLM does: one CuMem allocator
per process, whose weight loading fails once it holds anything ("CuMem allocator can only be used
for one instance per process."), and one workspace manager per process, re-made by every engine.

Each run's trainer process then takes one step's engine calls in the trainer's order (push the
weights, generate, sleep, score, sleep), twice. The models are the paper fixture's tiny ones under
the paper's hub ids (tests/conftest.py: paper_mirror); the engine settings are config/paper.yaml's."""
from __future__ import annotations

import types

import pytest

import vllm_standin
from geopd.config import read_yaml
from geopd.engines import vllm_engine
from geopd.errors import UserError
from geopd.grid import Grid
from geopd.grid.runs import Ref

PAPER = read_yaml("config/paper.yaml")
RL_RUNS = [name for name, run in Grid(PAPER, ["config/paper.yaml"]).runs.items() if run.method != "sft"]


@pytest.fixture(scope="module")
def gloo(tmp_path_factory):
    """A one-process gloo group: each engine's tensor-parallel group is its own rank (the stand-in),
    and the engines gather their group's requests over it as on a cluster."""
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path_factory.mktemp("gloo") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def grid(paper_mirror, repo, gloo):
    config = read_yaml(repo / "config/paper.yaml")
    config["hub_mirror"] = str(paper_mirror)
    return Grid(config, ["config/paper.yaml"])


def root_model(grid, name: str) -> str:
    ref = grid.runs[name].init
    while ref.kind == "run":
        ref = grid.runs[ref.name].init
    return grid.model_source(ref.name)


def trainer_process(grid, name: str, monkeypatch, spec=None):
    """A trainer process of run `name` as far as its engines go: the spec, the student and its
    tokenizer, the distributed world of the run's resources (rank 0)."""
    from geopd.engines import models
    from geopd.train.loop import Trainer

    res = grid.resources("train", name)
    world = res["gpus"] * res["nodes"]
    monkeypatch.setattr(vllm_engine, "_world", lambda: (world, 0))
    trainer = Trainer.__new__(Trainer)
    trainer.spec = spec or grid.run_spec(name)
    trainer.dist = types.SimpleNamespace(world=world, rank=0, device="cpu", main=True)
    source = root_model(grid, name)
    trainer.tokenizer = models.load_tokenizer(source)
    trainer.model = models.load_model(source)
    return trainer


def build_engines(trainer, *, check: bool = True):
    """What Trainer.__init__ does with the engines, in its order."""
    if check:
        vllm_engine.check_colocation(trainer.spec)
    trainer.teacher = trainer._load_teacher() if trainer.spec.teacher else None
    trainer.rollout = trainer._rollout_engine()
    return trainer


def one_step(trainer) -> None:
    """The engine calls of Trainer.rl_step / train_on, in their order."""
    from geopd.engines.chat import format_prompt

    prompts = [format_prompt(trainer.tokenizer, q) for q in ("What is 1+2?", "What is 3+4?")]
    if not trainer.spec.rollout.off_policy:
        trainer.rollout.sync_weights(trainer.model)
    ro = trainer.rollout.generate(prompts, 2, temperature=1.0, top_p=1.0, max_new_tokens=4, seed=0)
    trainer.rollout.sleep()
    if trainer.teacher is not None:
        scores = trainer.teacher.score(ro)
        assert scores.shape == ro.sequences.shape
        trainer.teacher.sleep()


@pytest.mark.parametrize("run", RL_RUNS)
def test_paper_runs_build_one_sleep_mode_engine_per_process(grid, run, monkeypatch):
    vllm_standin.install(monkeypatch)
    trainer = build_engines(trainer_process(grid, run, monkeypatch))
    one_step(trainer)
    one_step(trainer)
    llms = {id(e.llm): e for e in vllm_engine._GPU_ENGINES}
    assert len(llms) == len(vllm_engine._GPU_ENGINES)
    sleepers = [e for e in llms.values() if e.llm.sleep_mode]
    assert len(sleepers) == 1, [(e.role, e.llm.sleep_mode) for e in llms.values()]
    allocator = vllm_standin.CuMemAllocator.get_instance()
    # every allocation of the CuMem pool is the sleeper's: its weights (kept in host memory at
    # level 1, dropped at level 2), its KV cache and runtime buffers, and no workspace in use
    assert {d.tag for d in allocator.pointer_to_data.values()} == {"weights", "kv_cache", "runtime", "workspace"}
    spec = trainer.spec
    if spec.teacher and spec.teacher_engine.backend == "vllm":
        teacher = trainer.teacher.engine
        # asleep from the start; after each scoring (and, sampling off-policy, after each rollout)
        sleeps = 1 + 2 * (2 if spec.rollout.off_policy else 1)
        assert sleepers == [teacher] and teacher.llm.calls.count(("sleep", 1)) == sleeps
        if not spec.rollout.off_policy:  # the rollout engine: resident, outside the CuMem pool
            rollout = trainer.rollout.engine
            assert rollout is not teacher and not rollout.llm.sleep_mode and rollout.llm.worker.weights.ptr is None
            assert vllm_engine._GPU_ENGINES == [teacher, rollout]  # the sleeper first (the workspace rule)
        else:
            assert trainer.rollout.engine is teacher and len(llms) == 1
    else:  # RLVR: the rollout engine alone, level 2, weights pushed again after each sleep
        rollout = trainer.rollout.engine
        assert sleepers == [rollout] and rollout.llm.calls.count(("sleep", 2)) == 3
        assert rollout.llm.calls.count(("reload_weights",)) == 3  # its real weights at start-up, then each step
    assert all(e.asleep == {"weights", "kv_cache"} for e in sleepers)


def both_sleeping(grid, run: str):
    """Run `run`'s spec with its rollout engine in sleep mode too (the layout before issue 22)."""
    spec = grid.run_spec(run)
    vllm = spec.rollout.vllm.updated(sleep=True)
    return spec.updated(rollout=spec.rollout.updated(vllm=vllm))


def test_a_second_sleep_mode_engine_fails_to_load_as_in_vllm(grid, monkeypatch):
    """The stand-in's rule, as vLLM 0.32 applies it: with geopd's own check out of the way, the
    rollout engine's weights fail to load beside a sleeping teacher with vLLM's assertion."""
    vllm_standin.install(monkeypatch)
    monkeypatch.setattr(vllm_engine, "check_one_sleeper", lambda *args: None)
    trainer = trainer_process(grid, "opd-8b-t32b", monkeypatch, spec=both_sleeping(grid, "opd-8b-t32b"))
    with pytest.raises(AssertionError, match=vllm_standin.CUMEM_MESSAGE.replace(".", r"\.")):
        build_engines(trainer, check=False)


def test_geopd_refuses_a_second_sleep_mode_engine_before_vllm_would(grid, monkeypatch):
    vllm_standin.install(monkeypatch)
    trainer = trainer_process(grid, "opd-8b-t32b", monkeypatch, spec=both_sleeping(grid, "opd-8b-t32b"))
    with pytest.raises(UserError, match="one sleep-mode engine per process"):
        build_engines(trainer)  # the trainer's check, from the spec
    with pytest.raises(UserError, match="already has a sleep-mode vLLM engine"):
        build_engines(trainer, check=False)  # the engine's own, at start-up


def test_a_resident_engine_before_the_sleeping_one_would_run_on_an_unmapped_workspace(grid, monkeypatch):
    """vLLM's workspace manager is one per process: an engine built after the resident one makes
    it anew in its own CuMem pool, which its sleep unmaps. geopd builds the sleeper first, and
    refuses the other order."""
    vllm = vllm_standin.install(monkeypatch)
    model = root_model(grid, "opd-8b-t32b")
    resident = vllm.LLM(model=model, tokenizer=model)
    sleeper = vllm.LLM(model=model, tokenizer=model, enable_sleep_mode=True)
    sleeper.sleep(level=1)
    with pytest.raises(RuntimeError, match="illegal memory access.*workspace"):
        resident.generate([{"prompt_token_ids": [1, 2]}], vllm.SamplingParams(n=1))
    vllm_standin.install(monkeypatch)
    monkeypatch.setattr(vllm_engine, "_world", lambda: (1, 0))
    vllm_engine.Engine(model, {"sleep": False}, role="rollout")
    with pytest.raises(UserError, match="must be built before the resident one"):
        vllm_engine.Engine(model, {"sleep": True}, role="teacher")


@pytest.mark.parametrize("vllm, expected", [
    ({"sleep": True}, r"runs\.opd-8b-t32b: rollout\.vllm\.sleep and teacher_engine\.vllm\.sleep are both true; "
                      r"vLLM 0\.32 allows one sleep-mode engine per process"),
    # vLLM 0.32 takes one tensor-parallel size per process; main refused it only at the trainer's start
    ({"tensor_parallel": 4}, r"runs\.opd-8b-t32b: rollout\.vllm\.tensor_parallel=4 but "
                             r"teacher_engine\.vllm\.tensor_parallel=2; .* one tensor-parallel size per process"),
], ids=["both-sleeping", "tensor-parallel-mismatch"])
def test_grid_plan_and_workflow_refuse_engines_one_process_cannot_hold(repo, tmp_path, vllm, expected):
    import copy
    import re
    import subprocess
    import sys

    import yaml

    config = copy.deepcopy(PAPER)
    config["method_defaults"]["opd"]["rollout"]["vllm"].update(vllm)
    with pytest.raises(UserError, match=expected):
        Grid(config, ["paper"])
    path = tmp_path / "engines.yaml"
    path.write_text(yaml.safe_dump({"method_defaults": {"opd": {"rollout": {"vllm": vllm}}}}))
    for cmd in ([sys.executable, "-m", "geopd.cli", "plan", "--configfile", "config/paper.yaml", str(path)],
                [sys.executable, "-m", "snakemake", "-n", "--configfile", "config/paper.yaml", str(path),
                 "-d", str(tmp_path / "work")]):
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and re.search(expected, out) and "Traceback" not in out, out[-3000:]
