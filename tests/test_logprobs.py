"""lm_head in chunks (geopd.engines.logprobs) against the full-logits computation, micro-batch
plans, the global batch in samples, and the engine block."""
import pytest
import torch
import torch.nn.functional as F

from geopd.errors import UserError
from geopd.engines import logprobs as lp
from geopd.spec import Engine
from geopd.train.batching import num_updates, update_of_samples

from test_checkpoint import make_model

torch.set_num_threads(1)


def full_reference(hidden, weight, bias, tokens, temperature):
    logits = F.linear(hidden, weight, bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    logp = torch.log_softmax(logits, -1)
    return logp.gather(-1, tokens[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("chunk", [1, 3, None])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("with_bias", [False, True])
def test_head_in_chunks_equals_full_logits_values_and_grads(chunk, temperature, with_bias):
    g = torch.Generator().manual_seed(0)
    N, H, V = 7, 5, 11
    head = torch.nn.Linear(H, V, bias=with_bias).double()
    hidden = torch.randn(N, H, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, V, (N,), generator=g)
    w = torch.randn(N, generator=g, dtype=torch.float64)
    logp, ent = lp.head_logprobs(hidden, head, tokens, temperature=temperature, chunk_tokens=chunk, entropy=True)
    (logp * w).sum().backward()
    got = [hidden.grad.clone(), head.weight.grad.clone()] + ([head.bias.grad.clone()] if with_bias else [])
    hidden.grad = None
    head.zero_grad()
    ref_logp, ref_ent = full_reference(hidden, head.weight, head.bias, tokens, temperature)
    (ref_logp * w).sum().backward()
    ref = [hidden.grad, head.weight.grad] + ([head.bias.grad] if with_bias else [])
    torch.testing.assert_close(logp, ref_logp, rtol=0, atol=1e-12)
    torch.testing.assert_close(ent, ref_ent.detach(), rtol=0, atol=1e-12)
    assert not ent.requires_grad
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_head_gradcheck_and_empty_selection():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 6, (4,), generator=g)
    fn = lambda h, w: lp._HeadLogProb.apply(h, w, None, tokens, 0.8, 3, False)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (hidden, weight))
    head = torch.nn.Linear(3, 6, bias=False).double()
    logp, ent = lp.head_logprobs(hidden[:0], head, tokens[:0])
    assert logp.shape == (0,) and ent is None
    logp.sum().backward()  # connected to the graph, zero gradients
    assert head.weight.grad is not None and not head.weight.grad.any()


def test_bf16_head_reduces_in_fp32_and_returns_bf16_grads():
    g = torch.Generator().manual_seed(2)
    N, H, V = 9, 16, 300
    head = torch.nn.Linear(H, V, bias=False)
    hidden = torch.randn(N, H, generator=g)
    tokens = torch.randint(0, V, (N,), generator=g)
    head_bf = torch.nn.Linear(H, V, bias=False).bfloat16()
    head_bf.weight.data.copy_(head.weight.data.bfloat16())
    h_bf = hidden.bfloat16().requires_grad_()
    logp, _ = lp.head_logprobs(h_bf, head_bf, tokens, chunk_tokens=4)
    assert logp.dtype == torch.float32
    logp.sum().backward()
    assert h_bf.grad.dtype == torch.bfloat16 and head_bf.weight.grad.dtype == torch.bfloat16
    # the same bf16 logits, reduced in fp32 at once
    ref = torch.log_softmax(F.linear(h_bf.detach(), head_bf.weight.detach()).float(), -1)
    torch.testing.assert_close(logp, ref.gather(-1, tokens[:, None]).squeeze(-1), rtol=0, atol=1e-5)
    h32 = hidden.clone().requires_grad_()
    full, _ = full_reference(h32, head.weight, None, tokens, 1.0)
    full.sum().backward()
    torch.testing.assert_close(head_bf.weight.grad.float(), head.weight.grad, rtol=0.05, atol=0.02)


def test_hooks_on_lm_head_are_refused():
    model = make_model()
    model.lm_head.register_forward_hook(lambda m, a, o: o)
    ids = torch.randint(3, 64, (1, 5))
    with pytest.raises(ValueError, match="forward hooks"):
        lp.token_stats(model, ids, torch.ones_like(ids), torch.ones_like(ids))


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_token_stats_equals_the_models_full_logits(tie, checkpointing):
    """Left padding, a response mask, temperature: values and every parameter's gradient."""
    model = make_model(seed=3, tie=tie).train()
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
        assert model.model.layers[0].gradient_checkpointing
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(3, 64, (3, 9), generator=g)
    attn = torch.ones_like(ids)
    attn[0, :3] = 0  # left-padded prompt
    attn[2, 7:] = 0  # right-padded response
    mask = torch.zeros_like(ids)
    mask[:, 4:] = 1
    mask = mask * attn
    T = 0.7
    logp, ent = lp.token_stats(model, ids, attn, mask, temperature=T, chunk_tokens=2, entropy=True)
    w = torch.randn(ids.shape, generator=g)
    (logp * w).sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    from geopd.engines.chat import position_ids

    logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn)).logits.float() / T
    ref = torch.log_softmax(logits[:, :-1], -1)
    ref_logp = F.pad(ref.gather(-1, ids[:, 1:, None]).squeeze(-1), (1, 0)) * mask
    ref_ent = F.pad(-(ref.exp() * ref).sum(-1), (1, 0)) * mask
    (ref_logp * w).sum().backward()
    torch.testing.assert_close(logp, ref_logp, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent.detach(), rtol=0, atol=1e-5)
    assert (logp[mask == 0] == 0).all()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


# ---- micro-batches ------------------------------------------------------------------------------

def test_micro_batches_respect_the_budget_and_cover_every_row_once():
    g = torch.Generator().manual_seed(5)
    lengths = torch.randint(1, 30, (40,), generator=g)
    starts = torch.randint(0, 6, (40,), generator=g)
    attn = torch.zeros(40, 40, dtype=torch.long)
    for i, (s, n) in enumerate(zip(starts.tolist(), lengths.tolist())):
        attn[i, s:s + n] = 1
    rows = torch.arange(3, 40, 2)
    plans = lp.plan_micro_batches(attn, rows, token_budget=64)
    assert sorted(torch.cat([p.rows for p in plans]).tolist()) == rows.tolist()
    for p in plans:
        used = attn[p.rows].nonzero()[:, 1]
        assert p.start == int(used.min()) and p.stop == int(used.max()) + 1
        assert p.tokens <= 64 or len(p.rows) == 1
    ends = [int((attn[p.rows].cumsum(1).argmax(1)).max()) for p in plans]
    assert ends == sorted(ends)  # length-bucketed: short rows together
    again = lp.plan_micro_batches(attn, rows, token_budget=64)  # deterministic
    assert [(p.rows.tolist(), p.start, p.stop) for p in plans] == [(p.rows.tolist(), p.start, p.stop) for p in again]
    # without a budget: equal-count buckets, or one; max_rows caps either
    assert [len(p.rows) for p in lp.plan_micro_batches(attn, rows, buckets=4)] == [5, 5, 5, 4]
    assert [len(p.rows) for p in lp.plan_micro_batches(attn, rows)] == [19]
    assert max(len(p.rows) for p in lp.plan_micro_batches(attn, rows, max_rows=6)) <= 6
    assert lp.plan_micro_batches(attn, rows[:0], token_budget=64) == []


# ---- the global batch in samples ----------------------------------------------------------------

@pytest.mark.parametrize("split", ["contiguous", "interleaved"])
def test_global_batch_counts_samples_as_slime_and_drops_none(split):
    assert num_updates(300 * 8, 64) == 37 and num_updates(1024 * 8, 512) == 16 and num_updates(5, 64) == 1
    counts = [150] * 16  # 300 prompts x 8 samples on 16 ranks
    which = torch.tensor([u for r in range(16) for u in update_of_samples(counts, r, 37, split)])
    sizes = torch.bincount(which, minlength=37)
    assert sizes.sum() == 2400 and set(sizes.tolist()) == {64, 65}
    if split == "interleaved":
        for r in range(16):  # every rank takes part in every update, near-equally
            per = torch.bincount(torch.tensor(update_of_samples(counts, r, 37, split)), minlength=37)
            assert per.min() >= 4 and per.max() <= 5
    # which samples share an update does not depend on how they fall onto ranks
    uneven = [19 * 8] * 12 + [18 * 8] * 4
    assert [u for r in range(16) for u in update_of_samples(uneven, r, 37, split)] == update_of_samples(
        [2400], 0, 37, split)
    with pytest.raises(UserError, match="global_batch_size"):
        num_updates(10, 0)


def test_engine_block_is_checked():
    e = Engine.from_dict({"param_dtype": "bfloat16", "reduce_dtype": "float32", "micro_batch_tokens": 8})
    assert e.param_dtype == "bfloat16" and e.mixed_precision and e.activation_checkpointing is False
    assert not Engine.from_dict(None).mixed_precision
    with pytest.raises(UserError, match="param_dtype"):
        Engine.from_dict({"param_dtype": "float16"})
    with pytest.raises(UserError, match="unknown keys"):
        Engine.from_dict({"micro_batch": 8})
    with pytest.raises(UserError, match="micro_batch_tokens"):
        Engine.from_dict({"micro_batch_tokens": 0})


# ---- under FSDP2 (gloo, 1 and 2 processes) ------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("procs", [1, 2])
def test_sharded_chunked_path_equals_unsharded_full_logits(tmp_path, procs):
    """The root unit's all-gather around the decoder and every head chunk, a tied head/embedding
    as one parameter, gradients reduce-scattered: log-probs and every gradient as the unsharded
    model's full logits give them (fp32; bf16 mixed precision with checkpointing, tied and untied)."""
    from test_train_engine import run_worker

    bf16 = {"param_dtype": "bfloat16", "reduce_dtype": "float32", "activation_checkpointing": True}
    scenarios = [{"name": "fp32-tied", "kind": "head", "engine": {}, "tie": True},
                 {"name": "bf16-tied", "kind": "head", "engine": bf16, "tie": True},
                 {"name": "bf16-untied", "kind": "head", "engine": bf16, "tie": False}]
    res = run_worker(scenarios, tmp_path, procs)
    assert res["fp32-tied"]["sharded"] == (procs > 1) and res["bf16-tied"]["sharded"]
    assert res["fp32-tied"]["logp"] < 1e-5
    for name, r in res.items():
        # measured: fp32 <= 1e-6 of the gradient's scale; bf16 (against full bf16 logits) <= 0.6%
        tol = 1e-5 if name.startswith("fp32") else 2e-2
        assert r["logp"] < (1e-5 if name.startswith("fp32") else 5e-3), (name, r["logp"])
        for param, err in r["grad"].items():
            assert err <= tol * r["grad_scale"][param] + 1e-7, (name, param, err, r["grad_scale"][param])
    assert "lm_head.weight" in res["bf16-untied"]["grad"] and "lm_head.weight" not in res["bf16-tied"]["grad"]
