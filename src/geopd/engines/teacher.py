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

from geopd.engines import models
from geopd.engines.rollout import Rollouts, sequence_logprobs
from geopd.engines.vllm_engine import Engine
from geopd.errors import UserError


class TeacherScorer(Protocol):
    def score(self, rollouts: Rollouts) -> torch.Tensor: ...

    def sleep(self) -> None: ...  # free accelerator memory between scoring calls (see rollout.py)

    def wake(self) -> None: ...


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

    def sleep(self) -> None:  # engine interface (geopd.engines.rollout): nothing to free
        pass

    def wake(self) -> None:
        pass


class VLLMTeacher:
    """Teacher log-probs from vLLM's prompt log-probs: each full sequence (prompt + response, the
    student's exact token ids) is sent as a prompt with prompt_logprobs=0 and max_tokens=1, so
    vLLM returns log p of every prompt token given its prefix, from raw logits (T=1).

    Placement: a colocated engine in every trainer process (geopd.engines.vllm_engine), with the
    config's teacher_engine.vllm settings; its tensor_parallel must equal the rollout engine's
    when both are vLLM (one size per process in vLLM 0.32). Under tensor parallelism the ranks
    of a TP group score the union of their sequences and each keeps its own. With `sleep` on
    CUDA it sleeps at level 1 (weights parked in CPU memory) between scoring calls."""

    def __init__(self, model_path: str | os.PathLike, *, settings: dict | None = None, seed: int = 0):
        # processed log-probs: equal to the raw ones at scoring temperature 1.0, and what an
        # off-policy run needs when it samples from this same engine (VLLMRollout.on_engine).
        self.engine = Engine(model_path, settings, role="teacher", seed=seed, sleep_level=1,
                             logprobs_mode="processed_logprobs", where="teacher_engine.vllm")
        self.model = None  # no transformers module: off-policy sampling from it needs the vllm rollout backend
        self.model_path = str(model_path)

    def score(self, rollouts: Rollouts) -> torch.Tensor:
        from vllm import SamplingParams

        seq, attn, rmask = rollouts.sequences, rollouts.attention_mask, rollouts.response_mask
        rows = [seq[j][attn[j].bool()].tolist() for j in range(seq.shape[0])]
        members, me = self.engine.tp_gather(rows)
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        first = sum(len(m) for m in members[:me])
        requests = [{"prompt_token_ids": r} for m in members for r in m]
        # A rank with no sequences still joins its tensor-parallel group's gather and run.
        outs = self.engine.run(requests, params)[first:first + len(rows)] if requests else []
        scores = torch.zeros(seq.shape, dtype=torch.float32)
        for j, out in enumerate(outs):
            cols = attn[j].nonzero().squeeze(1).tolist()  # column of each attended token
            for k, col in enumerate(cols):
                if k == 0 or not rmask[j, col]:
                    continue
                scores[j, col] = out.prompt_logprobs[k][rows[j][k]].logprob
        return scores

    def sleep(self) -> None:
        self.engine.sleep()

    def wake(self) -> None:
        self.engine.wake()


def make_teacher(backend: str, source: str | os.PathLike, student_tokenizer, *, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, vllm: dict | None = None, seed: int = 0,
                 **kwargs) -> TeacherScorer:
    """Check that the teacher at `source` tokenizes like the student, then load it. `dtype` is the
    teacher's compute dtype for both backends (a `dtype` in the vLLM settings `vllm` wins)."""
    if backend not in ("hf", "vllm"):
        raise UserError(f"unknown teacher backend {backend!r}: choose 'hf' or 'vllm'")
    teacher_tokenizer = models.load_tokenizer(source)
    models.check_same_tokenizer(student_tokenizer, teacher_tokenizer, "the student", f"the teacher {source}")
    if backend == "hf":
        return HFTeacher(models.load_model(source, dtype=dtype, device=device), **kwargs)
    settings = {"dtype": str(dtype).removeprefix("torch."), **(vllm or {})}
    return VLLMTeacher(source, settings=settings, seed=seed)
