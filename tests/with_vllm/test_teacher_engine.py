"""The vLLM teacher scores the student's exact token ids like the transformers teacher does.

Tolerance: fp32 engine vs fp32 HFTeacher 1e-5 absolute per token; bf16 engine vs a bf16 HFTeacher
0.05. The dtype given to make_teacher must reach the engine (it did not: a vLLM teacher ran
bf16 against an fp32 trainer, off by 0.076)."""
import pytest
import torch

from conftest import SETTINGS
from geopd.engines.models import load_model
from geopd.engines.rollout import HFRollout
from geopd.engines.teacher import HFTeacher, make_teacher


@pytest.fixture(scope="module")
def rollouts(world, prompts):
    student = load_model(world.student).eval()
    return HFRollout(student, world.tokenizer).generate(prompts, 3, temperature=1.0, top_p=1.0, max_new_tokens=12,
                                                        seed=4)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 0.05)])
def test_teacher_prompt_logprobs_equal_the_hf_teachers(world, rollouts, dtype, atol):
    teacher = make_teacher("vllm", world.teacher, world.tokenizer, dtype=dtype, vllm=SETTINGS)
    assert teacher.engine.llm.llm_engine.model_config.dtype == dtype
    got = teacher.score(rollouts)
    want = HFTeacher(load_model(world.teacher, dtype=dtype)).score(rollouts)
    mask = rollouts.response_mask.bool()
    assert (got[~mask] == 0).all() and (got[mask] < 0).all()
    diff = (got - want).abs().max().item()
    assert diff <= atol, diff
    teacher.sleep()  # a no-op on CPU; scoring afterwards still works
    assert torch.equal(teacher.score(rollouts), got)
