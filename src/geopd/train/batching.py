"""How a training step's samples are cut into optimizer updates and micro-batches.

Torch-free, and shared: the trainer (geopd.train.loop) cuts its steps with these functions, and
the cost model (geopd.costmodel, `geopd plan`) sizes the same steps with them.

An on-policy step is one rollout batch of prompts x samples, trained in `num_updates` optimizer
updates of `global_batch_size` samples each, as slime and verl count them; `update_of_samples`
says which samples go to which update (contiguous blocks, as slime, or interleaved). Each update (or SFT step) runs as micro-batches: with a
token budget (engine.micro_batch_tokens) as many as the budget needs, without one SFT_BUCKETS
length buckets per SFT step and one micro-batch per RL update (`micro_batch_plan`); the actual
cut of a padded batch is geopd.engines.logprobs.plan_micro_batches.
"""
from __future__ import annotations

import math

from geopd.errors import UserError
from geopd.spec import Engine

SFT_BUCKETS = 4  # micro-batches per SFT step, by length, when the engine sets no token budget


def rollout_split(samples: int, global_batch_size: int) -> tuple[int, int]:
    """(full updates of `global_batch_size` samples, samples left over) of a rollout batch."""
    if global_batch_size < 1:
        raise UserError(f"rollout.global_batch_size must be >= 1, got {global_batch_size}")
    return divmod(samples, global_batch_size)


def num_updates(samples: int, global_batch_size: int) -> int:
    """Optimizer updates per rollout batch: samples // global_batch_size, as slime counts them
    (OPD 300 x 8 / 64 -> 37, RLVR 1024 x 8 / 512 -> 16), at least one. slime refuses a batch that
    is not a multiple; here the remainder is spread over the updates (see update_of_samples):
    2400 samples train in 37 updates of 64 or 65, none dropped, never fewer than configured."""
    return max(1, rollout_split(samples, global_batch_size)[0])


def update_of_samples(counts: list[int], rank: int, updates: int, split: str = "contiguous") -> list[int]:
    """Update index of each of this rank's samples. The step's samples in their global order g
    (rank-major: the step's prompt order, each prompt's samples together; geopd.train.data.shard
    gives every rank a contiguous slice of the prompts) are cut into `updates` updates of
    N // U or N // U + 1 samples, so none is dropped and the cut does not depend on the number
    of ranks. Advantages are computed before this split, over whole GRPO groups.

    - "contiguous" (slime: update u trains the u-th block of the step's samples, so a prompt's
      samples train together; slime's blocks are exactly global_batch_size samples and drops a
      remainder, here the first N % U blocks take one sample more): the first N % U updates
      hold N // U + 1 consecutive samples, the others N // U;
    - "interleaved": sample g trains in update g mod U (a prompt's samples spread over updates,
      every rank contributes a near-equal share to every update).
    """
    offset, total = sum(counts[:rank]), sum(counts)
    if split == "interleaved":
        return [(offset + i) % updates for i in range(counts[rank])]
    if split != "contiguous":
        raise UserError(f"rollout.update_split must be contiguous or interleaved, got {split!r}")
    size, extra = divmod(total, updates)
    big = extra * (size + 1)  # samples in the first `extra` blocks, one larger than the rest

    def block(g: int) -> int:
        return g // (size + 1) if g < big else extra + (g - big) // max(size, 1)

    return [block(offset + i) for i in range(counts[rank])]


def groups_taken(counts: list[int], rank: int, room: int) -> int:
    """Dynamic sampling (geopd.train.loop): how many of this rank's informative groups of a round
    join the step, when rank r found counts[r] and `room` are still wanted: the first `room` in
    the round's global order (rank-major, the prompts' order), so the groups kept do not depend
    on the number of ranks."""
    return max(0, min(counts[rank], room - sum(counts[:rank])))


def micro_batch_plan(engine: Engine, method: str) -> tuple[int | None, int | None]:
    """(token budget, length buckets) of a step's micro-batches on one rank: the engine's
    token budget when it sets one; else SFT_BUCKETS buckets per SFT step, one micro-batch per
    RL update (buckets None)."""
    if engine.micro_batch_tokens:
        return engine.micro_batch_tokens, None
    return None, SFT_BUCKETS if method == "sft" else None


def largest_micro_batch(engine: Engine, method: str, rows: int, world: int, seq: int) -> int:
    """Padded tokens of the largest micro-batch one of `world` ranks runs on `rows` sequences of
    at most `seq` tokens: at most the token budget, but one whole sequence at least; without a
    budget, its share of the rows in one bucket."""
    budget, buckets = micro_batch_plan(engine, method)
    if budget:
        return max(budget, seq)
    return max(1, math.ceil(rows / world / (buckets or 1))) * seq
