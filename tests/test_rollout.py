"""Rollout and teacher-scoring backends (transformers engines; vLLM only for its CPU-side errors)."""
import random
import sys

import numpy as np
import pytest
import torch
from transformers import GenerationConfig

from geopd.errors import UserError
from geopd.engines import models
from geopd.engines.rollout import HFRollout, Rollouts, make_rollout_engine
from geopd.engines.teacher import HFTeacher, make_teacher

from test_checkpoint import make_model, make_tokenizer

torch.set_num_threads(1)
EOS = 1
PROMPTS = ["1+2=", "what is 33+4?", "7"]


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def eos_biased(model, bias: float):
    """A tiny random model ends a response after ~1/p(EOS) tokens; a logit bias on EOS (an
    lm_head bias, seen by generate and by the chunked log-prob pass alike) makes that a few steps."""
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    head.weight = model.lm_head.weight  # still tied to the embedding
    with torch.no_grad():
        head.bias.zero_()
        head.bias[EOS] = bias
    model.lm_head = head
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return eos_biased(make_model(seed=11), 2.5)


def reference_logprobs(model, ro: Rollouts, temperature: float) -> torch.Tensor:
    """Brute force: each sample alone, unpadded (positions 0..), log_softmax(logits / T)."""
    out = torch.zeros(ro.sequences.shape)
    with torch.no_grad():
        for j in range(ro.num_samples):
            cols = ro.attention_mask[j].nonzero().squeeze(1)
            ids = ro.sequences[j, cols]
            logits = model(input_ids=ids[None]).logits[0].float() / temperature
            lp = torch.log_softmax(logits[:-1], -1).gather(-1, ids[1:, None]).squeeze(-1)
            for k in range(1, len(cols)):
                if ro.response_mask[j, cols[k]]:
                    out[j, cols[k]] = lp[k - 1]
    return out


def test_shapes_masks_and_eos(model, tok):
    n, max_new = 4, 10
    ro = HFRollout(model, tok).generate(PROMPTS, n, temperature=1.0, top_p=1.0, max_new_tokens=max_new, seed=3)
    ro.check()
    N = len(PROMPTS) * n
    assert ro.sequences.shape[0] == N and ro.prompt_index == [i // n for i in range(N)] and ro.group_size == n
    P = ro.prompt_width
    assert P == max(len(tok(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS)
    assert ro.sequences.shape[1] <= P + max_new
    for j in range(N):
        p = tok(PROMPTS[j // n], add_special_tokens=False)["input_ids"]
        assert ro.prompt_ids[j // n] == p
        assert ro.sequences[j, P - len(p):P].tolist() == p  # left-padded prompt
        assert ro.attention_mask[j, :P].tolist() == [0] * (P - len(p)) + [1] * len(p)
        resp = ro.response_mask[j, P:]
        length = int(resp.sum())
        assert resp.tolist() == [1] * length + [0] * (len(resp) - length)  # right-padded response
        assert torch.equal(ro.attention_mask[j, P:], resp)
        tokens = ro.sequences[j, P:P + length].tolist()
        assert EOS not in tokens[:-1]  # cut at the first EOS ...
        assert ro.finished[j] == (tokens[-1] == EOS)  # ... which is included
        if not ro.finished[j]:
            assert length == max_new  # only the length limit ends a response without EOS
        assert (ro.sequences[j, P + length:] == tok.pad_token_id).all()
        assert ro.texts[j] == tok.decode(tokens, skip_special_tokens=True)
    assert 0 < int(ro.finished.sum()) < N  # both cases occur in this batch
    assert (ro.response_logprobs[ro.response_mask.bool()] < 0).all()


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_response_logprobs_match_a_forward_pass(model, tok, temperature):
    ro = HFRollout(model, tok).generate(PROMPTS, 3, temperature=temperature, top_p=1.0, max_new_tokens=8, seed=1)
    torch.testing.assert_close(ro.response_logprobs, reference_logprobs(model, ro, temperature), rtol=0, atol=1e-5)


def test_seeded_and_leaves_global_rng_alone(model, tok):
    engine = HFRollout(model, tok)
    kw = dict(temperature=1.0, top_p=0.9, max_new_tokens=8)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    a = engine.generate(PROMPTS, 2, seed=42, **kw)
    after = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    assert after[:2] == expected[:2] and torch.equal(after[2], expected[2])
    b = engine.generate(PROMPTS, 2, seed=42, **kw)
    c = engine.generate(PROMPTS, 2, seed=43, **kw)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.response_logprobs, b.response_logprobs)
    assert not torch.equal(a.sequences, c.sequences)
    # chunked generation is a different batch shape but the same engine contract
    d = HFRollout(model, tok, batch_size=2).generate(PROMPTS, 2, seed=42, **kw)
    d.check()
    assert len(d.texts) == 6


def test_model_generation_defaults_do_not_leak(tok):
    """A hub model's generation_config (top_k=20, repetition penalty...) must not change the
    sampling distribution that the log-probs describe."""
    model = make_model(seed=5).eval()
    model.generation_config = GenerationConfig(top_k=2, repetition_penalty=3.0, do_sample=False)
    ro = HFRollout(model, tok).generate(["1+1="], 64, temperature=1.0, top_p=1.0, max_new_tokens=4, seed=0)
    assert model.generation_config.top_k == 2 and model.training is False  # restored
    with torch.no_grad():
        logits = model(input_ids=ro.sequences, attention_mask=ro.attention_mask).logits
    P = ro.prompt_width
    first = ro.sequences[:, P]
    rank = (logits[:, P - 1] > logits[:, P - 1].gather(1, first[:, None])).sum(1)
    assert (rank >= 2).float().mean() > 0.5  # with top_k=2 leaking, every first token would rank 0 or 1


def test_training_mode_restored_and_bad_settings(tok):
    model = make_model(seed=2)
    model.train()
    engine = make_rollout_engine("hf", model=model, tokenizer=tok)
    engine.generate(["1"], 1, temperature=1.0, top_p=1.0, max_new_tokens=2, seed=0)
    assert model.training
    with pytest.raises(UserError, match="temperature"):
        engine.generate(["1"], 1, temperature=0.0, top_p=1.0, max_new_tokens=2, seed=0)
    with pytest.raises(UserError, match="no tokens"):
        engine.generate([""], 1, temperature=1.0, top_p=1.0, max_new_tokens=2, seed=0)
    none = engine.generate([], 3, temperature=1.0, top_p=1.0, max_new_tokens=2, seed=0)  # a rank with no share
    none.check()
    assert none.num_samples == 0 and none.group_size == 3
    assert HFTeacher(make_model(seed=3)).score(none).shape == (0, 1)
    with pytest.raises(UserError, match="unknown rollout backend"):
        make_rollout_engine("sglang", model=model, tokenizer=tok)
    assert "vllm" not in sys.modules  # the CPU path never imports vllm
    if not _has_vllm():
        with pytest.raises(UserError, match="vllm"):
            make_rollout_engine("vllm", model="some/path", tokenizer=tok)


def _has_vllm():
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def test_replicated_engine_follows_sync_weights(tok):
    model = make_model(seed=7)
    shared = HFRollout(model, tok)
    replica = HFRollout(model, tok, replicate=True)
    assert replica.model is not model
    kw = dict(temperature=1.0, top_p=1.0, max_new_tokens=6, seed=9)
    assert torch.equal(shared.generate(PROMPTS, 2, **kw).sequences, replica.generate(PROMPTS, 2, **kw).sequences)
    with torch.no_grad():
        model.model.norm.weight.mul_(3.0)
    stale = replica.generate(PROMPTS, 2, **kw).response_logprobs
    replica.sync_weights(model)
    fresh = replica.generate(PROMPTS, 2, **kw)
    torch.testing.assert_close(fresh.response_logprobs, shared.generate(PROMPTS, 2, **kw).response_logprobs,
                               rtol=0, atol=0)
    assert not torch.equal(stale, fresh.response_logprobs)


# ---- teacher ---------------------------------------------------------------------------------------

def test_hf_teacher_scores_are_log_softmax_gathered(model, tok):
    ro = HFRollout(model, tok).generate(PROMPTS, 3, temperature=0.7, top_p=1.0, max_new_tokens=8, seed=2)
    teacher = eos_biased(make_model(seed=12), 0.0)
    expected = reference_logprobs(teacher, ro, 1.0)  # teacher at T=1 whatever the sampling T
    for batch_size in (64, 2):
        scores = HFTeacher(teacher, batch_size=batch_size).score(ro)
        torch.testing.assert_close(scores, expected, rtol=0, atol=1e-5)
        assert (scores[ro.response_mask == 0] == 0).all()
    assert not any(p.requires_grad for p in teacher.parameters())


def test_make_teacher_checks_tokenizer_first(tmp_path, tok, model, monkeypatch):
    teacher = make_model(seed=13)
    good = models.save_model(teacher, tok, tmp_path / "teacher", dtype=torch.float32)
    scorer = make_teacher("hf", good, tok)
    ro = HFRollout(model, tok).generate(PROMPTS, 2, temperature=1.0, top_p=1.0, max_new_tokens=5, seed=0)
    torch.testing.assert_close(scorer.score(ro), reference_logprobs(teacher.eval(), ro, 1.0), rtol=0, atol=1e-5)

    bad = tmp_path / "bad-teacher"
    models.save_model(teacher, make_tokenizer(["<think>"]), bad)

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded before the tokenizer check")

    monkeypatch.setattr(models, "load_model", no_weights)
    with pytest.raises(UserError, match=r"the student and the teacher .*bad-teacher have different vocabularies"):
        make_teacher("hf", bad, tok)
    with pytest.raises(UserError, match="unknown teacher backend"):
        make_teacher("onnx", good, tok)
    with pytest.raises(UserError, match="not found"):
        make_teacher("hf", tmp_path / "missing", tok)
