"""Teacher scoring: the teacher's log-prob of every sampled response token.

`score(rollouts)` returns [N, L] float32 with column t = log p_teacher(sequences[t] |
sequences[<t]) at temperature 1 (raw logits) where `response_mask` is 1, and 0 elsewhere -- the
alignment of `Rollouts.response_logprobs`. The per-token OPD advantage is then
-(student - teacher) on the same columns.

The teacher must tokenize exactly as the student does (the advantage compares log-probs of the
same token ids): `make_teacher` checks the tokenizers before any weights are loaded.
"""
from __future__ import annotations

import os
from typing import Protocol

import torch

from geopd.errors import UserError
from geopd.train.rollout import Rollouts, sequence_logprobs


class TeacherScorer(Protocol):
    def score(self, rollouts: Rollouts) -> torch.Tensor: ...


class HFTeacher:
    """A transformers model in eval mode, no grad. Scored like the trainer scores the student:
    lm_head in chunks of `chunk_tokens` rows (never a [batch, L, vocab] tensor), over
    micro-batches of at most `batch_size` sequences and `micro_batch_tokens` padded tokens."""

    def __init__(self, model, *, batch_size: int = 64, micro_batch_tokens: int | None = None,
                 chunk_tokens: int | None = None):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.batch_size = batch_size
        self.micro_batch_tokens = micro_batch_tokens
        self.chunk_tokens = chunk_tokens

    @torch.no_grad()
    def score(self, rollouts: Rollouts) -> torch.Tensor:
        return sequence_logprobs(self.model, rollouts.sequences, rollouts.attention_mask, rollouts.response_mask,
                                 temperature=1.0, batch_size=self.batch_size,
                                 micro_batch_tokens=self.micro_batch_tokens, chunk_tokens=self.chunk_tokens)


class VLLMTeacher:
    """Teacher log-probs from vLLM's prompt log-probs: each full sequence (prompt + response) is
    sent as a prompt with prompt_logprobs=0 and max_tokens=1, so vLLM returns log p of every
    prompt token given its prefix, from raw logits (T=1). VERIFIED-ON-GPU: pending."""

    def __init__(self, model_path: str | os.PathLike, *, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.4, dtype: str = "bfloat16", max_model_len: int | None = None,
                 **llm_kwargs):
        try:
            import vllm
        except ImportError:
            raise UserError("teacher backend 'vllm' needs the optional dependency vllm "
                            "(pip install 'geopd[gpu]'); use backend 'hf' on CPU") from None
        kwargs = dict(model=str(model_path), tensor_parallel_size=tensor_parallel_size,
                      gpu_memory_utilization=gpu_memory_utilization, dtype=dtype, generation_config="vllm",
                      **llm_kwargs)
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        self.llm = vllm.LLM(**kwargs)
        self.model = None  # no transformers module: off-policy sampling from it needs the vllm rollout backend
        self.model_path = str(model_path)

    def score(self, rollouts: Rollouts) -> torch.Tensor:
        from vllm import SamplingParams

        seq, attn, rmask = rollouts.sequences, rollouts.attention_mask, rollouts.response_mask
        rows = [seq[j][attn[j].bool()].tolist() for j in range(seq.shape[0])]
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        outs = self.llm.generate([{"prompt_token_ids": r} for r in rows], params, use_tqdm=False)
        scores = torch.zeros(seq.shape, dtype=torch.float32)
        for j, out in enumerate(outs):
            cols = attn[j].nonzero().squeeze(1).tolist()  # column of each attended token
            for k, col in enumerate(cols):
                if k == 0 or not rmask[j, col]:
                    continue
                entry = out.prompt_logprobs[k]
                scores[j, col] = entry[rows[j][k]].logprob
        return scores


def make_teacher(backend: str, source: str | os.PathLike, student_tokenizer, *, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, **kwargs) -> TeacherScorer:
    """Check that the teacher at `source` tokenizes like the student, then load it."""
    from geopd.train.checkpoint import check_same_tokenizer, load_model, load_tokenizer

    if backend not in ("hf", "vllm"):
        raise UserError(f"unknown teacher backend {backend!r}: choose 'hf' or 'vllm'")
    teacher_tokenizer = load_tokenizer(source)
    check_same_tokenizer(student_tokenizer, teacher_tokenizer, "the student", f"the teacher {source}")
    if backend == "hf":
        return HFTeacher(load_model(source, dtype=dtype, device=device), **kwargs)
    return VLLMTeacher(source, **kwargs)
