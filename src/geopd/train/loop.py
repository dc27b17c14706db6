"""The one training loop of the grid: SFT, OPD, RLVR and alpha-mix, with every control.

Runs differ only by their spec (a geopd.spec.RunSpec, built by geopd.grid from the config). One
step is one optimizer update for SFT, and one rollout batch (split into updates of
`global_batch_size` samples, geopd.train.batching) for the on-policy methods, as in verl.
Objectives come from geopd.train.objectives, chosen by name. As torchtitan's trainer, `fit()` is
a short loop of calls; the processes and sharding live in geopd.train.distributed, how steps
are cut into updates and micro-batches in geopd.train.batching, and the training state across
jobs (resume, continue, kept states) in geopd.train.resume, and what the run shows while it trains
(TensorBoard, W&B, progress lines, the progress file) in geopd.train.tracking.

Fault tolerance: the full state is written to `state_dir` at each checkpoint step, every
`state_every_min` minutes of wall clock (geopd.spec.STATE_EVERY_MIN: a node failure loses at most
that), and after the step in which a stop was asked for (SIGUSR1, which Slurm sends `lead` seconds
before a training job's time limit: sbatch --signal, geopd.launch; or SIGTERM), after which the job
exits 75 for a retry; a restarted job resumes from the last complete state and ends bitwise where an
uninterrupted run would (CPU). The ranks agree after each step on whether to save or stop (a signal
reaches them at different moments, and saving is collective). A signal that arrives while the
process starts up (`geopd train` notes it from its start: geopd.train.signals) counts from
the first step. Exported checkpoints accumulate in `state_dir/exports` and are moved onto the
rule's output only at the very end, because Snakemake deletes the outputs of a failed job.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch

from geopd.engines import models
from geopd.engines.chat import encode_sft, format_prompt
from geopd.engines.logprobs import dummy_inputs, plan_micro_batches, token_stats
from geopd.engines.rollout import (VLLMRollout, concat_rollouts, make_rollout_engine, pad_id, select_groups,
                                   sequence_logprobs)
from geopd.engines import teacher as teachers
from geopd.engines.ranks import on_rank0
from geopd.engines.vllm_engine import check_colocation
from geopd.errors import UserError
from geopd.io.publish import verify_checkpoint
from geopd.io.tensors import Checkpoint, read_tensor
from geopd.spec import STATE_EVERY_MIN, Optim, RunSpec, Tracking
from geopd.train import objectives as obj
from geopd.train import resume
from geopd.train import signals
from geopd.train.batching import groups_taken, micro_batch_plan, num_updates, update_of_samples
from geopd.train.data import JsonlRecords, RecordStream, build_index, shard
from geopd.train.distributed import Dist, shard_model
from geopd.train.effopd import make_extrapolator
from geopd.train.rewards import reward
from geopd.train.tracking import Tracker


# ---- schedules and optimizer ---------------------------------------------------------------

def lr_lambda(optim: Optim, total_steps: int):
    """The learning-rate factor after `step` updates of a run of `total_steps` (warmup, then
    constant, linear or cosine decay to min_lr_ratio)."""
    warmup = int(round(optim.warmup * total_steps))
    schedule, floor = optim.schedule, optim.min_lr_ratio

    def factor(step: int) -> float:  # step = number of updates already taken
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if schedule == "linear":
            return floor + (1 - floor) * (1 - progress)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def make_optimizer(model, optim: Optim, total_steps: int, start_step: int = 0):
    """AdamW and its schedule. A run that starts at `start_step` of a longer run (run@step)
    continues that run's schedule: `total_steps` is the full run's length and the factor is
    evaluated from `start_step` on, not warmed up again."""
    # Decay matrices only (norm gains and biases are not decayed), as in nanoGPT.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
        foreach=False,  # the fused/foreach paths change float summation order across torch builds
    )
    factor = lr_lambda(optim, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: factor(start_step + k))
    return optimizer, scheduler


# ---- the trainer -----------------------------------------------------------------------------

class Stop(Exception):
    """Raised after a requested stop (SIGTERM) once the state is safely saved."""


class Trainer:
    def __init__(self, spec: RunSpec | dict, *, model=None, tokenizer=None, threads: int | None = None,
                 progress: bool = True, state_every_min: float = STATE_EVERY_MIN,
                 tracking: Tracking | dict | None = None):
        spec = self.spec = RunSpec.from_dict(spec)
        self.state_every_s = state_every_min * 60
        self.tracking = Tracking.from_dict(tracking)  # TensorBoard, W&B, progress (geopd.train.tracking)
        self.method = spec.method
        self.engine = spec.engine
        self.dist = Dist.setup(spec.device, group=self.engine.mixed_precision)
        if threads:
            torch.set_num_threads(threads)
        self.progress = progress and self.dist.main
        self.state_dir = Path(spec.state_dir)
        self.exports = self.state_dir / "exports"
        self.metrics_path = self.state_dir / "metrics.jsonl"
        self._stop_requested = False

        self.records = self._load_data()  # before any model is loaded: fail fast on bad data
        self.tokenizer = tokenizer if model is not None else self._load_tokenizer()
        if spec.teacher:
            check_colocation(spec)  # before anything loads
        self.model = self._load_student(model)
        self.teacher = self._load_teacher() if spec.teacher else None
        self.model.train()
        self.optimizer, self.scheduler = make_optimizer(self.model, spec.optim, spec.steps, start_step=spec.start_step)
        self.basis = self._projection_basis() if spec.projection else None
        self.rollout = self._rollout_engine() if spec.rl else None
        self.step = spec.start_step
        self.stream = RecordStream(self.records, spec.seed)
        # EffOPD: theta_base = the initial student
        self.extrapolator = make_extrapolator(self) if spec.extrapolation else None
        resume.resume(self)

    # ---- set-up ----------------------------------------------------------------------------

    def _load_data(self) -> JsonlRecords:
        """The train split, read on demand through an index of line offsets: rank 0 scans the
        file once and caches the index in the state dir; no rank holds the records."""
        spec = self.spec
        path = Path(spec.data.dir) / "train.jsonl"
        if not path.is_file():
            raise UserError(f"data file not found: {path} (run the prepare_data rule first)")
        cache = self.state_dir / "data-index"
        on_rank0(lambda: build_index(path, cache))
        records = JsonlRecords(path, cache)
        if not len(records):
            raise UserError(f"{path}: the train split is empty")
        first = records[0]
        if spec.loss_on == "all":
            options = [("text",)]
        elif self.method == "sft":
            options = [("messages",), ("prompt", "response")]
        else:
            options = [("prompt",)]
        if not any(all(k in first for k in keys) for keys in options):
            raise UserError(f"{path}: records lack key(s) {' or '.join(str(list(k)) for k in options)}; "
                            "wrong data set for this stage?")
        if spec.rewarded and not any(k in first for k in ("answer", "tests")):
            raise UserError(f"{spec.data.dir}: RLVR needs records with an answer or tests")
        if self.method == "sft" and self.dist.main:
            seen = spec.batch_size * (spec.steps - spec.start_step)
            print(f"{spec.run}: {seen} records = {seen / len(records):.3g} epochs of {len(records)}",
                  file=sys.stderr, flush=True)
        return records

    def _load_tokenizer(self):
        init = self.spec.init
        verify_checkpoint(init, allow_foreign=True) if Path(init).exists() else None
        return models.load_tokenizer(init)

    def _load_student(self, model):
        """The student, sharded before any engine starts. Under FSDP2 (shard_model) it is sharded
        before its weights exist and each rank reads only its shards; one fp32 process without
        mixed precision loads it whole (the miniature's bitwise path)."""
        if model is not None:
            return shard_model(model, self.dist, self.engine)
        if self.dist.world > 1 or self.engine.mixed_precision:
            return models.load_sharded_model(self.spec.init, shard=lambda m: shard_model(m, self.dist, self.engine),
                                           device=self.dist.device)
        return shard_model(models.load_model(self.spec.init, dtype=torch.float32, device=self.dist.device),
                           self.dist, self.engine)

    def _load_teacher(self):
        te = self.spec.teacher_engine
        return teachers.make_teacher(te.backend, self.spec.teacher, self.tokenizer, device=self.dist.device,
                            vllm=te.vllm.to_dict(), seed=self.spec.seed)

    def _projection_basis(self) -> dict[str, torch.Tensor]:
        """Top-K right singular vectors of each matrix's dW at the projection point (SPEC)."""
        p = self.spec.projection
        tuned, origin = Checkpoint.open(p.checkpoint), Checkpoint.open(p.origin)
        basis = {}
        for name, param in self.model.named_parameters():
            if param.dim() != 2 or name not in tuned:  # tied lm_head is not stored separately
                continue
            delta = read_tensor(tuned.info(name)).double() - read_tensor(origin.info(name)).double()
            basis[name] = obj.projection_basis(delta, p.rank).to(param.dtype)
        return basis

    def _rollout_engine(self):
        r = self.spec.rollout
        backend, vllm = r.backend, dict(settings=r.vllm.to_dict(), seed=self.spec.seed)
        if r.off_policy:
            # Off-policy: the teacher samples. A vLLM teacher samples from its own engine (one copy
            # of its weights); otherwise a vLLM rollout engine loads the teacher's checkpoint.
            if backend == "vllm" and isinstance(self.teacher, teachers.VLLMTeacher):
                return VLLMRollout.on_engine(self.teacher.engine, self.tokenizer, self.teacher.model_path)
            return make_rollout_engine(backend, model=getattr(self.teacher, "model", None),
                                       model_path=self.spec.teacher if backend == "vllm" else None,
                                       tokenizer=self.tokenizer, **vllm)
        return make_rollout_engine(backend, model=self.model, tokenizer=self.tokenizer,
                                   replicate=self.dist.world > 1, **vllm)

    # ---- signals -----------------------------------------------------------------------------

    def _on_signal(self, signum, frame):
        self._stop_requested = True
        if self.dist.main:
            print(f"signal {signum}: saving state after step {self.step + 1}", file=sys.stderr, flush=True)

    # ---- one step ----------------------------------------------------------------------------

    def _token_stats(self, ids, attn, token_mask, *, temperature: float = 1.0, entropy: bool = False):
        """The student's log-probs [b, w] (and entropies) where token_mask is set, lm_head in chunks."""
        dev = self.dist.device
        return token_stats(self.model, ids.to(dev), attn.to(dev), token_mask.to(dev), temperature=temperature,
                           chunk_tokens=self.engine.logprob_chunk_tokens, entropy=entropy)

    def _micro_batches(self, attn, rows=None) -> list:
        """This rank's micro-batches (geopd.train.batching.micro_batch_plan), padded with None
        (zero-weight dummies) to the count of the rank with the most: FSDP's all-gathers and
        reduce-scatters need the same calls everywhere."""
        budget, buckets = micro_batch_plan(self.engine, self.method)
        plans = plan_micro_batches(attn, rows, token_budget=budget, buckets=buckets)
        return plans + [None] * (self.dist.all_max(len(plans)) - len(plans))

    def _dummy_backward(self) -> None:
        logp, _ = self._token_stats(*dummy_inputs(self.dist.device))
        (logp.sum() * 0.0).backward()

    def _optimizer_step(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.spec.optim.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf"))
        if self.basis is not None:
            for name, param in self.model.named_parameters():
                if name in self.basis and param.grad is not None:
                    grad = param.grad
                    local = grad.to_local() if hasattr(grad, "to_local") else grad
                    obj.project_gradient_(local, self.basis[name])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def sft_step(self) -> dict:
        return self.sft_update(shard(self.stream.next(self.spec.batch_size), self.dist.rank, self.dist.world))

    def sft_update(self, records: list[dict]) -> dict:
        """One optimizer update on this rank's share of the step's records (shares may differ)."""
        if records:
            ids, attn, loss_mask = encode_sft(self.tokenizer, records, self.spec.max_length, loss_on=self.spec.loss_on)
        else:  # more ranks than sequences
            ids = attn = torch.zeros((0, 1), dtype=torch.long)
            loss_mask = torch.zeros((0, 1))
        # Token-mean over the global batch, exact with uneven shares: each micro-batch's summed
        # loss over the global token count, times the world size (FSDP averages over ranks).
        n_global = max(self.dist.all_sum(float(loss_mask[:, 1:].sum())), 1.0)
        loss_sum = 0.0
        # Without a token budget: SFT_BUCKETS length buckets, each cut to its own longest row.
        for mb in self._micro_batches(attn):
            if mb is None:
                self._dummy_backward()
                continue
            cols = slice(mb.start, mb.stop)
            mask = loss_mask[mb.rows, cols]
            logp, _ = self._token_stats(ids[mb.rows, cols], attn[mb.rows, cols], mask > 0)
            loss = -(logp * mask.to(logp.device)).sum()
            (loss * self.dist.world / n_global).backward()
            loss_sum += float(loss.detach())
        grad_norm = self._optimizer_step()
        return {"loss": self.dist.all_sum(loss_sum) / n_global, "grad_norm": grad_norm, "tokens": n_global}

    def _rewards(self, records: list[dict], texts: list[str]) -> torch.Tensor:
        grader = self.spec.objective.reward
        return torch.tensor([reward(rec, text, grader) for rec, text in zip(records, texts)], dtype=torch.float32)

    reward_seen: bool | None = None  # a non-zero task reward in some step so far; None: not read yet

    def _check_rewards(self, rewards: torch.Tensor) -> None:
        """Stop a run whose task rewards are all zero for its first `zero_reward_patience` steps."""
        patience = self.spec.objective.zero_reward_patience
        if not patience:
            return
        if self.reward_seen is None:
            # A resumed run: its metrics (truncated to the resumed step) say what came before.
            seen = 0.0
            if self.dist.main and self.metrics_path.exists():
                seen = float(any(json.loads(l).get("reward", 0) != 0
                                 for l in self.metrics_path.read_text().splitlines() if l))
            self.reward_seen = self.dist.all_sum(seen) > 0
        if self.reward_seen:
            return
        if self.dist.all_sum(float((rewards != 0).sum())) > 0:
            self.reward_seen = True
            return
        done = self.step + 1 - self.spec.start_step
        if done >= patience:
            samples = int(self.dist.all_sum(float(len(rewards))))
            raise UserError(
                f"run {self.spec.run}: every reward of its first {done} steps was 0 ({samples} samples in "
                f"step {self.step + 1}); the prompts' answer format, the responses and the grader do not fit "
                f"together, and {self.method} would train on nothing. Check the data's answer format, or set "
                f"objective.zero_reward_patience: 0 to train anyway (last complete state: {self.state_dir})")

    def _sample(self, records: list[dict], seed: int):
        """Every rank calls the engine, also with an empty share of the prompts (more ranks than
        prompts): an engine's tensor-parallel group may span ranks. It returns no samples then."""
        r = self.spec.rollout
        prompts = [format_prompt(self.tokenizer, rec["prompt"]) for rec in records]
        return self.rollout.generate(prompts, r.samples, temperature=r.temperature, top_p=r.top_p,
                                     max_new_tokens=r.max_new_tokens, seed=seed)

    def rl_step(self) -> dict:
        r = self.spec.rollout
        if not r.off_policy:  # an engine with its own copy (vLLM, replicas) needs the update
            self.rollout.sync_weights(self.model)
        seed = (self.spec.seed * 1_000_003 + self.step) * 64 + self.dist.rank
        t0 = time.perf_counter()
        if r.dynamic_sampling is None:
            records = shard(self.stream.next(r.prompts_per_step), self.dist.rank, self.dist.world)
            ro, rewards, info = self._sample(records, seed), None, {}
        else:
            records, ro, rewards, info = self._dynamic_sampling(seed)
        self.rollout.sleep()  # engine interface: frees a colocated vLLM engine's GPU memory
        t_gen = time.perf_counter() - t0
        return {**self.train_on(ro, records, seed, rewards=rewards), **info, "gen_s": t_gen}

    def _dynamic_sampling(self, seed: int):
        """DAPO's dynamic sampling as slime runs it (rollout.dynamic_sampling): sample rounds of
        `prompts_per_round` prompts, drop every group whose rewards all agree, until the step
        holds `prompts_per_step` informative groups (the first ones in the draw order: round,
        then the prompts' order; surplus groups of the last round are discarded, as slime's are)
        or `max_rounds` rounds are spent (the step then trains on the groups it has).

        Returns (this rank's records, its rollouts and rewards of the kept groups, metrics): the
        reward metric is over every sample drawn (the policy's accuracy), `reward_trained` over
        the kept ones."""
        r = self.spec.rollout
        n, target, rank = r.samples, r.prompts_per_step, self.dist.rank
        kept_records, parts, kept_rewards, drawn = [], [], [], []
        total = rounds = 0
        while total < target and rounds < r.dynamic_sampling.max_rounds:
            records = shard(self.stream.next(r.prompts_per_round), rank, self.dist.world)
            # round 0 samples with the step's seed, as without dynamic sampling; later rounds apart
            ro = self._sample(records, seed + rounds * 2 ** 40)
            rounds += 1
            rewards = self._rewards([records[i] for i in ro.prompt_index], ro.texts)
            drawn.append(rewards)
            informative = obj.nonzero_variance_groups(rewards, n)[::n] if len(rewards) else torch.zeros(0, dtype=torch.bool)
            counts = self.dist.all_gather_int(int(informative.sum()))
            room = target - total
            groups = informative.nonzero().squeeze(1).tolist()[:groups_taken(counts, rank, room)]
            if groups:
                parts.append(select_groups(ro, groups))
                kept_records += [records[g] for g in groups]
                kept_rewards.append(rewards.reshape(-1, n)[groups].reshape(-1))
            total += min(room, sum(counts))
        drawn = torch.cat(drawn)
        self._check_rewards(drawn)
        ro = concat_rollouts(parts, n, pad_id(self.tokenizer))
        kept = torch.cat(kept_rewards) if kept_rewards else torch.zeros(0)
        samples = self.dist.all_sum(float(len(drawn)))
        info = {"sampling_rounds": rounds, "groups_kept": total, "groups_drawn": int(samples) // n,
                "reward": self.dist.all_sum(float(drawn.sum())) / max(samples, 1.0),
                "reward_trained": self.dist.all_sum(float(kept.sum())) / max(self.dist.all_sum(float(len(kept))), 1.0)}
        return kept_records, ro, kept, info

    def train_on(self, ro, records: list[dict], seed: int, rewards: torch.Tensor | None = None) -> dict:
        """Score this rank's rollouts (`records[i]` is the prompt of group i), compute the
        advantages over the whole batch, and take the step's policy updates. `rewards`: the
        samples' task rewards when the caller has graded them (dynamic sampling)."""
        r, o = self.spec.rollout, self.spec.objective
        n, temperature = r.samples, r.temperature
        seq, attn = ro.sequences, ro.attention_mask
        mask = ro.response_mask[:, 1:].float()
        sample_records = [records[i] for i in ro.prompt_index]
        with torch.no_grad():
            student_logp = sequence_logprobs(
                self.model, seq, attn, ro.response_mask, temperature=temperature,
                micro_batch_tokens=self.engine.micro_batch_tokens, chunk_tokens=self.engine.logprob_chunk_tokens,
                pad_to=self.dist.all_max)[:, 1:]
            # Behaviour policy of the ratio: the student itself on-policy, the teacher off-policy.
            old_logp = ro.response_logprobs[:, 1:] if r.off_policy else student_logp
            teacher_logp = self.teacher.score(ro)[:, 1:] if self.teacher is not None else None
            if self.teacher is not None:
                self.teacher.sleep()
        if self.spec.rewarded and rewards is None:
            rewards = self._rewards(sample_records, ro.texts)
            self._check_rewards(rewards)

        inputs = {"mask": mask, "student_logp": student_logp, "teacher_logp": teacher_logp,
                  "rewards": rewards, "group_size": n}
        adv, weight = obj.advantages(self.method, o, inputs, generator=torch.Generator().manual_seed(seed))
        if self.method == "rlvr" and o.filter_zero_variance:
            weight = weight * obj.nonzero_variance_groups(rewards, n).float()[:, None]
        out = self._policy_updates(seq, attn, mask * (weight > 0), old_logp, adv * weight)

        valid, samples = self.dist.all_sum(float(mask.sum())), self.dist.all_sum(float(seq.shape[0]))
        out.update({"tokens": valid, "response_len": valid / max(samples, 1.0)})
        if teacher_logp is not None:
            kl = obj.kl_estimates(student_logp, teacher_logp, mask)
            out["mean_r_t"] = self.dist.all_sum(float(kl["k1"]) * float(mask.sum())) / max(valid, 1.0)
            out["kl_k3"] = self.dist.all_sum(float(kl["k3"]) * float(mask.sum())) / max(valid, 1.0)
        if rewards is not None:
            out["reward"] = self.dist.all_sum(float(rewards.sum())) / max(samples, 1.0)
            # Samples whose group's rewards differ: the only ones a GRPO advantage is non-zero for
            # (0 at every step: a mix run was a scaled OPD run; geopd.report.evidence).
            out["reward_varied_samples"] = self.dist.all_sum(float(obj.nonzero_variance_groups(rewards, n).sum()))
        return out

    def _policy_updates(self, seq, attn, kept, old_logp, adv) -> dict:
        """The step's optimizer updates over the rollout batch (rollout.global_batch_size samples
        each; see geopd.train.batching). `kept` [N, L-1] marks the tokens that train.

        Each update is normalised by its own samples, counted over every rank, as verl/DAPO do:
        token-mean over their kept tokens (slime's --calculate-per-token-loss); seq-mean-token-mean
        averages per-sequence token means over their sequences with any kept token. That is
        slime's default per-sample loss (each sample's token mean, summed, over the update's
        sample count: get_sum_of_sample_mean and loss_function in slime/backends/megatron_utils),
        exactly, since every sample that trains has a response token (an EOS at least) and a
        group the zero-variance filter drops is not in slime's update either. Micro-batches sum
        their share of that, so the result does not depend on how the samples fall onto ranks and
        micro-batches. Which samples form which update: rollout.update_split."""
        r, o = self.spec.rollout, self.spec.objective
        token_mean = o.aggregation == "token-mean"
        counts = self.dist.all_gather_int(seq.shape[0])
        total_samples = sum(counts)
        updates = num_updates(total_samples, total_samples if r.global_batch_size is None else r.global_batch_size)
        which = torch.tensor(update_of_samples(counts, self.dist.rank, updates, r.update_split), dtype=torch.long)
        token_kept = torch.nn.functional.pad(kept, (1, 0)) > 0  # aligned with the tokens
        has_tokens = kept.sum(1) > 0
        dev, world = self.dist.device, self.dist.world
        sums = {"loss": 0.0, "tokens": 0.0, "clipped": 0.0, "entropy": 0.0}
        grad_norms = []
        for u in range(updates):
            rows = ((which == u) & has_tokens).nonzero().squeeze(1)
            local = float(kept[rows].sum()) if token_mean else float(len(rows))
            denom = self.dist.all_sum(local)
            if denom == 0:  # every group filtered out: no update (AdamW would still move the weights)
                continue
            for mb in self._micro_batches(attn, rows):
                if mb is None:
                    self._dummy_backward()
                    continue
                cols, shifted = slice(mb.start, mb.stop), slice(mb.start, mb.stop - 1)
                logp, ent = self._token_stats(seq[mb.rows, cols], attn[mb.rows, cols], token_kept[mb.rows, cols],
                                              temperature=r.temperature, entropy=True)
                m = kept[mb.rows, shifted].to(dev)
                loss, stats = obj.clipped_policy_loss(
                    logp[:, 1:], old_logp[mb.rows, shifted].to(dev), adv[mb.rows, shifted].to(dev), m,
                    eps_low=o.clip_low, eps_high=o.clip_high, aggregation="sum" if token_mean else "seq-sum")
                # FSDP averages gradients over ranks: multiply back by the world size.
                (loss * world / denom).backward()
                n_tok = float(m.sum())
                sums["loss"] += float(loss.detach()) / denom
                sums["tokens"] += n_tok
                sums["clipped"] += float(stats["clip_frac"]) * n_tok
                sums["entropy"] += float((ent[:, 1:] * m).sum())
            grad_norms.append(self._optimizer_step())
        total = {k: self.dist.all_sum(v) for k, v in sums.items()}
        done = len(grad_norms)
        out = {"loss": total["loss"] / max(done, 1), "updates": done, "grad_norm": max(grad_norms, default=0.0),
               "entropy": total["entropy"] / max(total["tokens"], 1.0), "samples": total_samples}
        if done:
            out["clip_frac"] = total["clipped"] / max(total["tokens"], 1.0)
        return out

    # ---- after a step ------------------------------------------------------------------------

    def after_update(self):
        """After each step's updates: EffOPD's extrapolation search at steps 1, 2, 4, 8, ..."""
        if self.extrapolator is None:
            return None
        search = self.extrapolator.maybe_search(self.step)
        self.rollout.sleep()  # the search generates with it
        return search

    def log(self, row: dict, t0: float, search: dict | None) -> dict:
        """The step's metrics row, checked finite, appended to the run's metrics (rank 0)."""
        row = {"step": self.step, "lr": self.scheduler.get_last_lr()[0], **row, "world": self.dist.world}
        row["epoch"] = self.stream.epochs
        row["tokens_per_s"] = row["tokens"] / max(time.perf_counter() - t0, 1e-9)
        if search is not None:
            row["extrapolation"] = search
        if not all(math.isfinite(v) for k, v in row.items() if isinstance(v, float)):
            bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
            raise UserError(f"run {self.spec.run}: non-finite {bad} at step {self.step} "
                            f"(last complete state is kept in {self.state_dir})")
        if self.dist.main:
            with open(self.metrics_path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
        return row

    def export(self):
        models.save_model(self.model, self.tokenizer, self.exports / f"step-{self.step}",
                        dtype=getattr(torch, self.spec.checkpoint_dtype),
                        metadata={"run": self.spec.run, "step": self.step})

    # ---- the loop ------------------------------------------------------------------------------

    def _after_step(self) -> tuple[bool, bool]:
        """(save a state now, then stop), as every rank agrees: a stop asked of any rank, or the
        wall-clock interval since the last save passed on rank 0."""
        due = self.state_every_s > 0 and time.monotonic() - self._last_state >= self.state_every_s
        flags = self.dist.all_max(int(self._stop_requested) * 2 + int(due and self.dist.main))
        return flags > 0, flags >= 2

    def fit(self) -> None:
        spec = self.spec
        handlers = {s: signal.signal(s, self._on_signal) for s in signals.STOP_SIGNALS}
        for signum in signals.early:  # asked while starting up
            self._on_signal(signum, None)
        signals.early.clear()
        self._last_state = time.monotonic()
        tracker = Tracker(self)
        try:
            while self.step < spec.steps:
                _inject_fault("GEOPD_FAULT_SIGTERM_AT_STEP", self.step + 1, signal.SIGTERM)
                _inject_fault("GEOPD_FAULT_USR1_AT_STEP", self.step + 1, signal.SIGUSR1)
                _slow_down("GEOPD_FAULT_STEP_DELAY")
                t0 = time.perf_counter()
                row = self.sft_step() if self.method == "sft" else self.rl_step()
                self.scheduler.step()
                self.step += 1
                row = self.log(row, t0, self.after_update())
                tracker.log(row)
                _inject_fault("GEOPD_FAULT_KILL_AT_STEP", self.step, signal.SIGKILL)
                save, stop = self._after_step()
                if self.step in spec.checkpoints:
                    self.export()
                if self.step in spec.checkpoints or save:
                    resume.save_state(self)
                    self._last_state = time.monotonic()
                if stop and self.step < spec.steps:
                    raise Stop()
        finally:
            tracker.close(self.step, finished=self.step >= spec.steps)
            for s, h in handlers.items():
                signal.signal(s, h)

    def publish(self, out_dir: str | Path, metrics_out: str | Path) -> None:
        """Move the finished exports onto the rule's outputs, then drop the resume state."""
        self.dist.barrier()
        if not self.dist.main:
            return
        missing = [s for s in self.spec.checkpoints if not (self.exports / f"step-{s}").is_dir()]
        if missing:
            raise UserError(f"run {self.spec.run}: checkpoints {missing} were never written")
        out_dir = Path(out_dir)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.exports, out_dir)
        shutil.copyfile(self.metrics_path, metrics_out)
        shutil.rmtree(self.state_dir, ignore_errors=True)


def _inject_fault(variable: str, step: int, sig: int) -> None:
    """Fault injection for the resume tests: signal ourselves at a given step."""
    value = os.environ.get(variable)
    if value is not None and int(value) == step:
        os.kill(os.getpid(), sig)


def _slow_down(variable: str) -> None:
    """Fault tests on the Slurm cluster: stretch each step so a job can be hit mid-run."""
    value = os.environ.get(variable)
    if value:
        time.sleep(float(value))


def train(spec: RunSpec | dict, out_dir, metrics_out, *, threads: int | None = None, model=None, tokenizer=None,
          progress: bool = True, state_every_min: float = STATE_EVERY_MIN,
          tracking: Tracking | dict | None = None) -> None:
    trainer = Trainer(spec, model=model, tokenizer=tokenizer, threads=threads, progress=progress,
                      state_every_min=state_every_min, tracking=tracking)
    trainer.fit()
    trainer.publish(out_dir, metrics_out)
