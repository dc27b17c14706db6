"""Every advantage and loss of the paper grid, as pure functions on tensors.

Shapes: B sequences x T response positions. `mask` is float or bool, nonzero on the response
tokens that count (padding and prompt are 0). Log-probabilities are those of the sampled tokens.

The paper was run with slime (its OPD flags, sglang teacher router and Megatron `iter_*`
checkpoints); where slime and verl agree we follow both, where they differ it is said below.

    r_t      = log pi_student(a_t|s_t) - log pi_teacher(a_t|s_t)          (sampled token)
    A_OPD    = -coef * r_t                                                  (per token)
    A_RLVR   = GRPO group-normalised reward, broadcast to the response tokens
    A_mix    = alpha * A_OPD + (1 - alpha) * A_RLVR                         (raw, no re-normalisation)
    loss     = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A), ratio = pi/pi_old

`advantages()` chooses the objective by name from a registry (`register_advantage`), as verl's
core_algos registers its advantage estimators; the `objective:` block it reads is a
geopd.spec.Objective, which holds its defaults and checks.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import torch
from torch import Tensor

from geopd.engines.kernels import compute_dtype, token_logprobs
from geopd.spec import SPARSIFY_MODES, Objective

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "sum", "seq-sum")

# Log-ratios beyond this are clamped before exp (verl does the same), so one wild token cannot
# overflow the loss; such tokens are far outside any clip range.
_MAX_LOG_RATIO = 20.0


# ---- advantages ------------------------------------------------------------------------------

def _fmask(mask: Tensor, like: Tensor) -> Tensor:
    if mask.shape != like.shape:
        raise ValueError(f"mask {tuple(mask.shape)} does not match {tuple(like.shape)}")
    return (mask != 0).to(dtype=torch.float32, device=like.device)


@torch.no_grad()
def opd_advantages(student_logp: Tensor, teacher_logp: Tensor, mask: Tensor, coef: float = 1.0) -> Tensor:
    """A_t = -coef * r_t on the sampled tokens, 0 where mask is 0; detached, fp32.

    This is slime's `advantages - opd_kl_coef * (student_logp - teacher_logp)` with a zero
    task reward (pure OPD): the teacher's per-token signal is a fixed reward, not a loss
    to differentiate through.
    """
    if student_logp.shape != teacher_logp.shape:
        raise ValueError(f"student_logp {tuple(student_logp.shape)} and teacher_logp "
                         f"{tuple(teacher_logp.shape)} differ")
    m = _fmask(mask, student_logp)
    r = student_logp.float() - teacher_logp.to(student_logp.device).float()
    # where(): a -inf teacher log-prob on a padding position must not leak nan into the batch
    return torch.where(m > 0, -coef * r, torch.zeros_like(r))


def _groups(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards cannot be split into groups of {group_size}")
    return rewards.reshape(-1, group_size)


@torch.no_grad()
def grpo_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6, scale_std: bool = True) -> Tensor:
    """(r - mean_group) / (std_group + eps) per group of `group_size` consecutive samples.

    std is the unbiased (Bessel, n-1) sample std, i.e. torch.std's default, which is what
    verl's GRPO estimator (`torch.std` per uid), slime's group normalisation
    (`rewards.std(dim=-1)`) and TRL all use; eps is added to std, not under the root. For
    binary rewards of a group of 8 with p correct this gives std = sqrt(8/7 p(1-p)).
    A group of 1 has no unbiased std, so group_size must be >= 2.
    """
    if group_size < 2:
        raise ValueError(f"GRPO needs at least 2 samples per prompt, got group_size={group_size}")
    g = _groups(rewards.float(), group_size)
    if not g.numel():  # no samples (a rank without a share, a step whose groups were all dropped)
        return rewards.float()
    centered = g - g.mean(dim=1, keepdim=True)
    if scale_std:
        centered = centered / (g.std(dim=1, keepdim=True) + eps)
    return centered.reshape(-1)


@torch.no_grad()
def nonzero_variance_groups(rewards: Tensor, group_size: int) -> Tensor:
    """Bool [N]: True for samples whose group has at least two distinct rewards.

    DAPO dynamic filtering: a group whose rewards are all equal carries no GRPO signal and is
    dropped (from the loss and from its token count).
    """
    g = _groups(rewards, group_size)
    keep = g.amax(dim=1) != g.amin(dim=1)
    return keep.repeat_interleave(group_size)


def broadcast_sequence_advantage(adv: Tensor, mask: Tensor) -> Tensor:
    """[N] sequence advantages -> [N,T], the same value on every response token, 0 elsewhere."""
    if adv.dim() != 1 or mask.dim() != 2 or mask.shape[0] != adv.shape[0]:
        raise ValueError(f"expected adv [N] and mask [N,T], got {tuple(adv.shape)} and {tuple(mask.shape)}")
    return adv.float().to(mask.device).unsqueeze(1) * (mask != 0).float()


def mix_advantages(a_opd: Tensor, a_rlvr: Tensor, alpha: float) -> Tensor:
    """alpha * A_OPD + (1 - alpha) * A_RLVR, both [B,T]; raw, no per-batch std normalisation."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if a_opd.shape != a_rlvr.shape:
        raise ValueError(f"A_OPD {tuple(a_opd.shape)} and A_RLVR {tuple(a_rlvr.shape)} differ")
    return alpha * a_opd + (1.0 - alpha) * a_rlvr


def _keep_count(n_valid: Tensor, rho: float) -> Tensor:
    # ceil: at least a rho fraction survives, and every non-empty response keeps >= 1 token.
    # The 1e-9 keeps exact products (0.25 * 8) from rounding up through float error.
    return torch.ceil(n_valid.double() * rho - 1e-9).clamp_min(0).long()


@torch.no_grad()
def sparsify(r: Tensor, mask: Tensor, rho: float, mode: str,
             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Token mask m [B,T] (bool) and per-token multiplier scale = m * T_i / sum_t m (fp32).

    Per sequence i with T_i valid response tokens, k_i = ceil(rho * T_i) of them are kept
    (paper G.2: "masking is applied independently for each sample"; the compensation
    T / sum_tau m_tau sums over that sample's response tokens, so T is T_i, not a batch total).

    - "topkl": the k_i tokens with the largest signed r_t (paper: "ranked by r_t and the
      largest rho fraction is retained; ... where the student is most over-confident relative
      to the teacher" -- signed, not |r_t|). Ties go to the earlier position.
    - "random": a uniformly random k_i-subset of the valid tokens, drawn from `generator`
      (exactly k_i, not Bernoulli(rho), so sum(m) and the scale are fixed per sequence).
    """
    if mode not in SPARSIFY_MODES:
        raise ValueError(f"unknown sparsify mode {mode!r}; known: {', '.join(SPARSIFY_MODES)}")
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"sparsify rho must lie in (0, 1], got {rho}")
    if r.dim() != 2:
        raise ValueError(f"r must be [B,T], got shape {tuple(r.shape)}")
    valid = _fmask(mask, r) > 0
    B, T = r.shape
    if mode == "topkl":
        if not torch.isfinite(r[valid]).all():
            raise ValueError("sparsify(topkl): r_t is not finite on some response token")
        key = -r.float()
    else:
        key = torch.rand((B, T), generator=generator, device=r.device if generator is None
                         else generator.device)
        key = key.to(r.device)
    key = key.masked_fill(~valid, math.inf)
    order = torch.argsort(key, dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(T, device=r.device).expand(B, T))
    n_valid = valid.sum(dim=1)
    k = _keep_count(n_valid, rho)
    m = (rank < k.unsqueeze(1)) & valid
    scale = m.float() * (n_valid.float() / k.clamp_min(1).float()).unsqueeze(1)
    return m, scale


# ---- the objectives, by name ------------------------------------------------------------------

# name -> fn(objective block, inputs, generator) -> per-token advantages [B,T]
ADVANTAGES: dict[str, Callable[..., Tensor]] = {}


def register_advantage(name: str):
    """Register an objective's advantage function under `name` (a run's method)."""
    def register(fn):
        ADVANTAGES[name] = fn
        return fn
    return register


def _need(inputs: Mapping, objective: str, *keys: str):
    missing = [k for k in keys if inputs.get(k) is None]
    if missing:
        raise ValueError(f"objective {objective!r} needs inputs {missing}")
    return [inputs[k] for k in keys]


def _opd_signal(o: Objective, inputs: Mapping, generator, name: str) -> Tensor:
    """A_OPD, sparsified when the block says so."""
    mask, s_logp, t_logp = _need(inputs, name, "mask", "student_logp", "teacher_logp")
    a_opd = opd_advantages(s_logp, t_logp, mask, coef=o.coef)
    sp = o.sparsify
    if sp is not None:
        r = (s_logp.float() - t_logp.to(s_logp.device).float()).masked_fill(mask == 0, 0.0)
        _, scale = sparsify(r, mask, float(sp["rho"]), sp["mode"], generator=generator)
        a_opd = a_opd * scale.to(a_opd.device)
    return a_opd


def _rlvr_signal(o: Objective, inputs: Mapping, name: str) -> Tensor:
    """A_RLVR on every response token."""
    mask, rewards, group_size = _need(inputs, name, "mask", "rewards", "group_size")
    seq = grpo_advantages(rewards, int(group_size), scale_std=o.scale_std)
    return broadcast_sequence_advantage(seq, mask)


@register_advantage("opd")
def opd_objective(o: Objective, inputs: Mapping, generator=None) -> Tensor:
    return _opd_signal(o, inputs, generator, "opd")


@register_advantage("rlvr")
def rlvr_objective(o: Objective, inputs: Mapping, generator=None) -> Tensor:
    return _rlvr_signal(o, inputs, "rlvr")


@register_advantage("mix")
def mix_objective(o: Objective, inputs: Mapping, generator=None) -> Tensor:
    a_opd = _opd_signal(o, inputs, generator, "mix")
    a_rlvr = _rlvr_signal(o, inputs, "mix")
    return mix_advantages(a_opd, a_rlvr.to(a_opd.device), float(o.alpha))


def advantages(objective: str, config: Objective | Mapping | None = None, inputs: Mapping | None = None, *,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Per-token advantages [B,T] and loss weights [B,T] for objective "opd", "rlvr" or "mix".

    config: the run's `objective:` block (a geopd.spec.Objective, or its mapping: coef, alpha,
    sparsify: {mode, rho}, scale_std; the loss keys are accepted and ignored here). inputs: mask,
    student_logp, teacher_logp (opd, mix), rewards [N] and group_size (rlvr, mix).

    Sparsification acts on the OPD signal only (paper G.2: the compensated r~_t is what is
    subtracted from the advantage), so in "mix" the RLVR part stays dense.

    The returned weight is 1.0 on every valid response token, including tokens that
    sparsification zeroed: they stay in the token-mean denominator, which is what makes the
    T_i / sum(m) compensation restore the dense magnitude (with a denominator of kept tokens
    only, the signal would be inflated a further 1/rho). Callers multiply `adv * weight` and
    may zero weights further (e.g. DAPO's zero-variance filter for rlvr).
    """
    o = Objective.from_dict(config)
    o.check_method(objective)
    inputs = dict(inputs or {})
    (mask,) = _need(inputs, objective, "mask")
    weight = (mask != 0).float()
    adv = ADVANTAGES[objective](o, inputs, generator)
    return adv, weight.to(adv.device)


# ---- losses ----------------------------------------------------------------------------------

def _aggregate(per_token: Tensor, m: Tensor, aggregation: str) -> Tensor:
    if aggregation == "token-mean":  # DAPO: every valid token of the batch weighs the same
        return (per_token * m).sum() / m.sum().clamp_min(1.0)
    if aggregation == "seq-mean-token-mean":  # GRPO paper: mean per sequence, then over sequences
        n = m.sum(dim=-1)
        seq = (per_token * m).sum(dim=-1) / n.clamp_min(1.0)
        has = (n > 0).float()
        return (seq * has).sum() / has.sum().clamp_min(1.0)
    if aggregation == "sum":  # the caller divides by a global token count (several minibatches/ranks)
        return (per_token * m).sum()
    if aggregation == "seq-sum":  # per-sequence token means, summed; the caller divides by a global
        n = m.sum(dim=-1)          # sequence count (seq-mean-token-mean across ranks)
        return ((per_token * m).sum(dim=-1) / n.clamp_min(1.0)).sum()
    raise ValueError(f"unknown aggregation {aggregation!r}; known: {', '.join(AGGREGATIONS)}")


def clipped_policy_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor,
                        eps_low: float = 0.2, eps_high: float = 0.28,
                        aggregation: str = "token-mean") -> tuple[Tensor, dict[str, Tensor]]:
    """PPO/GRPO clipped surrogate: per token -min(ratio A, clip(ratio, 1-eps_low, 1+eps_high) A).

    ratio = exp(logp - old_logp); old_logp is the behaviour policy's log-prob of the sampled
    token (detached). On-policy that is the student before the update; for off-policy OPD
    (teacher rollouts) it is the teacher's, and eps_low = eps_high = 1.0 clips the ratio to
    [0, 2]: the lower bound can never bind (ratio > 0), so the only effect is that tokens with
    A > 0 stop pulling once pi_student / pi_behaviour > 2 -- "effectively inactive" clipping.

    stats (detached, token means over the mask): clip_frac (fraction of tokens where the
    clipped branch is the active one, as in verl/slime), ratio_mean, approx_kl (k3 estimate of
    KL(old || new) on tokens sampled from old: (ratio - 1) - log ratio).
    """
    if not (logp.shape == old_logp.shape == adv.shape):
        raise ValueError(f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and adv "
                         f"{tuple(adv.shape)} must have one shape")
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"clip eps must be >= 0, got eps_low={eps_low}, eps_high={eps_high}")
    ct = compute_dtype(logp)
    m = _fmask(mask, logp).to(ct)
    old = old_logp.detach().to(device=logp.device, dtype=ct)
    a = adv.detach().to(device=logp.device, dtype=ct)
    log_ratio = (logp.to(ct) - old).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    unclipped = -ratio * a
    clipped = -ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * a
    per_token = torch.maximum(unclipped, clipped)
    loss = _aggregate(per_token, m, aggregation)

    with torch.no_grad():
        n = m.sum().clamp_min(1.0)
        lr = log_ratio.detach()
        stats = {
            "clip_frac": ((clipped > unclipped).to(ct) * m).sum() / n,
            "ratio_mean": (ratio.detach() * m).sum() / n,
            "approx_kl": ((torch.expm1(lr) - lr) * m).sum() / n,
        }
    return loss, stats


def sft_loss(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Token-mean next-token cross entropy over masked tokens.

    Shift convention: `logits[:, t]` is the prediction for `labels[:, t]`; the caller has
    already shifted (logits[:, :-1] against ids[:, 1:]). An all-zero mask gives 0 (with grad).
    """
    logp = token_logprobs(logits, labels)
    m = _fmask(mask, logp)
    return -(logp * m).sum() / m.sum().clamp_min(1.0)


@torch.no_grad()
def kl_estimates(logp_s: Tensor, logp_t: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Token-mean k1 and k3 estimates of KL(student || teacher) from sampled-token log-probs.

    k1 = log s - log t = r_t (unbiased, can be negative); k3 = (t/s - 1) - log(t/s) >= 0.
    Both are unbiased only for tokens sampled from the student; on teacher rollouts
    (off-policy) they are logged as the same statistics but estimate no KL exactly.
    """
    m = _fmask(mask, logp_s)
    d = torch.where(m > 0, logp_t.to(logp_s.device).float() - logp_s.float(), torch.zeros_like(m))
    n = m.sum().clamp_min(1.0)
    return {"k1": (-d * m).sum() / n, "k3": ((torch.expm1(d) - d) * m).sum() / n}


# ---- rank-K gradient projection (rank16 runs) -----------------------------------------------

@torch.no_grad()
def projection_basis(delta: Tensor, k: int) -> Tensor:
    """V [in, k'] = top-k' right singular vectors of dW [out, in] (float64 SVD, float64 result).

    k' = min(k, numerical rank of dW), the rank counted as torch.linalg.matrix_rank does on
    dW's own dtype (sigma > max(out, in) * eps(dtype) * sigma_max; pass an fp64 dW for the
    fp64 tolerance): singular vectors of zero singular values are arbitrary, so they are not
    part of "the" update subspace. A dW of exact zeros gives an empty basis and its gradient
    projects to zero (the literal reading of g V V^T).
    """
    if delta.dim() != 2:
        raise ValueError(f"projection_basis: dW must be a matrix, got shape {tuple(delta.shape)}")
    if k < 1:
        raise ValueError(f"projection_basis: k must be >= 1, got {k}")
    eps = torch.finfo(delta.dtype if delta.is_floating_point() else torch.float64).eps
    d = delta.detach().to(torch.float64)
    _, s, vh = torch.linalg.svd(d, full_matrices=False)
    rank = int((s > s[0] * max(d.shape) * eps).sum()) if s.numel() and s[0] > 0 else 0
    return vh[: min(k, rank)].T.contiguous()


@torch.no_grad()
def project_gradient_(grad: Tensor, V: Tensor) -> Tensor:
    """In place g <- g V V^T (rows of g projected onto span(V)); returns grad.

    Applies to every 2-D parameter, embeddings and lm_head included (SPEC: "every matrix
    gradient"; an embedding's right singular space is the hidden dimension, so each token's
    embedding update is confined to span(V)). 1-D parameters (norm gains, biases) are not
    matrices and are not projected: passing one is a ValueError. Works on a row shard of g
    (FSDP shards dim 0), since V acts on the input dimension only.
    """
    if grad.dim() != 2:
        raise ValueError(f"project_gradient_: only matrix gradients are projected, got shape {tuple(grad.shape)}")
    if V.dim() != 2 or V.shape[0] != grad.shape[1]:
        raise ValueError(f"project_gradient_: basis {tuple(V.shape)} does not fit gradient {tuple(grad.shape)}")
    v = V.to(device=grad.device, dtype=grad.dtype)
    grad.copy_((grad @ v) @ v.T)
    return grad
