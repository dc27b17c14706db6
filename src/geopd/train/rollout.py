"""Rollouts: sampling responses from the current policy, behind one small interface.

Two engines return the same `Rollouts`:
- `HFRollout`: transformers `generate` with a KV cache (CPU, tests, small GPU runs);
- `VLLMRollout`: vLLM (GPU; optional dependency, imported only when constructed).

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
from pathlib import Path
from typing import Protocol

import torch

from geopd.errors import UserError
from geopd.train.data import position_ids


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


class RolloutEngine(Protocol):
    def generate(self, prompts: list[str], n: int, *, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int) -> Rollouts: ...  # no prompts: Rollouts.empty(n) (every rank calls it)

    def sync_weights(self, model) -> None: ...


# ---- shared helpers -----------------------------------------------------------------------------

def eos_ids(tokenizer, model=None) -> list[int]:
    """Tokens that end a response: the tokenizer's and the model's eos, and the chat template's
    end-of-turn token, so a student made from a Qwen3-*-Base model (eos <|endoftext|>) stops at
    <|im_end|> as its post-trained teacher does, and as SFT taught it."""
    from geopd.train.data import end_of_turn_id

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
    # add_special_tokens=False as in geopd.train.data.encode_sft: the chat template has them.
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
    the trainer's own computation (geopd.train.logprobs.token_stats: same position_ids, lm_head
    in chunks of `chunk_tokens` rows, fp32 log-softmax of logits / T) over micro-batches of at
    most `batch_size` rows and `micro_batch_tokens` padded tokens.

    pad_to(count) -> count: under FSDP, the number of micro-batches every rank runs (this rank
    runs zero-weight dummies for the difference)."""
    from geopd.train.logprobs import dummy_inputs, plan_micro_batches, token_stats

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

class VLLMWeightSync:
    """vLLM worker extension (passed by qualified name as `worker_extension_cls`; vLLM mixes it
    into its worker class, so `self` is the worker). Loads new weights from a safetensors file.
    VERIFIED-ON-GPU: pending."""

    def geopd_load_weights(self, path: str) -> int:
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as f:
            weights = [(name, f.get_tensor(name)) for name in f.keys()]
        self.model_runner.model.load_weights(weights=weights)
        return len(weights)


class VLLMRollout:
    """Sampling with vLLM. VERIFIED-ON-GPU: pending (no GPU in the session that wrote it).

    - Log-probs: the engine is built with logprobs_mode="processed_logprobs" (vLLM >= 0.10.2),
      so `logprobs=0` returns log p of the sampled token after temperature (and top-p), i.e.
      log_softmax(logits / T) when top_p = 1 -- what HFRollout and the trainer compute. vLLM's
      default ("raw_logprobs") would give T=1 values; with an older vLLM, T != 1 is refused.
    - The model's generation_config.json is ignored (generation_config="vllm"), so hub defaults
      such as top_k=20 do not leak into sampling.
    - Seeds: request i gets seed + i*n; vLLM gives its n children seed + i*n + j.
    - Weights: `sync_weights(model)` writes the trainer's full state dict (engine dtype) to a
      safetensors file in /dev/shm and has every vLLM worker load it (collective_rpc into
      `VLLMWeightSync`), then drops the prefix cache, whose KV entries belong to the old weights.
      With an in-process V0 engine it falls back to the driver worker's model directly.
    """

    def __init__(self, model_path: str | os.PathLike, *, tokenizer=None, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.5, dtype: str = "bfloat16", max_model_len: int | None = None,
                 **llm_kwargs):
        try:
            import vllm
        except ImportError:
            raise UserError("rollout backend 'vllm' needs the optional dependency vllm "
                            "(pip install 'geopd[gpu]'); use backend 'hf' on CPU") from None
        from geopd.train.checkpoint import load_tokenizer

        self.model_path = str(model_path)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(self.model_path)
        self.dtype = dtype
        kwargs = dict(model=self.model_path, tokenizer=self.model_path, tensor_parallel_size=tensor_parallel_size,
                      gpu_memory_utilization=gpu_memory_utilization, dtype=dtype, generation_config="vllm",
                      worker_extension_cls=f"{__name__}.VLLMWeightSync", logprobs_mode="processed_logprobs",
                      **llm_kwargs)
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        try:
            self.llm = vllm.LLM(**kwargs)
            self.processed_logprobs = True
        except TypeError:  # an older vLLM without logprobs_mode / worker extensions
            for key in ("logprobs_mode", "worker_extension_cls"):
                kwargs.pop(key)
            self.llm = vllm.LLM(**kwargs)
            self.processed_logprobs = False
        self.rpc_weights = self.processed_logprobs and hasattr(self.llm, "collective_rpc")
        self.eos = eos_ids(self.tokenizer)

    def generate(self, prompts: list[str], n: int, *, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int) -> Rollouts:
        from vllm import SamplingParams

        check_sampling(temperature, top_p, max_new_tokens, n)
        if not self.processed_logprobs and temperature != 1.0:
            raise UserError("this vLLM returns log-probs at T=1 only (no logprobs_mode); "
                            "use vLLM >= 0.10.2 or temperature 1.0")
        prompt_ids = encode_prompts(self.tokenizer, prompts)
        params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                 seed=(seed + i * n) % 2**63, logprobs=0, stop_token_ids=self.eos,
                                 detokenize=False)
                  for i in range(len(prompt_ids))]
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params, use_tqdm=False)
        responses, logprobs = [], []
        for out in outs:  # vLLM returns requests in submission order
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
        from safetensors.torch import save_file

        from geopd.train.checkpoint import full_state_dict

        state = full_state_dict(model)
        if not state:  # not rank 0 under FSDP
            return
        dtype = getattr(torch, self.dtype) if isinstance(self.dtype, str) else self.dtype
        tensors, seen = {}, set()
        for k, v in state.items():
            t = v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
            if t.untyped_storage().data_ptr() in seen:
                t = t.clone()
            seen.add(t.untyped_storage().data_ptr())
            tensors[k] = t
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(suffix=".safetensors", prefix="geopd-weights-", dir=shm)
        os.close(fd)
        try:
            save_file(tensors, path)
            if self.rpc_weights:
                self.llm.collective_rpc("geopd_load_weights", args=(path,))
            else:
                runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
                runner.model.load_weights(weights=list(tensors.items()))
            self.llm.reset_prefix_cache()
        finally:
            Path(path).unlink(missing_ok=True)


# ---- factory ----------------------------------------------------------------------------------------

def make_rollout_engine(backend: str, *, model, tokenizer, replicate: bool = False, model_path=None, **kwargs):
    """backend "hf": HFRollout(model, ...); "vllm": VLLMRollout from `model_path`, or from an
    export of `model` (a module or a checkpoint path) when no path is given."""
    if backend == "hf":
        return HFRollout(model, tokenizer, replicate=replicate, **kwargs)
    if backend == "vllm":
        if model_path is None and isinstance(model, (str, os.PathLike)):
            model_path = model
        if model_path is None:
            from geopd.train.checkpoint import save_model

            export = Path(tempfile.mkdtemp(prefix="geopd-vllm-init-")) / "model"
            save_model(model, tokenizer, export, dtype=getattr(torch, kwargs.get("dtype", "bfloat16")))
            model_path = export
        return VLLMRollout(model_path, tokenizer=tokenizer, **kwargs)
    raise UserError(f"unknown rollout backend {backend!r}: choose 'hf' or 'vllm'")
