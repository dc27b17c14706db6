"""EffOPD ("Learning to Foresee"): directional extrapolation during OPD.

As the authors' code does it:
- a search runs right after the optimizer step at global steps 1, 2, 4, 8, ... ;
- direction dW = theta_t - theta_base in fp32, theta_base = the initial student for the first
  search and afterwards the parameters accepted by the previous search;
- candidates theta_t + (factor_step * i) * dW for i = 1..candidates, tried in order, each scored
  on a fixed validation set (`validation_prompts` training prompts, the paper's 50; one sample
  each at the rollout temperature, mean binary accuracy, so the score moves in steps of
  1 / validation_prompts); theta_t's own score is the first best; a candidate is kept only if it
  scores strictly higher than the best so far; at the first one that does not, the best is
  restored and the search stops;
- only attention and MLP parameters move (embeddings, lm_head and the layer/final norms do not);
  optimizer state is untouched; the rollout engine sees the accepted weights.

The rollout engine scores every point on the weights being judged: `sync` pushes theta_t (just
moved by the optimizer), each candidate and the restored best into it. An engine with its own
copy (vLLM, the replicated HF engine of multi-process runs) would otherwise score them all on
stale weights; for an HF engine sharing the trainer's module the push is a no-op.
"""
from __future__ import annotations

import random
from typing import Callable

import torch

from geopd.errors import UserError
from geopd.engines.chat import format_prompt
from geopd.train.data import shard


def is_search_step(step: int) -> bool:
    return step >= 1 and step & (step - 1) == 0


def extrapolated(name: str) -> bool:
    """Attention and MLP weights (Qwen3's q_norm/k_norm sit inside self_attn and count)."""
    return ".self_attn." in name or ".mlp." in name


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # FSDP2 DTensor shard


class Extrapolator:
    def __init__(self, model: torch.nn.Module, validate: Callable[[int], float], *,
                 candidates: int = 5, factor_step: float = 2.0, sync: Callable[[], None] | None = None):
        self.model = model
        self.validate = validate  # validate(step) -> mean accuracy on the fixed validation set
        self.sync = sync or (lambda: None)  # the rollout engine takes the model's current weights
        self.candidates = candidates
        self.factor_step = factor_step
        self.params = {n: p for n, p in model.named_parameters() if extrapolated(n)}
        self.base = self._snapshot()

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {n: _local(p.detach()).float().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def _set(self, current: dict, delta: dict, factor: float) -> None:
        for n, p in self.params.items():
            _local(p.data).copy_(current[n] + factor * delta[n])

    @torch.no_grad()
    def search(self, step: int) -> dict:
        current = self._snapshot()
        delta = {n: current[n] - self.base[n] for n in current}
        self.sync()
        best_score, best_factor = self.validate(step), 0.0
        tried, scores = [0.0], [best_score]
        for i in range(1, self.candidates + 1):
            factor = self.factor_step * i
            self._set(current, delta, factor)
            self.sync()
            score = self.validate(step)
            tried.append(factor)
            scores.append(score)
            if score > best_score:
                best_score, best_factor = score, factor
            else:
                break
        self._set(current, delta, best_factor)
        if best_factor != tried[-1]:  # the engine holds the last, rejected candidate
            self.sync()
        self.base = self._snapshot()
        return {"step": step, "factors": tried, "scores": scores, "accepted_factor": best_factor,
                "accepted_score": best_score}

    def maybe_search(self, step: int) -> dict | None:
        return self.search(step) if is_search_step(step) else None

    def state_dict(self) -> dict:
        return {"base": self.base}

    def load_state_dict(self, state: dict) -> None:
        self.base = {n: t.clone() for n, t in state["base"].items()}


def validation_set(records: list[dict], n: int, seed: int) -> list[dict]:
    """A fixed sample of training prompts (the same for every search of a run)."""
    order = list(range(len(records)))
    random.Random(seed * 7919 + 50).shuffle(order)
    return [records[i] for i in order[:n]]


def make_extrapolator(trainer) -> Extrapolator:
    """Wire the search to a Trainer: its rollout engine, reward and rollout temperature."""
    spec = trainer.spec
    ext, r = spec.extrapolation, spec.rollout
    if r.off_policy:
        raise UserError(f"run {spec.run}: extrapolation scores the student's own samples; "
                        "it cannot run with rollout.source: teacher")
    if ext.validation_prompts > len(trainer.records):
        # A smaller set than configured would score in coarser steps than the config states.
        raise UserError(f"run {spec.run}: extrapolation.validation_prompts {ext.validation_prompts} > the "
                        f"{len(trainer.records)} prompts of its training data")
    val = validation_set(trainer.records, ext.validation_prompts, spec.seed)
    local = shard(val, trainer.dist.rank, trainer.dist.world)
    prompts = [format_prompt(trainer.tokenizer, rec["prompt"]) for rec in local]

    def validate(step: int) -> float:
        # Every rank samples, even one without prompts: a vLLM tensor-parallel group spans ranks.
        # Common random numbers: every candidate of a search is sampled with the same seed.
        seed = (spec.seed * 1_000_003 + step) * 64 + 63 - trainer.dist.rank
        ro = trainer.rollout.generate(prompts, 1, temperature=r.temperature, top_p=r.top_p,
                                      max_new_tokens=r.max_new_tokens, seed=seed)
        hits = trainer._rewards([local[i] for i in ro.prompt_index], ro.texts)
        return trainer.dist.all_sum(float(hits.sum())) / trainer.dist.all_sum(float(len(hits)))

    return Extrapolator(trainer.model, validate, candidates=ext.candidates, factor_step=ext.factor_step,
                        sync=lambda: trainer.rollout.sync_weights(trainer.model))
