"""Sampled responses for the benchmarks that do not go through lm-eval (code, LiveCodeBench).

The trainer's own rollout engines generate them (geopd.engines.rollout: HFRollout, or VLLMRollout
on the process's evaluation engine, geopd.evaluate.engine), so evaluation samples exactly as
training does: the tokenizer's chat
template (format_prompt for a bare user turn), left padding, neutral logits processors,
EOS stop, and a seeded RNG (request i gets seed + i*n under vLLM).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from geopd.engines.chat import format_prompt
from geopd.engines.models import load_model, load_tokenizer
from geopd.engines.rollout import HFRollout, VLLMRollout
from geopd.evaluate.engine import engine_for


@dataclass
class Generations:
    prompts: list[str]            # chat-formatted, as the model saw them
    responses: list[list[str]]    # n per prompt, in sample order


def chat_prompt(tokenizer, prompt: str | list[dict]) -> str:
    """A user turn through the trainer's format_prompt; a message list (e.g. LiveCodeBench's
    system + user turns) through the same chat template."""
    if isinstance(prompt, str):
        return format_prompt(tokenizer, prompt)
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)


def sample_responses(model: str, prompts: list[str | list[dict]], *, n: int, temperature: float, top_p: float,
                     max_new_tokens: int, seed: int, backend: str, device: str = "cpu",
                     batch_size: int | None = None, spec: dict | None = None, tokenizer=None) -> Generations:
    spec = spec or {}
    tok = tokenizer if tokenizer is not None else load_tokenizer(model)
    formatted = [chat_prompt(tok, p) for p in prompts]
    if backend == "hf":
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        engine = HFRollout(load_model(model, dtype=dtype, device=device), tok, batch_size=batch_size)
    else:  # the process's evaluation engine, with this checkpoint's weights (geopd.evaluate.engine)
        engine = VLLMRollout.on_engine(engine_for(model, spec, seed), tok, model)
    ro = engine.generate(formatted, n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                         seed=seed)
    texts = ro.texts
    return Generations(prompts=formatted, responses=[texts[i * n:(i + 1) * n] for i in range(len(prompts))])
