"""`geopd plan`'s memory and time model (geopd.costmodel): known values, the paper config
passing, undersized resources failing with the rule and run named, shapes from the hub
mirror, and the memory model against peaks measured on the miniature trainer."""
import copy
import json
import subprocess
import sys

import pytest
import yaml

from geopd import costmodel as cm
from geopd.config import read_yaml
from geopd.errors import UserError
from geopd.grid import Grid
from geopd.plan import Shapes, build_jobs, estimate_jobs, problems

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
    # chunked log-probs: chunk x vocab x (bf16 logits + fp32 upcast + fp32 gradient), nothing kept
    engine = cm.Engine(param_dtype="bfloat16", activation_checkpointing=True, logprob_chunk_tokens=4096)
    assert cm.logits_bytes(q8, engine, 32768) == (4096 * 151936 * 10, 0.0)
    # today's trainer: the whole micro-batch's fp32 logits x 3 at the peak
    assert cm.logits_bytes(q8, cm.Engine(), 1000)[0] == 12 * 1000 * 151936


def test_updates_per_rollout_step_as_slime():
    assert cm.updates_per_rollout_step({"prompts_per_step": 300, "samples": 8, "global_batch_size": 64}) == (37, 32)
    assert cm.updates_per_rollout_step({"prompts_per_step": 1024, "samples": 8, "global_batch_size": 512}) == (16, 0)


def test_evaluation_takes_the_smallest_tensor_parallel_that_fits(paper):
    shapes = Shapes(Grid(paper))
    bench = {"max_new_tokens": 32768}
    assert cm.eval_parallelism(shapes.model("qwen3-8b"), bench, 8, 1, 80e9, 34816) == (1, 8)
    assert cm.eval_parallelism(shapes.model("qwen3-32b"), bench, 8, 1, 80e9, 34816) == (2, 4)
    assert cm.eval_parallelism(shapes.model("qwen3-32b"), {**bench, "data_parallel": 1}, 8, 1, 80e9, 34816) == (2, 1)


# ---- the paper config --------------------------------------------------------------------

def test_paper_plan_passes_with_memory_time_and_updates(repo):
    proc = run_plan(repo, repo / PAPER)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    grid = Grid.from_file(repo / PAPER)
    rows = {line.split()[0]: line.split() for line in out.split("training runs")[1].split("\n\n")[0].splitlines()[1:]
            if line.startswith("  ") and not line.startswith("  (")}
    assert set(rows) == set(grid.runs)
    for name, row in rows.items():
        peak, limit = map(float, row[3].split("/"))
        assert 0 < peak <= limit, name
        assert float(row[5]) > 0 and float(row[6]) >= 0.5 * float(row[5]), name  # estimated vs requested hours
    assert rows["opd-8b-t32b"][7:] == ["37+", str(299 * 37)]
    assert rows["rlvr-8b"][7:] == ["16", str(1023 * 16)]
    assert rows["sft-8b"][7:] == ["1", "5375"]
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
    assert any("GiB per GPU" in l and "but has 22.4 GiB" in l for l in lines), proc.stderr


def test_too_little_time_fails_naming_rule_and_run(paper):
    found = plan_problems(changed(paper, "runs", "rlvr-8b", "resources", "runtime", 600))
    assert [p for p in found if p.startswith("rule train, rlvr-8b:")] and all("rlvr-8b" not in p or "requests 10.0 h" in p
                                                                               for p in found)
    assert len(found) == 1


def test_teacher_that_cannot_fit_its_engine_fails(paper):
    found = plan_problems(changed(paper, "method_defaults", "opd", "teacher_engine", "vllm", "tensor_parallel", 1))
    teacher = [p for p in found if "teacher engine: gpu_memory_utilization 0.35" in p]
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
    proc = subprocess.run([sys.executable, "scripts/bench_memory_model.py", "--json", "--cases",
                           "vocab", "ac", "bf16", "chunked"], cwd=repo, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r["case"]: r for r in json.loads(proc.stdout)}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["vocab", "ac", "bf16"])
def test_memory_model_matches_measured_peaks(measured, case):
    """Predicted tensor peak within -10% / +20% of the measured one (exact tensor accounting of
    one SFT step: a large vocabulary, per-layer checkpointing, bf16 FSDP2 mixed precision).
    The FSDP2 buffer terms are upper bounds (each at its own worst moment), hence the +20%."""
    ratio = measured[case]["ratio"]
    assert 0.9 <= ratio <= 1.2, measured[case]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="today's trainer materialises the whole micro-batch's logits; "
                                       "chunked log-probs through lm_head are issue 15 item 1")
def test_chunked_log_probs_stay_under_the_model(measured):
    assert measured["chunked"]["ratio"] >= 0.9, measured["chunked"]
