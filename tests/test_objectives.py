"""Objectives of the paper grid on small tensors with hand-computed values."""
import math

import pytest
import torch
import torch.nn.functional as F

from geopd.engines import kernels
from geopd.train import objectives as obj

torch.set_num_threads(1)


def close(a, b, tol=1e-6):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                          atol=tol, rtol=0)


# ---- token log-probs, entropy ------------------------------------------------------------------

def test_token_logprobs_matches_log_softmax_values_and_grad():
    g = torch.Generator().manual_seed(0)
    full = torch.randn(3, 6, 11, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, 11, (3, 5), generator=g)
    # A non-contiguous slice, as the trainer passes logits[:, :-1]; chunks of 2 rows.
    x = full.clone().requires_grad_()
    got = kernels.token_logprobs(x[:, :-1], tokens, chunk_size=2)
    y = full.clone().requires_grad_()
    ref = torch.log_softmax(y[:, :-1], -1).gather(-1, tokens[..., None]).squeeze(-1)
    assert got.dtype == torch.float64 and close(got, ref, 1e-12)
    w = torch.randn(3, 5, generator=g, dtype=torch.float64)
    (got * w).sum().backward()
    (ref * w).sum().backward()
    assert close(x.grad, y.grad, 1e-12)
    assert torch.autograd.gradcheck(lambda z: kernels.token_logprobs(z, tokens, chunk_size=3), (x[:, :-1].detach().requires_grad_(),))


def test_token_logprobs_bf16_in_fp32_out_and_shape_errors():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 9, generator=g).bfloat16().requires_grad_()
    t = torch.randint(0, 9, (2, 4), generator=g)
    lp = kernels.token_logprobs(x, t)
    ref = torch.log_softmax(x.float(), -1).gather(-1, t[..., None]).squeeze(-1)
    assert lp.dtype == torch.float32 and close(lp, ref, 1e-5)
    lp.sum().backward()
    assert x.grad.dtype == torch.bfloat16
    assert close(kernels.token_logprobs(x[0].detach(), t[0]), ref[0], 1e-5)  # [T,V] input
    with pytest.raises(ValueError, match="do not match"):
        kernels.token_logprobs(x, t[:, :3])


def test_entropy_matches_reference_and_ignores_masked_vocab():
    x = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, -math.inf]]])
    h = kernels.entropy(x, chunk_size=1)
    assert close(h[0, 0], math.log(4))
    p = torch.softmax(torch.tensor([1.0, 2.0, 3.0]), -1)
    assert close(h[0, 1], -(p * p.log()).sum(), 1e-6)
    assert not h.requires_grad


# ---- OPD advantage ------------------------------------------------------------------------------

def test_opd_advantage_is_minus_coef_r_on_sampled_tokens():
    s = torch.tensor([[-1.0, -2.0, -0.5, -3.0]], requires_grad=True)
    t = torch.tensor([[-1.5, -1.0, -0.5, -math.inf]])  # padding may carry -inf
    mask = torch.tensor([[1, 1, 1, 0]])
    # r = [0.5, -1, 0, pad]
    a = obj.opd_advantages(s, t, mask)
    assert torch.equal(a, torch.tensor([[-0.5, 1.0, 0.0, 0.0]]))
    assert not a.requires_grad
    assert torch.equal(obj.opd_advantages(s, t, mask.bool(), coef=2.0), torch.tensor([[-1.0, 2.0, 0.0, 0.0]]))


# ---- GRPO ----------------------------------------------------------------------------------------

def test_grpo_uses_unbiased_group_std():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    # group 1: mean 0.25; unbiased std sqrt((0.75^2 + 3*0.25^2)/3) = 0.5 (population would be 0.433)
    a = obj.grpo_advantages(rewards, 4)
    expect = torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-6)
    assert close(a[:4], expect) and torch.equal(a[4:], torch.zeros(4))
    assert close(obj.grpo_advantages(rewards, 4, scale_std=False)[:4], [0.75, -0.25, -0.25, -0.25])
    with pytest.raises(ValueError, match="at least 2"):
        obj.grpo_advantages(rewards, 1)
    with pytest.raises(ValueError, match="groups of 3"):
        obj.grpo_advantages(rewards, 3)


def test_zero_variance_groups_are_dropped():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    keep = obj.nonzero_variance_groups(rewards, 4)
    assert keep.dtype == torch.bool
    assert keep.tolist() == [True] * 4 + [False] * 8


def test_broadcast_sequence_advantage():
    out = obj.broadcast_sequence_advantage(torch.tensor([2.0, -1.0]), torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert torch.equal(out, torch.tensor([[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]))


@pytest.mark.parametrize("alpha,expect", [(1.0, [[-0.5, 1.0]]), (0.0, [[2.0, 2.0]]), (0.5, [[0.75, 1.5]])])
def test_alpha_mix(alpha, expect):
    a_opd, a_rlvr = torch.tensor([[-0.5, 1.0]]), torch.tensor([[2.0, 2.0]])
    assert close(obj.mix_advantages(a_opd, a_rlvr, alpha), expect)


def test_alpha_mix_rejects_bad_alpha_and_shapes():
    with pytest.raises(ValueError, match="alpha"):
        obj.mix_advantages(torch.zeros(1, 2), torch.zeros(1, 2), 1.5)
    with pytest.raises(ValueError, match="differ"):
        obj.mix_advantages(torch.zeros(1, 2), torch.zeros(2), 0.5)


# ---- token sparsification ----------------------------------------------------------------------

def test_topkl_keeps_largest_signed_r_per_sequence():
    r = torch.tensor([[0.3, -2.0, 1.0, 0.5, 9.0],    # 4 valid; 9.0 is padding
                      [0.1, 0.1, 0.0, 0.0, 0.0]])    # 3 valid, a tie at the top
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    m, scale = obj.sparsify(r, mask, 0.5, "topkl")
    # row 0: k = 2 -> r = 1.0 and 0.5 (not -2.0: signed, not |r|); padding never kept
    # row 1: k = ceil(1.5) = 2 -> the tied 0.1s
    assert m.tolist() == [[False, False, True, True, False], [True, True, False, False, False]]
    assert close(scale, [[0, 0, 2.0, 2.0, 0], [1.5, 1.5, 0, 0, 0]])
    m, scale = obj.sparsify(r, mask, 0.25, "topkl")
    assert m.nonzero().tolist() == [[0, 2], [1, 0]]
    assert close(scale[0, 2], 4.0) and close(scale[1, 0], 3.0)
    m, scale = obj.sparsify(r, mask, 1.0, "topkl")
    assert torch.equal(m, mask.bool()) and torch.equal(scale, mask.float())


def test_random_sparsify_counts_scale_and_determinism():
    mask = torch.zeros(3, 8, dtype=torch.long)
    mask[0, :] = 1
    mask[1, 2:7] = 1          # 5 valid
    r = torch.randn(3, 8)
    m, scale = obj.sparsify(r, mask, 0.25, "random", torch.Generator().manual_seed(7))
    assert m.sum(1).tolist() == [2, 2, 0]                      # ceil(0.25 * [8, 5, 0])
    assert not (m & ~mask.bool()).any()
    assert close(scale[m], [4.0, 4.0, 2.5, 2.5])               # T_i / sum(m)
    assert torch.equal(scale[~m], torch.zeros(int((~m).sum())))
    m2, s2 = obj.sparsify(r, mask, 0.25, "random", torch.Generator().manual_seed(7))
    assert torch.equal(m, m2) and torch.equal(scale, s2)
    big = torch.ones(64, 8)
    a, _ = obj.sparsify(big, big, 0.5, "random", torch.Generator().manual_seed(1))
    b, _ = obj.sparsify(big, big, 0.5, "random", torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)


def test_random_sparsify_is_uniform_and_unbiased_in_magnitude():
    n = 4000
    ones = torch.ones(n, 8)
    m, scale = obj.sparsify(ones, ones, 0.25, "random", torch.Generator().manual_seed(3))
    freq = m.float().mean(0)
    # each position kept with probability 2/8; binomial sd = sqrt(.25*.75/4000) ~ 0.007
    assert (freq - 0.25).abs().max() < 0.03
    # E[scale] = 1 per token: the retained signal matches the dense one in expectation
    assert (scale.mean(0) - 1).abs().max() < 0.12


def test_sparsify_rejects_bad_arguments():
    r, mask = torch.zeros(1, 4), torch.ones(1, 4)
    with pytest.raises(ValueError, match="mode"):
        obj.sparsify(r, mask, 0.5, "absKL")
    with pytest.raises(ValueError, match="rho"):
        obj.sparsify(r, mask, 0.0, "random")
    with pytest.raises(ValueError, match="finite"):
        obj.sparsify(torch.tensor([[0.0, math.nan, 0.0, 0.0]]), mask, 0.5, "topkl")


# ---- the advantage switch ------------------------------------------------------------------------

def _inputs():
    s = torch.tensor([[-1.0, -2.0, -0.5, -1.0], [-0.2, -0.1, -3.0, -1.0]])
    t = torch.tensor([[-1.5, -1.0, -0.5, -1.0], [-0.4, -0.1, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    return {"mask": mask, "student_logp": s, "teacher_logp": t,
            "rewards": torch.tensor([1.0, 0.0]), "group_size": 2}


def test_switch_opd_rlvr_mix():
    inp = _inputs()
    a_opd = obj.opd_advantages(inp["student_logp"], inp["teacher_logp"], inp["mask"])
    adv, w = obj.advantages("opd", {"coef": 1.0}, inp)
    assert torch.equal(adv, a_opd) and torch.equal(w, inp["mask"])
    adv, w = obj.advantages("rlvr", {}, inp)
    # group [1, 0]: mean 0.5, unbiased std 0.7071
    g = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert close(adv, torch.tensor([[g], [-g]]) * inp["mask"])
    adv, _ = obj.advantages("mix", {"alpha": 0.25}, inp)
    assert close(adv, 0.25 * a_opd + 0.75 * torch.tensor([[g], [-g]]) * inp["mask"])


def test_switch_sparsify_scales_the_opd_term_and_keeps_the_dense_denominator():
    inp = _inputs()
    # r row 0 = [0.5, -1, 0 | pad], row 1 = [0.2, 0, -2, 0]; rho 0.25 keeps one token per row
    adv, w = obj.advantages("opd", {"sparsify": {"mode": "topkl", "rho": 0.25}}, inp)
    assert close(adv, [[-0.5 * 3, 0, 0, 0], [-0.2 * 4, 0, 0, 0]])
    assert torch.equal(w, inp["mask"])  # dropped tokens still count in the token mean
    # in mix only the OPD term is sparsified; the RLVR term stays on every token
    adv_mix, _ = obj.advantages("mix", {"alpha": 0.5, "sparsify": {"mode": "topkl", "rho": 0.25}}, inp)
    rl, _ = obj.advantages("rlvr", {}, inp)
    assert close(adv_mix, 0.5 * adv + 0.5 * rl)


def test_switch_errors():
    inp = _inputs()
    with pytest.raises(ValueError, match="unknown objective 'ppo'"):
        obj.advantages("ppo", {}, inp)
    with pytest.raises(ValueError, match="unknown keys"):
        obj.advantages("opd", {"sparsfy": {"mode": "topkl", "rho": 0.5}}, inp)
    with pytest.raises(ValueError, match="rlvr"):
        obj.advantages("rlvr", {"sparsify": {"mode": "random", "rho": 0.5}}, inp)
    with pytest.raises(ValueError, match="needs alpha"):
        obj.advantages("mix", {}, inp)
    with pytest.raises(ValueError, match="only used by 'mix'"):
        obj.advantages("opd", {"alpha": 0.5}, inp)
    with pytest.raises(ValueError, match="teacher_logp"):
        obj.advantages("opd", {}, {**inp, "teacher_logp": None})


# ---- clipped policy loss ---------------------------------------------------------------------------

def _hand_loop(ratios, advs, eps_low, eps_high):
    out = []
    for r, a in zip(ratios, advs):
        c = min(max(r, 1 - eps_low), 1 + eps_high)
        out.append(-min(r * a, c * a))
    return out


RATIOS = [1.1, 1.5, 0.5, 1.1, 1.5, 0.5]   # inside, above, below the [0.8, 1.28] range
ADVS = [1.0, 1.0, 1.0, -1.0, -1.0, -1.0]


def test_clipped_loss_matches_hand_loop_inside_above_below():
    old = torch.zeros(1, 6, dtype=torch.float64)
    logp = torch.tensor([RATIOS], dtype=torch.float64).log().requires_grad_()
    adv = torch.tensor([ADVS], dtype=torch.float64)
    loss, stats = obj.clipped_policy_loss(logp, old, adv, torch.ones(1, 6))
    per_token = _hand_loop(RATIOS, ADVS, 0.2, 0.28)
    assert close(per_token, [-1.1, -1.28, -0.5, 1.1, 1.5, 0.8], 1e-12)
    assert close(loss, sum(per_token) / 6, 1e-12)
    assert close(stats["clip_frac"], 2 / 6, 1e-12)          # (r=1.5, A>0) and (r=0.5, A<0)
    assert close(stats["ratio_mean"], sum(RATIOS) / 6, 1e-12)
    assert close(stats["approx_kl"], sum(r - 1 - math.log(r) for r in RATIOS) / 6, 1e-12)
    loss.backward()
    # d/dlogp of -ratio*A is -ratio*A where unclipped; exactly 0 where the clipped branch is active
    expect = [-r * a / 6 for r, a in zip(RATIOS, ADVS)]
    expect[1] = expect[5] = 0.0
    assert close(logp.grad, [expect], 1e-12)


def test_offpolicy_clip_eps_one_is_ratio_in_0_2():
    ratios, advs = [2.5, 2.5, 0.1, 0.1, 1.9], [1.0, -1.0, -1.0, 1.0, 1.0]
    logp = torch.tensor([ratios], dtype=torch.float64).log().requires_grad_()
    loss, stats = obj.clipped_policy_loss(logp, torch.zeros(1, 5, dtype=torch.float64),
                                          torch.tensor([advs], dtype=torch.float64), torch.ones(1, 5),
                                          eps_low=1.0, eps_high=1.0, aggregation="sum")
    # only (2.5, A>0) is clipped (to 2); the lower bound 0 never binds
    assert close(loss, -2.0 + 2.5 + 0.1 - 0.1 - 1.9, 1e-12)
    assert close(stats["clip_frac"], 1 / 5, 1e-12)
    loss.backward()
    assert logp.grad[0, 0] == 0 and (logp.grad[0, 1:] != 0).all()


def test_clipped_loss_masks_tokens():
    logp = torch.tensor([[0.1, 5.0]], dtype=torch.float64)  # the padded token is wild
    loss, stats = obj.clipped_policy_loss(logp, torch.zeros(1, 2), torch.tensor([[1.0, 100.0]]),
                                          torch.tensor([[1.0, 0.0]]))
    assert close(loss, -math.exp(0.1), 1e-12) and close(stats["clip_frac"], 0.0)


def test_token_mean_vs_seq_mean_on_unequal_lengths():
    # ratio 1 everywhere -> per-token loss = -A
    adv = torch.tensor([[4.0, 0.0, 0.0], [1.0, 1.0, 1.0], [7.0, 7.0, 7.0]])
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])  # lengths 1, 3, 0
    logp = torch.zeros(3, 3)
    tok, _ = obj.clipped_policy_loss(logp, logp, adv, mask, aggregation="token-mean")
    seq, _ = obj.clipped_policy_loss(logp, logp, adv, mask, aggregation="seq-mean-token-mean")
    tot, _ = obj.clipped_policy_loss(logp, logp, adv, mask, aggregation="sum")
    assert close(tok, -(4 + 3) / 4) and close(seq, -(4 + 1) / 2) and close(tot, -7.0)
    with pytest.raises(ValueError, match="aggregation"):
        obj.clipped_policy_loss(logp, logp, adv, mask, aggregation="seq-mean-token-sum")


def slime_policy_loss(logp, old, adv, mask, eps, eps_high, per_token: bool):
    """slime's policy loss for one update of B samples, written from its code: per token
    max(-r A, -clip(r, 1 - eps, 1 + eps_high) A) (ppo_utils.compute_policy_loss); reduced by
    get_sum_of_sample_mean (cp_utils.py: each sample's masked sum over max(its mask sum, 1),
    summed) then scaled by 1 / step_global_batch_size (loss.py, loss_function), or with
    --calculate-per-token-loss the masked sum over the update's token count."""
    ratio = (logp - old).exp()
    per = torch.maximum(-ratio * adv, -ratio.clamp(1 - eps, 1 + eps_high) * adv)
    if per_token:
        return (per * mask).sum() / mask.sum()
    return sum((per[i] * mask[i]).sum() / mask[i].sum().clamp_min(1) for i in range(len(per))) / len(per)


@pytest.mark.parametrize("eps_high", [0.2, 0.28])
def test_seq_mean_is_slime_s_per_sample_loss_and_token_mean_its_per_token_loss(eps_high):
    """What the trainer computes per update (geopd.train.loop._policy_updates: each micro-batch's
    "seq-sum" or "sum" over the update's samples or tokens) is slime's loss, value and gradient,
    for samples of unequal lengths with ratios inside and outside the clip range."""
    g = torch.Generator().manual_seed(3)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0, 0.0]])
    old = torch.randn(3, 5, generator=g, dtype=torch.float64)
    start = old + 0.4 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    adv = torch.randn(3, 5, generator=g, dtype=torch.float64)
    for per_token, aggregation, denom in ((False, "seq-sum", 3.0), (True, "sum", mask.sum())):
        logp = start.clone().requires_grad_()
        loss, _ = obj.clipped_policy_loss(logp, old, adv, mask, eps_low=0.2, eps_high=eps_high,
                                          aggregation=aggregation)
        (loss / denom).backward()
        ref_logp = start.clone().requires_grad_()
        ref = slime_policy_loss(ref_logp, old, adv, mask, 0.2, eps_high, per_token)
        ref.backward()
        assert close(loss / denom, ref, 1e-12) and close(logp.grad, ref_logp.grad, 1e-12)
        named = "token-mean" if per_token else "seq-mean-token-mean"  # the same on one micro-batch
        assert close(obj.clipped_policy_loss(start, old, adv, mask, eps_low=0.2, eps_high=eps_high,
                                             aggregation=named)[0], ref, 1e-12)


# ---- SFT and KL logging ------------------------------------------------------------------------------

def test_sft_loss_equals_cross_entropy_on_masked_tokens():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 5, 13, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 13, (2, 5), generator=g)
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    loss = obj.sft_loss(logits, labels, mask)
    ref_logits = logits.detach().clone().requires_grad_()
    ref = F.cross_entropy(ref_logits[mask.bool()], labels[mask.bool()])
    assert close(loss, ref, 1e-12)
    loss.backward()
    ref.backward()
    assert close(logits.grad, ref_logits.grad, 1e-12)
    empty = obj.sft_loss(logits, labels, torch.zeros(2, 5))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_kl_estimates_known_values():
    s = torch.tensor([[math.log(0.5), math.log(0.9)]])
    t = torch.tensor([[math.log(0.25), -math.inf]])
    kl = obj.kl_estimates(s, t, torch.tensor([[1, 0]]))
    assert close(kl["k1"], math.log(2)) and close(kl["k3"], (0.5 - 1) - math.log(0.5))


# ---- rank-K projection ----------------------------------------------------------------------------------

def _orthonormal(n, k, seed):
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_projection_basis_is_top_right_singular_space_clamped_to_rank():
    U, V = _orthonormal(7, 3, 0), _orthonormal(5, 3, 1)
    delta = (U * torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)) @ V.T  # rank 3, [7, 5]
    B = obj.projection_basis(delta.float(), 16)
    assert B.shape == (5, 3) and B.dtype == torch.float64
    assert close(B.T @ B, torch.eye(3), 1e-10)
    assert close(B @ B.T, V @ V.T, 1e-6)                 # same subspace
    assert obj.projection_basis(delta, 16).shape == (5, 3)   # fp64 dW, fp64 tolerance
    top2 = obj.projection_basis(delta, 2)
    assert close(top2 @ top2.T, V[:, :2] @ V[:, :2].T, 1e-10)
    assert obj.projection_basis(torch.zeros(4, 3), 2).shape == (3, 0)


def test_projected_gradient_lies_in_span_and_projection_is_idempotent():
    V = _orthonormal(6, 2, 2)
    grad = torch.randn(4, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    orig = grad.clone()
    out = obj.project_gradient_(grad, V)
    assert out is grad and not torch.equal(grad, orig)
    assert close(grad - grad @ V @ V.T, torch.zeros(4, 6), 1e-12)   # in span(V)
    assert close((orig - grad) @ V, torch.zeros(4, 2), 1e-12)       # removed part is orthogonal
    again = obj.project_gradient_(grad.clone(), V)
    assert close(again, grad, 1e-12)
    # a row shard (FSDP dim-0 sharding) projects to the same rows; fp32 grad with fp64 basis
    shard = orig[:2].float().clone()
    obj.project_gradient_(shard, V)
    assert close(shard, grad[:2], 1e-6)
    # an all-zero dW gives an empty basis: the gradient is zeroed
    g0 = torch.ones(3, 3)
    obj.project_gradient_(g0, obj.projection_basis(torch.zeros(3, 3), 16))
    assert torch.equal(g0, torch.zeros(3, 3))


def test_projection_rejects_vectors_and_mismatched_shapes():
    with pytest.raises(ValueError, match="matrix"):
        obj.project_gradient_(torch.zeros(5), torch.zeros(5, 1))
    with pytest.raises(ValueError, match="does not fit"):
        obj.project_gradient_(torch.zeros(3, 4), torch.zeros(5, 1))
    with pytest.raises(ValueError, match="matrix"):
        obj.projection_basis(torch.zeros(5), 2)
