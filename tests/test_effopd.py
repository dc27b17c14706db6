"""EffOPD's search, on a tiny Qwen3 with a scripted validation function."""
from types import SimpleNamespace

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from geopd.train.effopd import Extrapolator, extrapolated, is_search_step, validation_set


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=8, intermediate_size=32)
    return Qwen3ForCausalLM(cfg)


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def nudge(model, amount):
    """Stands in for an optimizer step: every parameter moves by `amount`."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(amount)


def test_schedule_is_powers_of_two():
    assert [s for s in range(0, 70) if is_search_step(s)] == [1, 2, 4, 8, 16, 32, 64]


def test_parameter_filter():
    names = [n for n, _ in tiny_model().named_parameters()]
    moved = {n for n in names if extrapolated(n)}
    assert "model.layers.0.self_attn.q_proj.weight" in moved
    assert "model.layers.1.mlp.down_proj.weight" in moved
    for frozen in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                   "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight"):
        assert frozen in names and frozen not in moved


def run_search(scores, candidates=5, factor_step=2.0):
    model = tiny_model()
    calls = iter(scores)
    ext = Extrapolator(model, lambda step: next(calls), candidates=candidates, factor_step=factor_step)
    theta0 = params(model)
    nudge(model, 0.01)
    theta_t = params(model)
    log = ext.search(1)
    return model, theta0, theta_t, log, ext


@pytest.mark.parametrize("scores, accepted, tried", [
    ([0.5, 0.4], 0.0, [0.0, 2.0]),                      # first candidate fails: vanilla OPD
    ([0.5, 0.6, 0.7, 0.7], 4.0, [0.0, 2.0, 4.0, 6.0]),  # a tie is not an improvement: stop at 6
    ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 10.0, [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]),  # all five accepted
    ([0.5, 0.5], 0.0, [0.0, 2.0]),                      # strictly higher only
])
def test_candidate_arithmetic_acceptance_and_early_stop(scores, accepted, tried):
    model, theta0, theta_t, log, ext = run_search(scores)
    assert log["factors"] == tried and log["accepted_factor"] == accepted
    assert log["scores"] == scores[:len(tried)]
    for n, p in model.named_parameters():
        if extrapolated(n):
            expected = theta_t[n] + accepted * (theta_t[n] - theta0[n])
            torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6)
        else:  # embeddings, lm_head and norms keep the optimizer's value
            assert torch.equal(p.detach(), theta_t[n])


def test_base_moves_to_accepted_parameters():
    model, theta0, theta_t, log, ext = run_search([0.5, 0.6, 0.5])
    accepted = params(model)
    for n in ext.base:
        torch.testing.assert_close(ext.base[n], accepted[n])
    # Next search's direction is measured from the accepted point, not the initial student.
    nudge(model, 0.001)
    before = params(model)
    ext.validate = lambda step: 0.0
    log2 = ext.search(2)
    assert log2["accepted_factor"] == 0.0
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n])


def test_optimizer_state_untouched():
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    state_before = {k: {kk: vv.clone() for kk, vv in v.items()} for k, v in opt.state.items()}
    scores = iter([0.1, 0.9, 0.1])
    ext = Extrapolator(model, lambda step: next(scores))
    nudge(model, 0.01)
    ext.search(1)
    for k, v in opt.state.items():
        for kk, vv in v.items():
            assert torch.equal(vv, state_before[k][kk])


def test_validation_set_is_fixed_and_seeded():
    records = [{"prompt": str(i)} for i in range(500)]
    a, b = validation_set(records, 50, 0), validation_set(records, 50, 0)
    assert a == b and len(a) == 50 and validation_set(records, 50, 1) != a


class CopyEngine:
    """A rollout engine with its own copy of the weights, as vLLM has: it samples from the copy
    and records, at every generate call, whether the copy was stale."""

    def __init__(self, model):
        self.model = model
        self.copy = params(model)
        self.stale: list[bool] = []
        self.syncs = 0

    def sync_weights(self, model):
        self.copy = params(model)
        self.syncs += 1

    def generate(self, prompts, n, **kw):
        live = params(self.model)
        self.stale.append(any(not torch.equal(self.copy[k], live[k]) for k in live))
        return SimpleNamespace(prompt_index=[i for i in range(len(prompts)) for _ in range(n)],
                               texts=[""] * len(prompts) * n)


def fake_trainer(model, scores):
    from geopd.spec import Extrapolation, Rollout
    from geopd.train.distributed import Dist

    scores = iter(scores)
    trainer = SimpleNamespace(
        spec=SimpleNamespace(run="effopd", seed=0,
                             rollout=Rollout(prompts_per_step=4, samples=1, temperature=1.0, max_new_tokens=4),
                             extrapolation=Extrapolation(candidates=5, factor_step=2.0, validation_prompts=4)),
        records=[{"prompt": str(i)} for i in range(10)], dist=Dist(), tokenizer=None, model=model)
    trainer.rollout = CopyEngine(model)
    trainer._rewards = lambda records, texts: torch.full((len(texts),), next(scores))
    return trainer


@pytest.mark.parametrize("scores, accepted", [([0.5, 0.6, 0.4], 2.0), ([0.5, 0.4], 0.0),
                                              ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 10.0)])
def test_every_candidate_is_scored_on_fresh_weights(scores, accepted):
    from geopd.train.effopd import make_extrapolator

    model = tiny_model()
    trainer = fake_trainer(model, scores)
    ext = make_extrapolator(trainer)
    nudge(model, 0.01)  # the optimizer step: the engine's copy is now behind
    log = ext.search(1)
    assert log["accepted_factor"] == accepted
    assert trainer.rollout.stale == [False] * len(scores)  # theta_t and every candidate, fresh
    live = params(model)  # and the engine ends on the accepted weights
    assert all(torch.equal(trainer.rollout.copy[k], live[k]) for k in live)


def test_off_policy_rollouts_cannot_score_candidates():
    from geopd.errors import UserError
    from geopd.train.effopd import make_extrapolator

    trainer = fake_trainer(tiny_model(), [])
    trainer.spec.rollout = trainer.spec.rollout.updated(source="teacher")
    with pytest.raises(UserError, match="source: teacher"):
        make_extrapolator(trainer)


def test_a_validation_set_larger_than_the_training_data_is_refused():
    """The score's resolution is 1 / validation_prompts: a set silently cut to the training data's
    size would score in coarser steps than the config states (on main it was cut)."""
    from geopd.errors import UserError
    from geopd.train.effopd import make_extrapolator

    trainer = fake_trainer(tiny_model(), [])
    trainer.spec.extrapolation = trainer.spec.extrapolation.updated(validation_prompts=11)
    with pytest.raises(UserError, match=r"validation_prompts 11 > the 10 prompts of its training data"):
        make_extrapolator(trainer)
    trainer.spec.extrapolation = trainer.spec.extrapolation.updated(validation_prompts=10)
    make_extrapolator(trainer)
