"""Per-token log-probabilities and entropies from logits, reduced in fp32 blocks.

log softmax(logits / T)[token] and the entropy of softmax(logits / T) without ever holding a
full fp32 copy of [B, T, V] logits: the logsumexp, the picked log-prob and the backward's
softmax run on blocks of about CHUNK_ELEMENTS values in the compute dtype (fp32, or fp64 for
fp64 logits). `token_logprobs` and `entropy` take whole logits; geopd.engines.logprobs runs the
same pieces (`logsumexp_entropy`, `picked_logprob`, `logprob_grad_`) on chunks of lm_head's
output, so the trainer, the rollout engines and the teacher share one computation.
"""
from __future__ import annotations

import torch
from torch import Tensor

# Rows of logits processed at once by the fp32 log-softmax pieces: bounds the temporary to
# about 2**24 floats (64 MiB) whatever the vocabulary.
CHUNK_ELEMENTS = 1 << 24


def _blocks(logits: Tensor, chunk_size: int | None):
    """Yield (b, t0, t1) covering a [B,T,V] tensor with views of at most ~chunk elements."""
    B, T, V = logits.shape
    rows = chunk_size or max(1, CHUNK_ELEMENTS // max(V, 1))
    for b in range(B):
        for t0 in range(0, T, rows):
            yield b, t0, min(T, t0 + rows)


def _as_3d(logits: Tensor, name: str) -> Tensor:
    if logits.dim() == 3:
        return logits
    if logits.dim() == 2:
        return logits.unsqueeze(0)
    raise ValueError(f"{name}: expected logits [B,T,V] or [T,V], got shape {tuple(logits.shape)}")


def compute_dtype(x: Tensor) -> torch.dtype:
    # bf16/fp16 logits are reduced in fp32; fp32 and fp64 keep their precision
    return torch.promote_types(x.dtype, torch.float32)


def _scaled(x: Tensor, dtype: torch.dtype, temperature: float) -> Tensor:
    # The temperature divides in the compute dtype: bf16 logits are not rounded a second time.
    x = x.to(dtype)
    return x if temperature == 1.0 else x / temperature


def logsumexp_entropy(x3: Tensor, chunk_size: int | None, temperature: float = 1.0,
            with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """Per-row logsumexp (and entropy) of softmax(x3 / T), block by block in the compute dtype."""
    ct = compute_dtype(x3)
    lse = torch.empty(x3.shape[:2], dtype=ct, device=x3.device)
    ent = torch.empty_like(lse) if with_entropy else None
    for b, t0, t1 in _blocks(x3, chunk_size):
        x = _scaled(x3[b, t0:t1], ct, temperature)
        block_lse = torch.logsumexp(x, dim=-1)
        lse[b, t0:t1] = block_lse
        if ent is not None:
            logp = x - block_lse.unsqueeze(-1)
            # 0 * -inf from masked vocabulary entries must count as 0, not nan
            ent[b, t0:t1] = -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)
    return lse, ent


def picked_logprob(x3: Tensor, tokens: Tensor, lse: Tensor, temperature: float) -> Tensor:
    return _scaled(x3.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), lse.dtype, temperature) - lse


def logprob_grad_(out: Tensor, x3: Tensor, tokens: Tensor, lse: Tensor, grad_out: Tensor,
                   chunk_size: int | None, temperature: float) -> Tensor:
    """out <- d(sum grad_out * log softmax(x3 / T)[tokens]) / d x3, block by block.

    = grad_out / T * (onehot(tokens) - softmax(x3 / T)). `out` may be `x3` itself: each block is
    read before it is overwritten, so the gradient can take the logits' memory.
    """
    grad_out = grad_out.to(lse.dtype)
    if temperature != 1.0:
        grad_out = grad_out / temperature
    for b, t0, t1 in _blocks(x3, chunk_size):
        g = grad_out[b, t0:t1].unsqueeze(-1)
        block = torch.exp(_scaled(x3[b, t0:t1], lse.dtype, temperature) - lse[b, t0:t1].unsqueeze(-1)).mul_(-g)
        block.scatter_add_(-1, tokens[b, t0:t1].unsqueeze(-1), g)
        out[b, t0:t1] = block.to(out.dtype)
    return out


class _TokenLogProb(torch.autograd.Function):
    """log softmax(logits / T)[token] in fp32 without materialising a full fp32 log-softmax.

    Forward keeps only the [B,T] logsumexp; backward rebuilds softmax block by block, so the
    only full-size tensor created is the gradient itself (in the logits' dtype).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, tokens: Tensor, chunk_size, temperature: float):
        lse, _ = logsumexp_entropy(logits, chunk_size, temperature)
        ctx.save_for_backward(logits, tokens, lse)
        ctx.chunk_size, ctx.temperature = chunk_size, temperature
        return picked_logprob(logits, tokens, lse, temperature)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, tokens, lse = ctx.saved_tensors
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        logprob_grad_(grad, logits, tokens, lse, grad_out, ctx.chunk_size, ctx.temperature)
        return grad, None, None, None


def token_logprobs(logits: Tensor, tokens: Tensor, *, chunk_size: int | None = None,
                   temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature)[tokens], logits [B,T,V] (or [T,V]), tokens [B,T] (or [T]).

    Reduced in fp32 (fp64 if the logits are fp64); bf16/fp16 logits are never copied whole
    to fp32: the logsumexp and the backward's softmax run on blocks of rows.
    `logits[..., t, :]` must already be the distribution that produced `tokens[..., t]`
    (the caller shifts: logits[:, :-1] with ids[:, 1:]). Differentiable w.r.t. logits.
    The trainer never holds [B,T,V] logits: geopd.engines.logprobs runs these same reductions on
    chunks of lm_head's output.
    """
    x3 = _as_3d(logits, "token_logprobs")
    if tokens.shape != logits.shape[:-1]:
        raise ValueError(f"token_logprobs: tokens {tuple(tokens.shape)} do not match logits "
                         f"{tuple(logits.shape)}[:-1]")
    tok = tokens.reshape(x3.shape[:2]).to(device=x3.device, dtype=torch.long)
    out = _TokenLogProb.apply(x3, tok, chunk_size, float(temperature))
    return out.reshape(tokens.shape)


@torch.no_grad()
def entropy(logits: Tensor, *, chunk_size: int | None = None, temperature: float = 1.0) -> Tensor:
    """Per-token entropy of softmax(logits / T), [B,T] (or [T]), fp32 or wider. For logging: no gradient."""
    x3 = _as_3d(logits, "entropy")
    _, ent = logsumexp_entropy(x3, chunk_size, float(temperature), with_entropy=True)
    return ent.reshape(logits.shape[:-1])

