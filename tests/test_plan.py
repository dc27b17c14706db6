"""`geopd plan`'s memory and time model (geopd.costmodel): known values, the paper config
passing, undersized resources failing with the rule and run named, shapes from the hub
mirror, and the memory model against peaks measured on the miniature trainer."""
import copy
import json
import math
import re
import subprocess
import sys

import pytest
import yaml

from geopd import costmodel as cm
from geopd.config import read_yaml
from geopd.errors import UserError
from geopd.grid import Grid
from geopd.plan import (Shapes, Sizing, benchmark_problems, build_jobs, estimate_jobs, evaluation_spec, problems,
                        suggest_evaluate, suggest_train)
from geopd.spec import VLLM, Benchmark, Engine
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
    """`geopd plan --configfile CONFIGFILE [more config files] [options]`."""
    files = [a for a in args if not a.startswith("-") and a.endswith(".yaml")]
    options = [a for a in args if a not in files]
    return subprocess.run([sys.executable, "-m", "geopd.cli", "plan", "--configfile", str(configfile), *files,
                           *options], cwd=repo, capture_output=True, text=True, timeout=120)


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

def training_rows(out: str) -> dict[str, list[str]]:
    """The plan's table of training runs: run -> its columns."""
    lines = [re.sub(r" \([a-z ]+\)", "", line)  # the peak's phase, e.g. "(teacher scoring)"
             for line in out.split("training runs")[1].split("\n\n")[0].splitlines()[1:]
             if line.startswith("  ") and not line.startswith("  (")]
    return {line.split()[0]: line.split() for line in lines}


OPD_FAMILY = ("opd", "teacher-scale", "student-scale", "code", "moe-teacher", "seed", "off-policy", "alpha-mix",
              "effopd")


@pytest.mark.parametrize("overlay, opd, rlvr", [
    # slime's --num-rollout reading: 8 (64 / 8) and 64 (512 / 8) prompts a step, one update each
    ((), ["1", "299"], ["1", "1023"]),
    # the literal reading: 300 x 8 samples in updates of 64, 1024 x 8 in updates of 512
    (("config/paper-literal.yaml",), ["37+", str(299 * 37)], ["16", str(1023 * 16)]),
])
def test_paper_plan_passes_with_memory_time_and_updates(repo, overlay, opd, rlvr):
    proc = run_plan(repo, repo / PAPER, *[str(repo / o) for o in overlay])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    grid = Grid.from_files([repo / PAPER, *[repo / o for o in overlay]])
    rows = training_rows(out)
    assert set(rows) == set(grid.runs)
    for name, row in rows.items():
        peak, limit = map(float, row[3].split("/"))
        assert 0 < peak <= limit, name
        assert float(row[4]) > 0 and float(row[5]) >= 0.5 * float(row[4]), name  # estimated vs requested hours
    full = [n for n, r in grid.runs.items() if r.family in OPD_FAMILY]
    assert len(full) == 16 and all(rows[n][6:] == opd for n in full)  # 299 steps each
    per_step = int(opd[0].rstrip("+"))
    for name in [n for n, r in grid.runs.items() if r.method != "sft" and r.family not in OPD_FAMILY]:
        run = grid.runs[name]  # the shorter ones: token-sparse (255 steps), rank16-opd (from step 63)
        expect = rlvr if run.method == "rlvr" else [opd[0], str((run.steps - run.start_step) * per_step)]
        assert rows[name][6:] == expect, name
    assert rows["rlvr-8b"][6:] == rlvr
    assert rows["sft-8b"][6:] == ["1", "5375"]
    for rule in ("evaluate", "evaluate_model", "diagnose", "similarity"):
        line = next(l for l in out.splitlines() if l.startswith(f"  {rule} "))
        assert "/" in line.split()[-1] or "GPU" in line or "node" in line, line


# ---- the engine layout and the memory model as vLLM and PyTorch count (issue 22) ------------

def test_gpu_memory_is_what_cuda_reports_and_vllm_takes_its_share_of_it():
    # nvidia-smi: 81,559 MiB for an H100 80GB HBM3 (what torch.cuda.mem_get_info reports)
    assert cm.gpu_memory_bytes({"gpu_memory_gb": 80}) == 81559 * 2**20
    q8 = cm.Shape.from_entry({"arch": "qwen3", "hidden": 4096, "layers": 36, "heads": 32, "kv_heads": 8,
                              "head_dim": 128, "intermediate": 12288, "vocab": 151936})
    engine = cm._vllm(q8, VLLM(tensor_parallel=2, gpu_memory_utilization=0.3), cm.gpu_memory_bytes({"gpu_memory_gb": 80}))
    assert engine.reserved == pytest.approx(0.3 * 81559 * 2**20)  # not 0.3 x 80e9 bytes
    assert cm._vllm(q8, VLLM(), 80 * 2**30).utilization == 0.92  # vLLM 0.32's default, where none is set


def test_pinned_sleep_copies_are_rounded_per_allocation_to_powers_of_two(paper):
    q32 = Shapes(Grid(paper)).model("qwen3-32b")
    tensors = cm.engine_weight_tensors(q32, 2, 2)
    # every weight in bf16, split over tp 2 but the norms, which every rank holds whole
    norms = q32.layers * (2 * q32.hidden + 2 * q32.head_dim) + q32.hidden
    assert sum(tensors) == (q32.params() - norms) * 2 // 2 + norms * 2
    # one decoder layer at tp 2: qkv_proj 50 MiB -> 64, o_proj 40 -> 64, gate_up_proj 250 -> 256,
    # down_proj 125 -> 128 MiB pinned; embedding and lm_head 741.75 MiB each -> 1 GiB
    layer = tensors[:6]
    assert [t / 2**20 for t in layer[:2]] == [50, 40] and [t / 2**20 for t in layer[4:]] == [250, 125]
    pinned = cm.pinned_sleep_bytes(q32, 2, 2)
    assert pinned == 64 * 512 * 2**20 + 2 * 2**30 + 2 * 2**20  # + the norms in 2 MiB segments
    assert pinned / (q32.params()) == pytest.approx(1.114, abs=0.001)  # 34.0 GiB for 30.5 GiB of weights
    assert cm.pow2_ceil(487 * 10**6) == 2**29 and cm.pow2_ceil(2**20) == 2**20


def _paper_estimates(paper) -> dict:
    grid = Grid(paper)
    jobs = build_jobs(grid)
    estimates = estimate_jobs(grid, jobs)
    return {e.subject: e for j, e in estimates.items() if jobs[j].rule == "train"}


def test_paper_runs_have_one_sleep_mode_engine_and_shares_sized_by_the_plan(paper):
    """The layout of README "vLLM": the teacher sleeps, the rollout engine is resident, RLVR's
    alone sleeps at level 2; each share in config/paper.yaml is at most the plan's largest that
    fits every phase, and within 0.1 of it (RLVR's engine was given 0.3 with 0.94 fitting)."""
    grid = Grid(paper)
    for name, est in _paper_estimates(paper).items():
        run = grid.runs[name]
        layout = est.info.get("engine layout (per trainer process)", "")
        if run.method == "sft":
            assert not layout
            continue
        assert layout.count(", sleep mode") == 1, (name, layout)
        r, te = run.settings.rollout, run.settings.teacher_engine
        blocks = {"rollout": r.vllm, "teacher": te.vllm}
        for engine in ("rollout", "teacher"):
            fits = est.info.get(f"{engine}_utilization_that_fits")
            if fits is None:
                continue
            share = blocks[engine].gpu_memory_utilization
            assert fits - 0.1 <= share <= fits, (name, engine, share, fits)
        if run.teacher and not r.off_policy:
            assert "teacher engine tp 2 at 0.45, sleep mode, level 1" in layout and "rollout engine tp 2 at 0.35, resident" in layout
            assert "rollout engine (resident)" in est.phases["train"].terms
            assert "teacher engine (asleep)" in est.phases["generation"].terms
        elif run.method == "rlvr":
            assert "sleep mode, level 2" in layout and "rollout engine (asleep)" in est.phases["train"].terms
        else:  # off-policy: one engine, the teacher's
            assert layout.count("engine tp") == 1 and "teacher engine tp 2 at 0.8, sleep mode, level 1" in layout
        host = est.info["host memory (per node)"].terms
        assert not any(k.startswith("rollout engine weights") for k in host)  # only a level-1 sleeper parks weights
    est = _paper_estimates(paper)["opd-14b-t32b"]
    host = est.info["host memory (per node)"]
    assert host.terms["teacher engine weights, level-1 sleep (pinned, rounded to 2^k, x 8 GPUs)"] / cm.GiB == pytest.approx(272.0, abs=0.1)
    assert host.total < 600 * cm.GiB < 900000 * 1e6  # 505 GiB of the node's 900 GB (838 GiB) while it saves


def test_readme_states_the_engine_shares_the_config_sets(repo, paper):
    """One figure per engine share, the config's: README's layout table quotes them."""
    md = (repo / "README.md").read_text()
    md = md[md.index("**One sleep-mode engine per process**"):md.index("Why this layout")]
    opd, rlvr = paper["method_defaults"]["opd"], paper["method_defaults"]["rlvr"]
    off = paper["runs"]["opd-offpolicy"]["teacher_engine"]["vllm"]
    shares = {"teacher": opd["teacher_engine"]["vllm"]["gpu_memory_utilization"],
              "rollout": opd["rollout"]["vllm"]["gpu_memory_utilization"],
              "rlvr": rlvr["rollout"]["vllm"]["gpu_memory_utilization"], "off-policy": off["gpu_memory_utilization"],
              "evaluation": paper["benchmarks"]["aime24"]["gpu_memory_utilization"]}
    assert f"| teacher {shares['teacher']:g} while it scores, rollout {shares['rollout']:g} always |" in md
    assert f"| {shares['rlvr']:g} while it generates |" in md and f"| {shares['off-policy']:g} while it works |" in md
    assert f"| - | {shares['evaluation']:g} |" in md
    found = sorted({float(x) for x in re.findall(r"(?<![\d.])0\.\d+(?![\d.])", md.split("These shares")[0].replace("vLLM 0.32", "vLLM"))})
    assert found == sorted(set(shares.values())), found  # no other share is stated


def test_the_early_signal_comes_before_the_longest_step_and_a_save(paper):
    for name, est in _paper_estimates(paper).items():
        lead = est.info["signal_lead_s"]
        assert lead == cm.signal_lead_s(est, est.requested_hours * 3600)
        assert est.info["longest_step_s"] + est.info["state_save_s"] < lead <= est.requested_hours * 1800, name


@pytest.mark.parametrize("resources, expected", [
    ({"gpus": 1, "nodes": 1}, r"runs\.opd-8b-t32b\.teacher_engine\.vllm tensor_parallel 2 spans more than the 1 GPU\(s\) of a node"),
    ({"gpus": 0}, r"runs\.sft-8b: device cuda, but resources train gpus is 0"),
    ({"gpus": 6, "nodes": 1}, None),  # tp 2 fits a node of 6 and divides its 6 GPUs
    ({"gpus": 3, "nodes": 1}, r"runs\.opd-8b-t32b\.teacher_engine\.vllm tensor_parallel 2 does not divide the job's 3 GPUs"),
])
def test_degenerate_training_resources_are_refused_by_plan_and_workflow(repo, paper, tmp_path, resources, expected):
    """The ZeroDivisionError `geopd plan` died with on 1 GPU, and the rest of the family: a clear
    refusal in the plan and in `snakemake -n`, never a traceback."""
    config = changed(paper, "resources", "train", {**paper["resources"]["train"], **resources})
    config["train_resources"] = None  # the runs' own node counts would hide the class's
    for run in config["runs"].values():
        run.pop("resources", None)
    if expected is None:
        Grid(config, ["test"])
        assert not [p for p in plan_problems(config) if "tensor_parallel" in p or "ZeroDivision" in p]
        return
    with pytest.raises(UserError, match=expected):
        Grid(config, ["test"])
    path = tmp_path / "degenerate.yaml"
    path.write_text(yaml.safe_dump({"resources": {"train": resources}, "train_resources": None, "runs": {
        n: {"resources": {}} for n in config["runs"]}}))
    for cmd in ([sys.executable, "-m", "geopd.cli", "plan", "--configfile", PAPER, str(path)],
                [sys.executable, "-m", "snakemake", "-n", "--configfile", PAPER, str(path), "-d", str(tmp_path)]):
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and re.search(expected, out) and "Traceback" not in out, out[-3000:]


@pytest.mark.parametrize("bench, expected", [
    ({"tensor_parallel": 4}, r"benchmarks\.aime24\.tensor_parallel 4 spans more than the 2 GPU\(s\) of an evaluate job's node"),
    ({"tensor_parallel": 1, "data_parallel": 4}, r"benchmarks\.aime24: tensor_parallel 1 x data_parallel 4 engines need 4 GPUs, but an evaluate job has 2"),
])
def test_evaluations_with_more_engines_than_gpus_are_refused(paper, bench, expected):
    config = changed(paper, "benchmarks", "aime24", {**paper["benchmarks"]["aime24"], **bench})
    with pytest.raises(UserError, match=expected):
        Grid(config, ["test"])


def test_estimate_train_places_engines_before_dividing_by_them(paper):
    """The cost model on its own (no grid check in front): a refusal, not a ZeroDivisionError."""
    grid = Grid(paper)
    shapes = Shapes(grid)
    run = grid.runs["opd-8b-t32b"]
    est = cm.estimate_train(run, shapes.run(run.name), shapes.model(run.teacher),
                            {**grid.resources("train", run.name), "gpus": 1, "nodes": 1}, device="cuda")
    assert est.problems and all("spans more than the 1 GPU(s) of a node" in p for p in est.problems)


@pytest.mark.parametrize("files", [(PAPER,), (PAPER, "config/paper-literal.yaml")])
def test_paper_resources_are_the_suggested_ones(repo, files):
    """config/paper.yaml's train_resources and evaluate runtime (and the literal overlay's) are
    what `geopd plan --suggest-resources` prints: rerun it after a change to a run or the cost
    model and paste its block."""
    grid = Grid.from_files([repo / f for f in files])
    suggested = {s.run: s for s in suggest_train(grid)}
    assert set(suggested) == set(grid.runs)
    stale = [f"{name}: config {res['nodes']} nodes x {res['runtime']} min, suggested {s.nodes} x {s.runtime}"
             for name, s in suggested.items()
             if ((res := grid.resources("train", name))["nodes"], res["runtime"]) != (s.nodes, s.runtime)]
    jobs = build_jobs(grid)
    runtime, _ = suggest_evaluate(grid, jobs, estimate_jobs(grid, jobs))
    if grid.resources("evaluate")["runtime"] != runtime:
        stale.append(f"resources.evaluate.runtime {grid.resources('evaluate')['runtime']}, suggested {runtime}")
    assert not stale, (f"rerun `geopd plan --configfile {' '.join(files)} --suggest-resources`:\n  "
                       + "\n  ".join(stale))
    # requested GPU-hours follow the estimate: the margin and whole hours, nothing more
    estimates = estimate_jobs(grid, jobs)
    train = [(jobs[j], e) for j, e in estimates.items() if jobs[j].rule == "train"]
    for job, e in train:
        capped = job.resources["runtime"] == job.resources["max_runtime"]
        assert capped or e.hours * 1.25 <= job.hours < e.hours * 1.25 + 1, job.id


def test_suggested_nodes_are_the_fewest_that_fit(paper):
    grid = Grid(paper)
    by_run = {s.run: s for s in suggest_train(grid)}
    # a 32B teacher beside an 8B student needs the trainer's state sharded over 2 nodes; a 4B
    # student beside its teacher fits on one; SFT-8B needs 2 nodes to stay within 72 h x 1.25
    assert (by_run["opd-8b-t32b"].nodes, by_run["opd-4b-t8b"].nodes, by_run["sft-8b"].nodes) == (2, 1, 2)
    assert by_run["opd-8b-t32b"].runtime == 60 * math.ceil(by_run["opd-8b-t32b"].est_hours * 1.25)
    # a longer limit lets SFT-8B run on one node; a wider margin asks for more time, not nodes
    assert {s.run: s for s in suggest_train(grid, Sizing(max_hours=96))}["sft-8b"].nodes == 1
    wide = {s.run: s for s in suggest_train(grid, Sizing(margin=2.0, max_hours=1000))}["opd-4b-t8b"]
    assert wide.nodes == 1 and wide.runtime == 60 * math.ceil(2 * wide.est_hours)
    # RLVR is bound by decoding its longest responses: no node count reaches 72 h x 1.25, and
    # 16 nodes would buy ~13% for 4x the GPUs: the fewest within 25% of the shortest
    rlvr = by_run["rlvr-8b"]
    assert rlvr.nodes == 4 and "over 72 h on every node count" in rlvr.note


def test_suggest_resources_prints_a_block_the_config_takes(repo, paper, tmp_path):
    proc = run_plan(repo, repo / PAPER, "--suggest-resources", "--margin", "1.5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    block = yaml.safe_load(proc.stdout)
    assert set(block) == {"train_resources"} and set(block["train_resources"]) == set(Grid(paper).runs)
    assert "estimate x 1.5" in proc.stdout and "resources.evaluate.runtime:" in proc.stdout
    config = {**paper, **block}
    grid = Grid(config)
    assert all(grid.resources("train", n)["nodes"] == r["nodes"] for n, r in block["train_resources"].items())
    # a run's own resources still win over its train_resources entry
    assert Grid(changed(config, "runs", "rlvr-8b", "resources", "nodes", 3)).resources("train", "rlvr-8b")["nodes"] == 3
    with pytest.raises(UserError, match="train_resources.nope"):
        Grid(changed(config, "train_resources", "nope", {"nodes": 1}))


def test_dynamic_sampling_rounds_in_the_cost_model(paper):
    grid = Grid(paper)
    rollout = grid.runs["rlvr-8b"].settings.rollout
    # half the groups dropped (the planning guess): 64 prompts a round keep 32, two rounds fill 64
    assert cm.ASSUMPTIONS.zero_variance_fraction == 0.5 and cm.sampling_rounds(rollout) == 2
    assert cm.sampling_rounds(rollout.updated(dynamic_sampling=None)) == 1
    a = cm.Assumptions(zero_variance_fraction=0.9)  # ceil(64 / 6.4) = 10 rounds, capped at 8
    assert cm.sampling_rounds(rollout, a) == 8
    shapes = Shapes(grid)
    res = {**grid.resources("train", "rlvr-8b")}
    run = grid.runs["rlvr-8b"]
    est = cm.estimate_train(run, shapes.run("rlvr-8b"), None, res, device="cuda")
    off = cm.estimate_train(replace_rollout(run, dynamic_sampling=None), shapes.run("rlvr-8b"), None, res,
                            device="cuda")
    assert est.info["sampling_rounds"] == 2 and off.info["sampling_rounds"] == 1
    assert est.seconds["rollout generation"] == pytest.approx(2 * off.seconds["rollout generation"])
    assert est.info["rollout_tokens"] == pytest.approx(2 * off.info["rollout_tokens"])
    assert est.seconds["training forward + backward"] == off.seconds["training forward + backward"]


def replace_rollout(run, **changes):
    import dataclasses

    settings = run.settings.updated(rollout=run.settings.rollout.updated(**changes))
    return dataclasses.replace(run, settings=settings)


def test_livecodebench_problems_from_the_prepared_data(paper, tmp_path):
    # before preparation: 279, the public count for release_v5's window (not 280)
    grid = Grid(changed(paper, "results", str(tmp_path)))
    assert benchmark_problems(grid, "lcb-v5") == 279
    test = tmp_path / "data" / "lcb-v5" / "test.jsonl"
    test.parent.mkdir(parents=True)
    test.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(277)))
    assert benchmark_problems(grid, "lcb-v5") == 277  # prepared: what is there


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
    # The overlay groups diagnosis (and Sim_K) per run; references are diagnosed from the fixture's shapes.
    assert "diagnose_run" in proc.stdout and "diagnose_reference qwen3-8b-base all" in proc.stdout


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
