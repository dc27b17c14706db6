"""The vLLM rollout engine against the trainer's own log-probs, in one process (fp32 and bf16).

Tolerance: fp32 engine vs the trainer's fp32 forward pass (geopd.engines.rollout.sequence_logprobs)
agree to 1e-5 absolute per token (measured ~1e-6: different kernels, same math); a bf16 engine vs
a bf16 transformers model to 0.05 (bf16 rounding of activations, different reduction order).
"""
import random

import numpy as np
import pytest
import torch

from conftest import SETTINGS
from geopd.errors import UserError
from geopd.engines.models import load_model
from geopd.engines.rollout import VLLMRollout, make_rollout_engine, sequence_logprobs

FP32_ATOL = 1e-5
BF16_ATOL = 0.05


@pytest.fixture(scope="module")
def student(world):
    return load_model(world.student, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def engine(student, world):
    return make_rollout_engine("vllm", model=student, tokenizer=world.tokenizer, settings=SETTINGS, seed=0)


def trainer_logprobs(model, ro, temperature):
    return sequence_logprobs(model, ro.sequences, ro.attention_mask, ro.response_mask, temperature=temperature)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_logprobs_equal_the_trainers(engine, student, prompts, temperature):
    ro = engine.generate(prompts, 3, temperature=temperature, top_p=1.0, max_new_tokens=12, seed=5)
    ro.check()
    assert ro.num_samples == 9 and ro.group_size == 3
    assert (ro.response_lengths > 0).all()
    diff = (ro.response_logprobs - trainer_logprobs(student, ro, temperature)).abs().max().item()
    assert diff <= FP32_ATOL, diff


def test_seeded_and_leaves_global_rng_alone(engine, prompts):
    kw = dict(temperature=1.0, top_p=1.0, max_new_tokens=8)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    a = engine.generate(prompts, 2, seed=42, **kw)
    after = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    assert after[:2] == (random.random(), np.random.rand()) and torch.equal(after[2], torch.rand(3))
    b = engine.generate(prompts, 2, seed=42, **kw)
    c = engine.generate(prompts, 2, seed=43, **kw)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.response_logprobs, b.response_logprobs)
    assert not torch.equal(a.sequences, c.sequences)


def test_weights_pushed_after_an_optimizer_step_reach_the_engine(engine, student, prompts, world):
    model = load_model(world.student, dtype=torch.float32)
    model.load_state_dict(student.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ro = engine.generate(prompts, 2, temperature=1.0, top_p=1.0, max_new_tokens=10, seed=7)
    model.train()
    logits = model(input_ids=ro.sequences, attention_mask=ro.attention_mask).logits
    (-torch.log_softmax(logits[:, :-1], -1).gather(-1, ro.sequences[:, 1:, None]).mean()).backward()
    optimizer.step()
    model.eval()
    try:
        stale = engine.generate(prompts, 2, temperature=1.0, top_p=1.0, max_new_tokens=10, seed=7)
        moved = (stale.response_logprobs - trainer_logprobs(model, stale, 1.0)).abs().max().item()
        assert moved > 100 * FP32_ATOL  # the step changed the policy; the engine does not know yet
        engine.sync_weights(model)
        fresh = engine.generate(prompts, 2, temperature=1.0, top_p=1.0, max_new_tokens=10, seed=7)
        diff = (fresh.response_logprobs - trainer_logprobs(model, fresh, 1.0)).abs().max().item()
        assert diff <= FP32_ATOL, diff
    finally:
        engine.sync_weights(student)  # the module's engine serves the other tests


def test_sleep_and_wake_are_noops_on_cpu(engine, student, prompts):
    assert engine.engine.sleeps is False  # vLLM's CPU platform has no sleep mode
    before = engine.generate(prompts, 1, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=1)
    engine.sleep()
    assert not engine.engine.asleep and not engine.engine.weights_discarded
    engine.wake()
    after = engine.generate(prompts, 1, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=1)
    assert torch.equal(before.sequences, after.sequences)


def test_bf16_engine_matches_a_bf16_model_and_keeps_the_callers_rng(world, prompts):
    model = load_model(world.student, dtype=torch.bfloat16).eval()
    torch.manual_seed(123)
    expected = torch.rand(2)
    torch.manual_seed(123)
    engine = VLLMRollout(world.student, settings={**SETTINGS, "dtype": "bfloat16"}, seed=0)
    assert torch.equal(torch.rand(2), expected)  # vLLM seeds the global RNG at start-up; not ours
    assert engine.engine.llm.llm_engine.model_config.dtype == torch.bfloat16
    ro = engine.generate(prompts, 2, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=3)
    diff = (ro.response_logprobs - trainer_logprobs(model, ro, 1.0)).abs().max().item()
    assert diff <= BF16_ATOL, diff


def test_placement_errors_before_loading(world):
    with pytest.raises(UserError, match="one trainer process per GPU"):
        VLLMRollout(world.student, settings={**SETTINGS, "tensor_parallel": 2})
    with pytest.raises(UserError, match="unknown vLLM setting"):
        VLLMRollout(world.student, settings={"tensor_paralel": 1})


def test_deleting_an_engine_leaves_the_others_working(engine, world, prompts):
    import gc

    other = VLLMRollout(world.student, settings=SETTINGS, seed=0)
    del other
    gc.collect()  # vLLM 0.32 would tear down the process's parallel groups with it
    engine.generate(prompts, 1, temperature=1.0, top_p=1.0, max_new_tokens=4, seed=0).check()


def test_a_rank_without_prompts_gets_no_samples(engine, world):
    # More data-parallel ranks than prompts: the rank still calls the engine (its tensor-parallel
    # group may span ranks) and gets an empty batch; the vLLM teacher scores it as empty.
    ro = engine.generate([], 3, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=1)
    assert ro.num_samples == 0 and ro.group_size == 3 and ro.texts == []
    from geopd.engines.teacher import make_teacher

    teacher = make_teacher("vllm", world.teacher, world.tokenizer, dtype=torch.float32, vllm=SETTINGS)
    assert teacher.score(ro).shape == (0, 1)
