"""Per-token log-probs and entropies from hidden states, through lm_head in chunks.

Nothing here ever holds [B, T, V] logits. The decoder runs once; the hidden states of the
positions that matter (response or loss tokens, picked by a mask) go through lm_head
`chunk_tokens` rows at a time, and each chunk's [chunk, V] logits are reduced to log p(token)
(and the entropy) in fp32 blocks at once. Backward recomputes each chunk's logits from the
saved hidden states and the head weight instead of storing them (as Liger's and verl's fused
linear-cross-entropy kernels do), and writes the logits' gradient into the same buffer.
Peak extra memory: one chunk of logits in the head's dtype, fp32 blocks of 2**24 elements and
(backward) an fp32 accumulator for the head weight's gradient.

The same function serves training (with autograd), the old-policy recomputation, rollout
log-probs and the HF teacher, so all of them see one computation.

FSDP2: the decoder's layers are FSDP units and the head (tied to the embedding in Qwen3-4B)
lives in the root unit. Calling `model.model(...)` and then `model.lm_head` directly would skip
the root's pre-forward all-gather (sharded weights) and its post-backward reduce-scatter.
`attach(model)` installs `token_stats` as a method of the root module and registers it with
`register_fsdp_forward_method`, so the root unshards once around the decoder and every chunk
of the head, and a tied weight is the one unsharded parameter both use.

Micro-batches: rows sorted by length and packed greedily under a padded-token budget
(length-bucketed, not packed: packing needs varlen attention kernels that the CPU path lacks);
each micro-batch is cut to the columns its rows use. Under FSDP every rank must run the same
number of forward/backward calls, so callers pad their plans with `None` (a zero-weight dummy)
to the largest count over ranks.
"""
from __future__ import annotations

import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from geopd.engines.chat import position_ids
from geopd.engines.kernels import CHUNK_ELEMENTS, logprob_grad_, logsumexp_entropy, picked_logprob

METHOD = "geopd_token_stats"


def default_chunk_tokens(vocab_size: int) -> int:
    """Rows of lm_head output per chunk when the run sets none: ~2**24 logits (64 MiB in fp32)."""
    return max(1, CHUNK_ELEMENTS // max(1, vocab_size))


# ---- the head in chunks ---------------------------------------------------------------------

class _HeadLogProb(torch.autograd.Function):
    """log softmax((hidden @ W.T + b) / T)[tokens] and its entropy, chunk by chunk.

    Saves hidden, W, b, tokens and the fp32 logsumexp; never the logits. The weight's gradient
    is accumulated in fp32 across chunks (each chunk's bf16 product is rounded once, then summed
    exactly) and returned in the weight's dtype.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, tokens: Tensor, temperature: float,
                chunk: int, with_entropy: bool):
        n = hidden.shape[0]
        ct = torch.promote_types(hidden.dtype, torch.float32)
        logp = torch.empty(n, dtype=ct, device=hidden.device)
        lse = torch.empty_like(logp)
        ent = torch.empty_like(logp) if with_entropy else None
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            logits = F.linear(hidden[s:e], weight, bias).unsqueeze(0)
            c_lse, c_ent = logsumexp_entropy(logits, None, temperature, with_entropy)
            lse[s:e] = c_lse[0]
            logp[s:e] = picked_logprob(logits, tokens[None, s:e], c_lse, temperature)[0]
            if ent is not None:
                ent[s:e] = c_ent[0]
            del logits
        ctx.save_for_backward(hidden, weight, bias, tokens, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        if ent is not None:
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp: Tensor, _grad_ent):
        hidden, weight, bias, tokens, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        acc = torch.promote_types(weight.dtype, torch.float32)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None
        for s in range(0, hidden.shape[0], ctx.chunk):
            e = min(hidden.shape[0], s + ctx.chunk)
            logits = F.linear(hidden[s:e], weight, bias).unsqueeze(0)
            g = logprob_grad_(logits, logits, tokens[None, s:e], lse[None, s:e], grad_logp[None, s:e],
                                   None, ctx.temperature)[0]  # the logits' buffer now holds d/dlogits
            if need_h:
                grad_h[s:e] = g @ weight
            if need_w:
                if g.dtype == acc:
                    grad_w.addmm_(g.t(), hidden[s:e])
                else:
                    grad_w += (g.t() @ hidden[s:e]).to(acc)
            if need_b:
                grad_b += g.sum(0, dtype=acc)
            del logits, g
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None, None)


def head_logprobs(hidden: Tensor, head: torch.nn.Module, tokens: Tensor, *, temperature: float = 1.0,
                  chunk_tokens: int | None = None, entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """log p(tokens) [N] (fp32, differentiable) and entropy [N] (or None) from hidden [N, H]
    through a linear `head` (weight [V, H], optional bias), `chunk_tokens` rows at a time."""
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"the output embedding is a {type(head).__name__}, not a Linear head")
    if head._forward_hooks or head._forward_pre_hooks:
        raise ValueError("lm_head has forward hooks; the chunked log-prob path calls its weight directly "
                         "and would skip them")
    chunk = int(chunk_tokens or default_chunk_tokens(head.out_features))
    tok = tokens.to(device=hidden.device, dtype=torch.long)
    return _HeadLogProb.apply(hidden, head.weight, head.bias, tok, float(temperature), chunk, bool(entropy))


# ---- the whole model ------------------------------------------------------------------------

def _check_head_config(model) -> None:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        raise ValueError(f"{type(model).__name__}: logit soft-capping/scaling is not supported by the "
                         "chunked log-prob path")


def _token_stats(model, input_ids: Tensor, attention_mask: Tensor, token_mask: Tensor, temperature: float = 1.0,
                 chunk_tokens: int | None = None, entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    _check_head_config(model)
    out = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids(attention_mask), use_cache=False)
    hidden = out.last_hidden_state
    # Token t is predicted from the hidden state at t-1; column 0 has no prediction.
    sel = token_mask[:, 1:].bool()
    logp_sel, ent_sel = head_logprobs(hidden[:, :-1][sel], model.get_output_embeddings(), input_ids[:, 1:][sel],
                                      temperature=temperature, chunk_tokens=chunk_tokens, entropy=entropy)

    def place(values: Tensor) -> Tensor:
        return F.pad(values.new_zeros(sel.shape).masked_scatter(sel, values), (1, 0))

    return place(logp_sel), (place(ent_sel) if ent_sel is not None else None)


def attach(model) -> None:
    """Make `token_stats` a forward method of `model` (after `fully_shard`, if any): FSDP2
    all-gathers the root unit around it and reduce-scatters its gradients after backward."""
    from torch.distributed.fsdp import register_fsdp_forward_method

    setattr(model, METHOD, types.MethodType(_token_stats, model))
    register_fsdp_forward_method(model, METHOD)


def token_stats(model, input_ids: Tensor, attention_mask: Tensor, token_mask: Tensor, *, temperature: float = 1.0,
                chunk_tokens: int | None = None, entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """log p(input_ids[:, t] | input_ids[:, :t]) at temperature T, [B, L] fp32, where token_mask
    (bool or 0/1, [B, L]) is set and 0 elsewhere (column 0 always 0) -- the alignment of
    `Rollouts.response_logprobs`; plus the per-token entropy there when `entropy`.
    Differentiable w.r.t. the model when grad is enabled."""
    from torch.distributed.fsdp import FSDPModule

    method = getattr(model, METHOD, None)
    if method is None:
        if isinstance(model, FSDPModule):
            raise RuntimeError("an FSDP-sharded model needs logprobs.attach(model) after fully_shard")
        return _token_stats(model, input_ids, attention_mask, token_mask.bool(), temperature, chunk_tokens, entropy)
    # bool mask: FSDP casts floating inputs to its param dtype
    return method(input_ids, attention_mask, token_mask.bool(), temperature, chunk_tokens, entropy)


# ---- micro-batches ----------------------------------------------------------------------------

@dataclass(frozen=True)
class MicroBatch:
    rows: Tensor  # row indices into the batch
    start: int    # first column any of the rows attends
    stop: int     # one past the last such column

    @property
    def tokens(self) -> int:
        """Padded tokens the forward pass computes."""
        return len(self.rows) * (self.stop - self.start)


def plan_micro_batches(attention_mask: Tensor, rows: Tensor | None = None, *, token_budget: int | None = None,
                       buckets: int | None = None, max_rows: int | None = None) -> list[MicroBatch]:
    """Split `rows` (default: all) of a padded batch into micro-batches, rows sorted by their
    last attended column (stable; for right-padded data, by length).

    token_budget: greedy, each micro-batch's rows x spanned columns <= budget (a single longer
    row still gets its own micro-batch); else `buckets` equal-count parts; else one. max_rows
    caps the rows of any micro-batch. Deterministic: a resumed run plans the same batches.
    """
    if rows is None:
        rows = torch.arange(attention_mask.shape[0])
    rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
    if rows.numel() == 0:
        return []
    am = attention_mask[rows].bool()
    if not bool(am.any(1).all()):
        raise ValueError("plan_micro_batches: a row attends no token")
    width = am.shape[1]
    first = am.int().argmax(1)
    last = width - 1 - am.flip(1).int().argmax(1)
    order = torch.sort(last, stable=True).indices
    rows, first, last = rows[order], first[order], last[order]
    cap = max_rows or rows.numel()
    if token_budget is not None:
        groups, begin, lo, hi = [], 0, int(first[0]), int(last[0])
        for i in range(1, rows.numel()):
            nlo, nhi = min(lo, int(first[i])), max(hi, int(last[i]))
            if (i - begin + 1) * (nhi - nlo + 1) > token_budget or i - begin >= cap:
                groups.append((begin, i))
                begin, nlo, nhi = i, int(first[i]), int(last[i])
            lo, hi = nlo, nhi
        groups.append((begin, rows.numel()))
    else:
        parts = min(buckets or 1, rows.numel())
        parts = max(parts, -(-rows.numel() // cap))
        bounds = torch.tensor_split(torch.arange(rows.numel()), parts)
        groups = [(int(b[0]), int(b[-1]) + 1) for b in bounds if len(b)]
    return [MicroBatch(rows[a:b], int(first[a:b].min()), int(last[a:b].max()) + 1) for a, b in groups]


def dummy_inputs(device) -> tuple[Tensor, Tensor, Tensor]:
    """ids, attention and token mask of the zero-weight micro-batch a rank runs when it has
    fewer micro-batches than another (FSDP's collectives need the same calls on every rank)."""
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    return ids, torch.ones_like(ids), torch.ones_like(ids, dtype=torch.bool)
