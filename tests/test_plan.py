"""`geopd plan`'s memory and time model (geopd.costmodel): known values, the paper config
passing, undersized resources failing with the rule and run named, shapes from the hub
mirror, and the memory model against peaks measured on the miniature trainer."""
import copy
import json
import re
import subprocess
import sys

import pytest
import yaml

from geopd import costmodel as cm
from geopd.config import read_yaml
from geopd.errors import UserError
from geopd.grid import Grid
from geopd.plan import Shapes, build_jobs, estimate_jobs, evaluation_spec, problems
from geopd.spec import Benchmark, Engine
from geopd.train.batching import rollout_split

PAPER = "config/paper.yaml"


@pytest.fixture(scope="module")
def paper(repo) -> dict:
    return read_yaml(repo / PAPER)


def plan_problems(config: dict) -> list[str]:
    grid = Grid(config, ["test"])
    jobs = build_jobs(grid)
    return problems(jobs, estimate_jobs(grid, jobs))


def changed(config: dict, *path_and_value) -> dict:
    """A deep copy of `config` with config[path...] = value."""
    out = copy.deepcopy(config)
    *path, key, value = path_and_value
    node = out
    for part in path:
        node = node.setdefault(part, {})
    node[key] = value
    return out


def run_plan(repo, configfile, *args):
    return subprocess.run([sys.executable, "-m", "geopd.cli", "plan", "--configfile", str(configfile), *args],
                          cwd=repo, capture_output=True, text=True, timeout=120)


# ---- known values ------------------------------------------------------------------------

@pytest.mark.parametrize("model, billions, active", [
    # the Qwen3 model cards: "Number of Parameters: 4.0B / 8.2B / 14.8B / 32.8B", and
    # Qwen3-30B-A3B "30.5B in total and 3.3B activated"
    ("qwen3-4b", 4.0, None), ("qwen3-8b", 8.2, None), ("qwen3-14b", 14.8, None),
    ("qwen3-32b", 32.8, None), ("qwen3-30b-a3b", 30.5, 3.3),
])
def test_shapes_give_the_published_parameter_counts(paper, model, billions, active):
    shape = Shapes(Grid(paper)).model(model)
    assert shape.params() / 1e9 == pytest.approx(billions, abs=0.05)
    if active is not None:  # active: attention + 8 of 128 experts per layer + embeddings
        active_params = shape.layers * (shape.attention_params() + shape.mlp_params(active=True)) + shape.root_params()
        assert active_params / 1e9 == pytest.approx(active, abs=0.06)


def test_memory_terms_known_values(paper):
    q8 = Shapes(Grid(paper)).model("qwen3-8b")
    # KV cache: 2 (k, v) x 36 layers x 8 KV heads x 128 x 2 bytes; split over tp, replicated past 8
    assert q8.kv_bytes_per_token(2) == 147456
    assert q8.kv_bytes_per_token(2, tp=4) == 147456 / 4
    assert q8.kv_bytes_per_token(2, tp=16) == 147456 / 8
    state = cm.trainer_state(q8, world=16)
    assert state.total == 16 * q8.params() / 16  # fp32 master + gradients + two Adam moments
    # one layer's saved activations per token in bf16, 1000 columns: fp32 norm inputs 4(2h + q + kv)
    # 53,248 + bf16 normalised values b(4h + q + kv) 43,008 + rsqrt 4(2 + 32 + 8) 168 + SDPA's q,
    # repeated k/v and output 4bq 32,768 + log-sum-exp 128 + additive mask 2,000 + SwiGLU 4bi 98,304
    assert q8.layer_activation_bytes(2, 1000) == 229624
    # chunked log-probs: 4096 x vocab bf16 logits + 3 fp32 blocks of 2**24 (2 + the upcast), then
    # lm_head's fp32 gradient, one chunk's bf16 product and its fp32 cast (backward)
    engine = Engine(param_dtype="bfloat16", logprob_chunk_tokens=4096)
    assert cm.head_chunk_rows(q8, 32768, engine.logprob_chunk_tokens) == 4096
    vh = 151936 * 4096
    step = cm.train_step(q8, engine, 32, 8192, width=8192)
    assert step.terms["log-probs through lm_head (chunks)"] == 4096 * 151936 * 2 + 3 * 4 * 2**24 + 10 * vh
    assert step.terms["unsharded weights: root + 2 layers"] == 2 * (q8.root_params() + 2 * q8.layer_params())
    # with checkpointing the paper's 32,768-token micro-batch peaks in a recomputed layer's backward
    ac = cm.train_step(q8, Engine(param_dtype="bfloat16", activation_checkpointing=True, logprob_chunk_tokens=4096),
                       32, 32768, width=18432)
    assert ac.terms["checkpointed layer inputs"] == 36 * 32768 * 4096 * 2
    assert ac.terms["one layer recomputed + its backward"] == 32768 * (q8.layer_activation_bytes(2, 18432)
                                                                       + 2 * 2 * 12288 + 2 * 2 * 4096)
    # a micro-batch that fits no chunk: never more rows than the scored positions
    assert cm.head_chunk_rows(q8, 100, 4096) == 100
    # no checkpointing: every layer's activations; no FSDP2 on one fp32 process
    plain = cm.train_step(q8, Engine(), 1, 1000, width=1000)
    assert plain.terms["activations (every layer)"] == 36 * 1000 * q8.layer_activation_bytes(4, 1000)
    assert not any("unsharded" in k for k in plain.terms)


def test_updates_per_rollout_step_as_slime():
    assert rollout_split(300 * 8, 64) == (37, 32)
    assert rollout_split(1024 * 8, 512) == (16, 0)


def test_evaluation_takes_the_smallest_tensor_parallel_that_fits(paper):
    shapes = Shapes(Grid(paper))
    bench = Benchmark(kind="math", data="aime24", samples=8, temperature=1.0, max_new_tokens=32768)
    assert cm.eval_parallelism(shapes.model("qwen3-8b"), bench, 8, 1, 80e9, 34816) == (1, 8)
    assert cm.eval_parallelism(shapes.model("qwen3-32b"), bench, 8, 1, 80e9, 34816) == (2, 4)
    assert cm.eval_parallelism(shapes.model("qwen3-32b"), bench.updated(data_parallel=1), 8, 1, 80e9, 34816) == (2, 1)


@pytest.mark.parametrize("backend", ["vllm", "auto"])
def test_evaluate_rules_run_the_parallelism_the_plan_checked(paper, backend):
    # "auto" resolves to vLLM on a GPU node, so its job must get the plan's tensor x data
    # parallel too (with tp = dp = 1 on 2 GPUs, evaluate.run refuses the job at run time).
    grid = Grid(changed(paper, "benchmarks", "aime24", "backend", backend))
    spec = evaluation_spec(grid, "aime24", run="opd-8b-t32b")
    estimates = estimate_jobs(grid, build_jobs(grid))
    planned = [e for job_id, e in estimates.items()
               if job_id.startswith("evaluate") and "opd-8b-t32b" in job_id and e.info.get("bench") == "aime24"]
    assert planned and {(e.info["tp"], e.info["dp"]) for e in planned} == {(spec.tensor_parallel, spec.data_parallel)}
    assert spec.tensor_parallel * spec.data_parallel == grid.resources("evaluate")["gpus"]


# ---- the paper config --------------------------------------------------------------------

def test_paper_plan_passes_with_memory_time_and_updates(repo):
    proc = run_plan(repo, repo / PAPER)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    grid = Grid.from_file(repo / PAPER)
    lines = [re.sub(r" \([a-z ]+\)", "", line)  # the peak's phase, e.g. "(teacher scoring)"
             for line in out.split("training runs")[1].split("\n\n")[0].splitlines()[1:]
             if line.startswith("  ") and not line.startswith("  (")]
    rows = {line.split()[0]: line.split() for line in lines}
    assert set(rows) == set(grid.runs)
    for name, row in rows.items():
        peak, limit = map(float, row[3].split("/"))
        assert 0 < peak <= limit, name
        assert float(row[4]) > 0 and float(row[5]) >= 0.5 * float(row[4]), name  # estimated vs requested hours
    assert rows["opd-8b-t32b"][6:] == ["37+", str(299 * 37)]
    assert rows["rlvr-8b"][6:] == ["16", str(1023 * 16)]
    assert rows["sft-8b"][6:] == ["1", "5375"]
    for rule in ("evaluate", "evaluate_model", "diagnose", "similarity"):
        line = next(l for l in out.splitlines() if l.startswith(f"  {rule} "))
        assert "/" in line.split()[-1] or "GPU" in line or "node" in line, line


def test_plan_needs_no_torch(repo):
    code = ("import sys; from geopd.cli import main; rc = main(['plan', '--configfile', 'config/paper.yaml']); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_undersized_gpu_memory_fails_naming_rule_and_run(repo, paper, tmp_path):
    config = changed(paper, "runs", "rlvr-8b", "resources", "gpu_memory_gb", 24)
    path = tmp_path / "small-gpus.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = run_plan(repo, path)
    assert proc.returncode == 2
    assert f"problem(s) in {path}" in proc.stderr
    lines = [l.strip() for l in proc.stderr.splitlines()[1:]]
    assert lines and all(l.startswith("rule train, rlvr-8b: ") for l in lines), proc.stderr  # nothing else
    # a "24 GB" GPU as CUDA reports it: 24 x 1019.5 MiB (Assumptions.reported_mib_per_gb) = 23.9 GiB
    assert any("GiB per GPU" in l and "but has 23.9 GiB" in l for l in lines), proc.stderr


def test_too_little_time_fails_naming_rule_and_run(paper):
    found = plan_problems(changed(paper, "runs", "rlvr-8b", "resources", "runtime", 600))
    assert [p for p in found if p.startswith("rule train, rlvr-8b:")] and all("rlvr-8b" not in p or "requests 10.0 h" in p
                                                                               for p in found)
    assert len(found) == 1


def test_teacher_that_cannot_fit_its_engine_fails(paper):
    config = changed(paper, "method_defaults", "opd", "teacher_engine", "vllm", "tensor_parallel", 1)
    # the rollout engine too: the two engines of a process share one tensor_parallel (refused otherwise)
    found = plan_problems(changed(config, "method_defaults", "opd", "rollout", "vllm", "tensor_parallel", 1))
    teacher = [p for p in found if "teacher engine: gpu_memory_utilization 0.45 " in p]
    assert teacher and "opd-8b-t32b" in teacher[0] and "opd-4b-t8b" not in teacher[0]  # 8B teacher fits at tp 1


def test_evaluation_on_one_gpu_cannot_hold_the_32b_teacher(paper):
    found = plan_problems(changed(paper, "resources", "evaluate", "gpus", 1))
    assert any(p.startswith("rule evaluate_model, qwen3-32b on aime24, qwen3-32b on lcb-v5: vLLM engine") for p in found)
    assert not any(p.startswith("rule evaluate,") for p in found)  # the 4-14B students fit on one GPU


def test_diagnostics_workers_overflowing_node_memory_fail(paper):
    found = plan_problems(changed(paper, "resources", "diagnose", "cpus", 64))
    assert any(p.startswith("rule diagnose, ") and "sft-14b" in p and "per node" in p for p in found)


def test_gpu_job_without_gpu_memory_fails(paper):
    config = changed(paper, "resources", "default", "gpu_memory_gb", None)
    del config["resources"]["default"]["gpu_memory_gb"]
    found = plan_problems(config)
    assert any("rule train" in p and "gpu_memory_gb is not set" in p for p in found)


# ---- shapes from the hub mirror -------------------------------------------------------------

QWEN3_8B_CONFIG = {  # the keys of huggingface.co/Qwen/Qwen3-8B/blob/main/config.json the model reads
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 4096, "num_hidden_layers": 36,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 12288,
    "vocab_size": 151936, "tie_word_embeddings": False}


def mirror_with(tmp_path, hub_id: str, config: dict):
    d = tmp_path / "mirror" / "models" / hub_id
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(config))
    return tmp_path / "mirror"


def test_shape_read_from_the_hub_mirror(paper, tmp_path):
    config = changed(paper, "hub_mirror", str(mirror_with(tmp_path, "Qwen/Qwen3-8B", QWEN3_8B_CONFIG)))
    del config["models"]["qwen3-8b"]["shape"]  # the mirror's config.json alone is enough
    shapes = Shapes(Grid(config))
    assert shapes.model("qwen3-8b") == Shapes(Grid(paper)).model("qwen3-8b-base")


def test_shape_disagreeing_with_the_mirror_is_an_error(paper, tmp_path):
    mirror = mirror_with(tmp_path, "Qwen/Qwen3-8B", {**QWEN3_8B_CONFIG, "num_hidden_layers": 40})
    shapes = Shapes(Grid(changed(paper, "hub_mirror", str(mirror))))
    with pytest.raises(UserError, match=r"models\.qwen3-8b\.shape disagrees with .*config\.json: layers: 36 vs 40"):
        shapes.model("qwen3-8b")


def test_shape_null_plans_with_the_mirror_alone(paper, tmp_path):
    """An overlay unsets a model's shape (`shape: null`, as the fixture overlay does for its tiny
    models): the schema takes it, and the planner reads the mirror's config.json alone."""
    from geopd.grid import merged_config

    mirror = mirror_with(tmp_path, "Qwen/Qwen3-8B", {**QWEN3_8B_CONFIG, "num_hidden_layers": 2})
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"hub_mirror": str(mirror), "models": {"qwen3-8b": {"shape": None}}}))
    grid = Grid.from_files([PAPER, overlay])
    assert Shapes(grid).model("qwen3-8b").layers == 2
    assert merged_config([PAPER, overlay])["models"]["qwen3-8b"]["shape"] is None


def test_moe_shape_from_a_config_saved_by_transformers_5(paper, tmp_path):
    """transformers >= 5 writes Qwen3-MoE's expert count as num_local_experts (the hub's files say
    num_experts): both give the same shape."""
    hub = {"model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": 48, "num_attention_heads": 32,
           "num_key_value_heads": 4, "head_dim": 128, "intermediate_size": 6144, "vocab_size": 151936,
           "num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768}
    saved = {k: v for k, v in hub.items() if k != "num_experts"} | {"num_local_experts": 128}
    assert cm.Shape.from_hf_config(saved) == cm.Shape.from_hf_config(hub) == Shapes(Grid(paper)).model("qwen3-30b-a3b")


def test_fixture_overlay_plans(repo, paper_mirror, tmp_path):
    """`geopd plan` passes on the paper config with the fixture overlay, shapes from the fixture."""
    overlay = read_yaml(repo / "tests/configs/paper-fixture.yaml")
    overlay["hub_mirror"] = str(paper_mirror)
    path = tmp_path / "paper-fixture.yaml"
    path.write_text(yaml.safe_dump(overlay))
    proc = subprocess.run([sys.executable, "-m", "geopd.cli", "plan", "--configfile", PAPER, str(path)],
                          cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "similarity" in proc.stdout and "qwen3-8b-base attention" in proc.stdout


def test_model_without_shape_or_mirror_fails_planning_naming_it(paper):
    config = copy.deepcopy(paper)
    del config["models"]["qwen3-32b"]["shape"]
    found = plan_problems(config)
    assert any(p.startswith("rule train, opd-8b-t32b") and "models.qwen3-32b: no architecture" in p for p in found)


# ---- the memory model against the trainer ---------------------------------------------------

@pytest.fixture(scope="module")
def measured(repo):
    proc = subprocess.run([sys.executable, "scripts/bench_memory_model.py", "--json", "--cases", *MEASURED],
                          cwd=repo, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r["case"]: r for r in json.loads(proc.stdout)}


MEASURED = ["vocab", "ac", "chunked", "bf16", "bf16-ac"]


@pytest.mark.slow
@pytest.mark.parametrize("case", MEASURED)
def test_memory_model_matches_measured_peaks(measured, case):
    """The trainer's memory model (costmodel.train_step) against exact tensor accounting of one
    SFT step of the Trainer (scripts/bench_memory_model.py): a large vocabulary with lm_head in
    default chunks, per-layer checkpointing, small chunks under a token budget, bf16 FSDP2 mixed
    precision with and without checkpointing. An upper bound, at most 25% above the measured
    peak, never more than 3% below it: the gradients and FSDP2's unsharded buffers are each
    counted at their own worst moment, before the step's peak has freed some of them."""
    ratio = measured[case]["ratio"]
    assert 0.97 <= ratio <= 1.25, measured[case]
