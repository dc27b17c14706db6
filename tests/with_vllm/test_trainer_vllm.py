"""The trainer with vLLM rollouts and a vLLM teacher (one process): OPD with EffOPD's search,
where every generation (rollouts and each candidate's validation) must come from the weights
the trainer holds at that moment."""
import json

import pytest
import torch

from conftest import SETTINGS
from geopd.engines.rollout import sequence_logprobs


def spec_for(world, tmp_path, **changes):
    spec = {
        "run": "opd-vllm", "family": "opd", "method": "opd", "seed": 0, "device": "cpu",
        "init": str(world.student), "start_step": 0, "teacher": str(world.teacher),
        "data": {"name": "math", "dir": str(world.data), "kind": "synthetic-math"},
        "steps": 2, "checkpoints": [2], "state_dir": str(tmp_path / "state"),
        "optim": {"lr": 1e-3, "schedule": "constant", "weight_decay": 0.0, "betas": [0.9, 0.98]},
        "rollout": {"prompts_per_step": 4, "samples": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 10,
                    "global_batch_size": 4, "source": "student", "backend": "vllm", "vllm": SETTINGS},
        "objective": {"coef": 1.0, "clip_low": 0.2, "clip_high": 0.28},
        "teacher_engine": {"backend": "vllm", "vllm": SETTINGS},
    }
    spec.update(changes)
    return spec


def record_gaps(trainer) -> list[float]:
    """Wrap the trainer's rollout engine: for every generation, the largest gap between the
    engine's log-probs and the trainer's own on the same tokens (0 when the engine samples from
    the weights the trainer holds)."""
    gaps, real = [], trainer.rollout.generate

    def generate(prompts, n, **kw):
        ro = real(prompts, n, **kw)
        mine = sequence_logprobs(trainer.model, ro.sequences, ro.attention_mask, ro.response_mask,
                                 temperature=kw["temperature"])
        gaps.append((ro.response_logprobs - mine).abs().max().item())
        return ro

    trainer.rollout.generate = generate
    return gaps


def test_opd_with_effopd_search_samples_from_the_weights_being_tested(world, tmp_path):
    from geopd.train.loop import Trainer
    from geopd.engines.rollout import VLLMRollout
    from geopd.engines.teacher import VLLMTeacher

    spec = spec_for(world, tmp_path, extrapolation={"candidates": 3, "factor_step": 2.0, "validation_prompts": 4})
    trainer = Trainer(spec, threads=1, progress=False)
    assert isinstance(trainer.rollout, VLLMRollout) and isinstance(trainer.teacher, VLLMTeacher)
    gaps = record_gaps(trainer)
    trainer.fit()
    trainer.publish(tmp_path / "out", tmp_path / "metrics.jsonl")
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    searches = [r["extrapolation"] for r in rows]
    assert [s["step"] for s in searches] == [1, 2]
    # two rollout batches, and per search theta_t plus every candidate tried (factor > 0)
    tried = sum(len(s["factors"]) for s in searches)
    assert len(gaps) == 2 + tried and tried >= 4
    assert max(gaps) <= 1e-5, gaps
    assert all("mean_r_t" in r and r["mean_r_t"] == r["mean_r_t"] for r in rows)
    config = json.loads((tmp_path / "out" / "step-2" / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]


def test_colocated_engines_need_one_tensor_parallel_size(world, tmp_path):
    from geopd.errors import UserError
    from geopd.train.loop import Trainer

    spec = spec_for(world, tmp_path, teacher_engine={"backend": "vllm", "vllm": {**SETTINGS, "tensor_parallel": 2}})
    with pytest.raises(UserError, match="one tensor-parallel size per process"):
        Trainer(spec, threads=1, progress=False)


def test_off_policy_rollouts_come_from_the_teacher_checkpoint(world, tmp_path):
    """rollout.source teacher: the vLLM rollout engine samples from the teacher's checkpoint, and
    its log-probs (the behaviour policy of the ratio) are the teacher's."""
    from geopd.engines.models import load_model
    from geopd.train.loop import Trainer
    from geopd.engines.teacher import HFTeacher

    spec = spec_for(world, tmp_path, steps=1, checkpoints=[1], objective={"coef": 1.0, "clip_low": 1.0,
                                                                          "clip_high": 1.0})
    spec["rollout"] = {**spec["rollout"], "source": "teacher"}
    trainer = Trainer(spec, threads=1, progress=False)
    teacher = load_model(world.teacher).eval()
    gaps, real = [], trainer.rollout.generate

    def generate(prompts, n, **kw):
        ro = real(prompts, n, **kw)
        gaps.append((ro.response_logprobs - HFTeacher(teacher).score(ro)).abs().max().item())
        return ro

    trainer.rollout.generate = generate
    trainer.fit()
    assert len(gaps) == 1 and gaps[0] <= 1e-5, gaps


def test_rlvr_dynamic_sampling_rounds_sample_from_the_trainer_s_weights(world, tmp_path, monkeypatch):
    """RLVR with vLLM rollouts and dynamic sampling: every sampling round of a step comes from the
    weights the trainer holds (after the previous step's update), and a step stops sampling once
    its 4 informative groups are in."""
    from geopd.train.loop import Trainer

    spec = spec_for(world, tmp_path, run="rlvr-vllm", family="rlvr", method="rlvr", teacher=None,
                    objective={"clip_low": 0.2, "clip_high": 0.28, "zero_reward_patience": 0, "reward": "deepscaler"})
    del spec["teacher_engine"]
    spec["rollout"] = {**spec["rollout"], "global_batch_size": 8, "dynamic_sampling": {"max_rounds": 3}}
    trainer = Trainer(spec, threads=1, progress=False)
    flags = iter([[True, False, True, False], [True, True, False, False],    # step 1: 2 + 2 groups
                  [True, True, True, True]])                                 # step 2: 4 in one round

    def rewards(records, texts):
        f = next(flags)
        return torch.tensor([float(f[i // 2] and i % 2 == 0) for i in range(len(texts))])

    monkeypatch.setattr(trainer, "_rewards", rewards)
    gaps = record_gaps(trainer)
    trainer.fit()
    rows = [json.loads(line) for line in open(tmp_path / "state" / "metrics.jsonl")]
    assert [(r["sampling_rounds"], r["groups_kept"], r["samples"], r["updates"]) for r in rows] == [
        (2, 4, 8, 1), (1, 4, 8, 1)]
    assert len(gaps) == 3 and max(gaps) <= 1e-5, gaps
