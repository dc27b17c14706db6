"""The typed specs (geopd.spec): JSON round trips that keep exactly the given keys, defaults in
one place, checks that name the block, and the derived quantities the trainer and the planner
share (geopd.train.batching)."""
import json

import pytest

from geopd.errors import UserError
from geopd.grid import Grid
from geopd.spec import (Benchmark, DynamicSampling, Engine, Objective, Rollout, RunSpec, Settings, SpecError, VLLM,
                        max_model_len, spec_json)
from geopd.train.batching import (SFT_BUCKETS, groups_taken, largest_micro_batch, micro_batch_plan, num_updates,
                                  rollout_split, update_of_samples)


@pytest.fixture(scope="module", params=["config/config.yaml", "config/paper.yaml"])
def grid(request, repo):
    return Grid.from_file(repo / request.param)


def test_every_run_spec_round_trips_through_json(grid):
    for name in grid.runs:
        spec = grid.run_spec(name)
        text = spec.to_json()
        assert text == spec_json(spec) == spec_json(json.loads(text))
        again = RunSpec.from_json(text)
        assert again == spec and again.to_json() == text
        # only what the config says (and the grid adds) is written: an SFT run has no rollout block
        assert ("rollout" in json.loads(text)) == (grid.runs[name].method != "sft")


def test_run_settings_keep_the_config_s_keys(grid):
    for run in grid.runs.values():
        merged = run.settings.to_dict()
        assert Settings.from_dict(merged) == run.settings
        assert set(merged) <= set(Settings.keys())


def test_defaults_live_in_the_fields():
    r = Rollout.from_dict({"prompts_per_step": 2, "samples": 4, "temperature": 1.0, "max_new_tokens": 8})
    assert (r.backend, r.source, r.top_p, r.global_batch_size, r.vllm.tensor_parallel) == ("hf", "student", 1.0, None, 1)
    assert r.samples_per_step == 8 and not r.off_policy
    assert r.to_dict() == {"prompts_per_step": 2, "samples": 4, "temperature": 1.0, "max_new_tokens": 8}
    # slime's split (contiguous blocks), no dynamic sampling; with it, slime's defaults
    assert (r.update_split, r.dynamic_sampling, r.prompts_per_round) == ("contiguous", None, 2)
    ds = r.updated(dynamic_sampling=DynamicSampling())
    assert (ds.dynamic_sampling.max_rounds, ds.dynamic_sampling.over_sampling_prompts, ds.prompts_per_round) == (8, None, 2)
    assert r.updated(dynamic_sampling=DynamicSampling(over_sampling_prompts=5)).prompts_per_round == 5
    o = Objective()
    assert (o.coef, o.clip_low, o.clip_high, o.aggregation, o.zero_reward_patience) == (1.0, 0.2, 0.28, "token-mean", 10)
    assert o.reward == "math-verify"
    assert o.to_dict() == {}
    assert Settings().rollout_source == "student"
    assert VLLM().gpu_dtype == "bfloat16" and VLLM(dtype="float32").gpu_dtype == "float32"


def test_a_spec_made_in_code_gives_what_differs_from_the_defaults():
    assert Engine(param_dtype="bfloat16").to_dict() == {"param_dtype": "bfloat16"}
    assert Engine(param_dtype="bfloat16").mixed_precision and Engine().sharded(2) and not Engine().sharded(1)
    e = Engine.from_dict({"param_dtype": "float32"})  # given explicitly: written back
    assert e.to_dict() == {"param_dtype": "float32"} and e.given("param_dtype")
    assert e.updated(micro_batch_tokens=64).to_dict() == {"param_dtype": "float32", "micro_batch_tokens": 64}


def test_checks_name_the_block():
    base = {"prompts_per_step": 2, "samples": 4, "temperature": 1.0, "max_new_tokens": 8}
    with pytest.raises(UserError, match=r"rollout\.vllm: unknown keys \['tp'\]"):
        Rollout.from_dict({**base, "vllm": {"tp": 2}})
    with pytest.raises(UserError, match=r"rollout: missing keys \['samples'\]"):
        Rollout.from_dict({k: v for k, v in base.items() if k != "samples"})
    with pytest.raises(UserError, match=r"engine must be a mapping"):
        Settings.from_dict({"engine": None})
    with pytest.raises(ValueError, match="aggregation"):
        Objective.from_dict({"aggregation": "sum"})
    with pytest.raises(SpecError, match="needs alpha"):
        Objective().check_method("mix")
    with pytest.raises(SpecError, match="only used by 'mix'"):
        Objective(alpha=0.5).check_method("opd")
    with pytest.raises(SpecError, match="objective.reward must be one of"):
        Objective.from_dict({"reward": "lenient"})
    with pytest.raises(SpecError, match="'opd' has none"):
        Objective(reward="deepscaler").check_method("opd")
    Objective(reward="deepscaler", alpha=0.5).check_method("mix")
    Objective(reward="deepscaler").check_method("rlvr")
    with pytest.raises(SpecError, match="update_split"):
        Rollout.from_dict({**base, "update_split": "random"})
    with pytest.raises(SpecError, match="max_rounds must be a positive integer"):
        Rollout.from_dict({**base, "dynamic_sampling": {"max_rounds": 0}})
    with pytest.raises(SpecError, match=r"rollout\.dynamic_sampling: unknown keys"):
        Rollout.from_dict({**base, "dynamic_sampling": {"rounds": 2}})
    with pytest.raises(SpecError, match="only 'rlvr' uses it, not 'mix'"):
        Rollout.from_dict({**base, "dynamic_sampling": {}}).check_method("mix")
    spec = {"run": "r", "method": "opd", "seed": 0, "init": "m", "data": {"name": "d", "dir": "d"}, "steps": 1,
            "checkpoints": [1], "state_dir": "s", "optim": {"lr": 1.0}}
    with pytest.raises(UserError, match="needs a rollout block"):
        RunSpec.from_dict(spec)
    with pytest.raises(UserError, match=r"missing keys \['optim'\]"):
        RunSpec.from_dict({k: v for k, v in spec.items() if k != "optim"})
    with pytest.raises(UserError, match=r"^optim: unknown keys \['lrr'\]"):
        RunSpec.from_dict({**spec, "method": "sft", "optim": {"lr": 1.0, "lrr": 2}})


def test_max_model_len_is_the_configured_one_or_prompt_plus_response():
    assert max_model_len(None, 1000, 2048) == 3048 and max_model_len(4096, 1000, 2048) == 4096
    bench = Benchmark(kind="math", data="x", samples=1, temperature=1.0, max_new_tokens=1000)
    assert bench.model_len(2048) == 3048 and bench.updated(max_model_len=2000).model_len(2048) == 2000


def test_updates_per_step_trainer_and_planner():
    assert rollout_split(2400, 64) == (37, 32) and num_updates(2400, 64) == 37
    # The planner prints slime's full batches; the trainer takes at least one update (a rollout
    # batch smaller than global_batch_size): the two counts differ there, as they did before.
    assert rollout_split(4, 8) == (0, 4) and num_updates(4, 8) == 1
    assert update_of_samples([3, 2], 1, 2, "interleaved") == [1, 0]
    assert update_of_samples([3, 2], 0, 2) == [0, 0, 0] and update_of_samples([3, 2], 1, 2) == [1, 1]


def test_contiguous_updates_are_slime_s_blocks():
    # slime (slime/utils/dp_schedule.py, build_dp_schedule): step s trains rollouts
    # [s * gbs, (s + 1) * gbs) of the batch, so a prompt's 8 samples train together
    which = [u for rank in range(4) for u in update_of_samples([64, 64, 64, 64], rank, 4)]
    assert which == [u for u in range(4) for _ in range(64)]
    groups = [set(which[g * 8:(g + 1) * 8]) for g in range(32)]
    assert all(len(g) == 1 for g in groups)
    # the same cut whatever the ranks; a remainder goes one sample each to the first updates
    # (slime drops it): 2400 samples in 37 updates, 32 of 65 then 5 of 64
    one = update_of_samples([2400], 0, 37)
    assert [u for r in range(16) for u in update_of_samples([150] * 16, r, 37)] == one
    assert [one.count(u) for u in range(37)] == [65] * 32 + [64] * 5 and one == sorted(one)
    # interleaved: a prompt's samples spread over 8 updates
    spread = [u for rank in range(4) for u in update_of_samples([64] * 4, rank, 4, "interleaved")]
    assert all(len(set(spread[g * 8:(g + 1) * 8])) == 4 for g in range(32))
    with pytest.raises(UserError, match="update_split"):
        update_of_samples([4], 0, 2, "random")


@pytest.mark.parametrize("found", [[3, 1, 2], [0, 5, 0], [2, 2, 2], [0, 0, 0]])
@pytest.mark.parametrize("room", [0, 1, 4, 10])
def test_dynamic_sampling_takes_the_first_groups_whatever_the_ranks(found, room):
    """Rank r found found[r] informative groups of a round: together the ranks take the first
    `room` of them in rank-major order (the prompts' order), as one rank would."""
    taken = [groups_taken(found, r, room) for r in range(len(found))]
    order = [(r, i) for r in range(len(found)) for i in range(found[r])]
    assert [(r, i) for r in range(len(found)) for i in range(taken[r])] == order[:room]
    assert groups_taken([sum(found)], 0, room) == sum(taken) == min(room, sum(found))


def test_micro_batches_trainer_and_planner():
    assert micro_batch_plan(Engine(), "sft") == (None, SFT_BUCKETS)
    assert micro_batch_plan(Engine(), "opd") == (None, None)
    assert micro_batch_plan(Engine(micro_batch_tokens=512), "sft") == (512, None)
    assert largest_micro_batch(Engine(), "sft", 64, 2, 100) == 8 * 100   # 32 rows per rank in 4 buckets
    assert largest_micro_batch(Engine(), "rlvr", 64, 16, 100) == 4 * 100  # one micro-batch per update
    assert largest_micro_batch(Engine(micro_batch_tokens=50), "sft", 64, 2, 100) == 100  # one sequence at least


def test_paper_settings_follow_slime(repo):
    """config/paper.yaml's reading (README, "Reading the paper"): OPD, its variants and the
    alpha-mix with slime's defaults; RLVR with DAPO's recipe and the deepscaler reward."""
    grid = Grid.from_file(repo / "config/paper.yaml")
    for name, run in grid.runs.items():
        if run.method == "sft":
            continue
        r, o = run.settings.rollout, run.settings.objective
        assert (r.prompts_per_step * r.samples, r.update_split) == (r.global_batch_size, "contiguous"), name
        if run.method == "rlvr":
            assert (r.prompts_per_step, o.clip_low, o.clip_high, o.aggregation, o.reward) == (
                64, 0.2, 0.28, "token-mean", "deepscaler")
            assert r.dynamic_sampling is not None and o.filter_zero_variance
            continue
        assert r.prompts_per_step == 8 and r.dynamic_sampling is None and o.aggregation == "seq-mean-token-mean", name
        # --eps-clip 0.2 and --eps-clip-high = --eps-clip; off-policy: the ratio to the sampling
        # teacher clipped at 1 +- 1.0
        assert (o.clip_low, o.clip_high) == ((1.0, 1.0) if r.off_policy else (0.2, 0.2)), name
        assert o.reward == ("deepscaler" if run.method == "mix" else "math-verify"), name
    assert grid.datasets["deepcoder"]["subsets"] == ["primeintellect", "taco", "lcbv5"]


@pytest.mark.parametrize("path, value, key", [
    (("method_defaults", "opd", "objective", "reward"), "deepscaler", "runs.opd-8b-t32b.objective"),
    (("method_defaults", "mix", "rollout", "dynamic_sampling"), {"max_rounds": 2}, "runs.opd-mix-0.75.rollout"),
])
def test_grid_refuses_a_key_the_method_cannot_use(repo, path, value, key):
    from geopd.config import read_yaml

    config = read_yaml(repo / "config/paper.yaml")
    node = config
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        Grid(config)


def test_the_planner_models_the_evaluation_engine_at_the_share_it_starts_with():
    """A benchmark that sets no gpu_memory_utilization: the planner's engine (Benchmark.vllm, as
    costmodel.estimate_eval builds it) has the share geopd.evaluate.engine starts vLLM with, not
    vLLM's own default (0.92); one that sets it keeps its own."""
    from geopd.evaluate.engine import vllm_settings

    bench = Benchmark(kind="math", data="x", samples=1, temperature=1.0, max_new_tokens=1000)
    started = vllm_settings(bench.to_dict())["gpu_memory_utilization"]
    assert bench.vllm(2).gpu_memory_utilization == started == 0.9
    own = Benchmark(kind="math", data="x", samples=1, temperature=1.0, max_new_tokens=1000, gpu_memory_utilization=0.7)
    assert own.vllm(2).gpu_memory_utilization == vllm_settings(own.to_dict())["gpu_memory_utilization"] == 0.7
