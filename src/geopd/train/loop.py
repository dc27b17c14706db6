"""The one training loop of the grid: SFT, OPD, RLVR and alpha-mix, with every control.

Runs differ only by their spec (built by geopd.grid from the config). One step is one
optimizer update for SFT, and one rollout batch (split into updates of `global_batch_size` samples) for
the on-policy methods, as in verl. Objectives come from geopd.train.objectives, chosen by name.

Fault tolerance: at each checkpoint step (and on SIGTERM/SIGUSR1, which Slurm sends before
a time limit) the full state is written to `state_dir`; a restarted job resumes from the last
complete state and ends bitwise where an uninterrupted run would (CPU). Exported checkpoints
accumulate in `state_dir/exports` and are moved onto the rule's output only at the very end,
because Snakemake deletes the outputs of a failed job.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from geopd.engines.chat import encode_sft, format_prompt
from geopd.engines import models
from geopd.engines.ranks import on_rank0
from geopd.errors import UserError
from geopd.io.atomic import publish_dir, scratch_name
from geopd.io.publish import verify_checkpoint
from geopd.train import checkpoint as ckpt
from geopd.train import objectives as obj
from geopd.train.data import JsonlRecords, Position, RecordStream, build_index, shard


# ---- distributed ---------------------------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: str, *, group: bool = False) -> "Dist":
        """From torchrun's environment. group=True: a process group even for one process
        (FSDP2 mixed precision on a single device needs one; an in-memory store, no port)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if world == 1 and not group:
            return cls(0, 1, device)
        import torch.distributed as dist

        backend = "nccl" if device == "cuda" else "gloo"
        if not dist.is_initialized():
            if world == 1:
                dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
            else:
                dist.init_process_group(backend)
        rank = dist.get_rank()
        if device == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        return cls(rank, world, device)

    def all_sum(self, value: float) -> float:
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def all_gather_int(self, value: int) -> list[int]:
        """Every rank's value, in rank order."""
        if self.world == 1:
            return [int(value)]
        import torch.distributed as dist

        out = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.world)]
        dist.all_gather(out, torch.tensor([int(value)], dtype=torch.long, device=self.device))
        return [int(t.item()) for t in out]

    def all_max(self, value: int) -> int:
        return max(self.all_gather_int(value))

    def barrier(self):
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier()


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class EngineSettings:
    """The run spec's `engine` block. An absent block or key keeps the miniature's behaviour:
    fp32 without FSDP on one process, no activation checkpointing, SFT steps in SFT_BUCKETS
    length buckets, one micro-batch per RL update, and lm_head chunks of ~2**24 logits."""
    param_dtype: torch.dtype = torch.float32   # compute dtype of the unsharded weights (FSDP2)
    reduce_dtype: torch.dtype = torch.float32  # gradient reduce-scatter dtype
    activation_checkpointing: bool = False     # per decoder layer
    micro_batch_tokens: int | None = None      # padded tokens per forward/backward on one rank
    logprob_chunk_tokens: int | None = None    # hidden-state rows per lm_head chunk

    @classmethod
    def from_spec(cls, block: dict | None) -> "EngineSettings":
        block = dict(block or {})
        unknown = sorted(set(block) - set(cls.__dataclass_fields__))
        if unknown:
            raise UserError(f"engine: unknown keys {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        for key in ("param_dtype", "reduce_dtype"):
            if key in block:
                if block[key] not in _DTYPES:
                    raise UserError(f"engine.{key} must be one of {sorted(_DTYPES)}, got {block[key]!r}")
                block[key] = _DTYPES[block[key]]
        for key in ("micro_batch_tokens", "logprob_chunk_tokens"):
            if block.get(key) is not None and (not isinstance(block[key], int) or block[key] < 1):
                raise UserError(f"engine.{key} must be a positive integer, got {block[key]!r}")
        return cls(**block)

    @property
    def mixed_precision(self) -> bool:
        return self.param_dtype != torch.float32 or self.reduce_dtype != torch.float32


def shard_model(model, dist: Dist, engine: EngineSettings | None = None):
    """Activation checkpointing per decoder layer (transformers' own, non-reentrant), then FSDP2:
    each decoder layer, then the root, which holds the embedding, the final norm and lm_head --
    one unit, so a tied lm_head/embedding stays one parameter -- with the engine's
    MixedPrecisionPolicy over fp32 master weights. The same code path serves 1..N processes;
    one process without mixed precision stays a plain module (the miniature's bitwise CPU path).
    Finally the chunked log-prob method is attached (see geopd.engines.logprobs)."""
    from geopd.engines import logprobs

    engine = engine or EngineSettings()
    if engine.activation_checkpointing:
        # transformers 5.20 renamed gradient_checkpointing_enable; vLLM 0.32 (envs/vllm-base.txt,
        # the GPU nodes' env) pins transformers < 5.20, which has only the old name.
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    if dist.world > 1 or engine.mixed_precision:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh("cuda" if dist.device.startswith("cuda") else "cpu", (dist.world,))
        mp = MixedPrecisionPolicy(param_dtype=engine.param_dtype, reduce_dtype=engine.reduce_dtype)
        for layer in model.get_decoder().layers:
            fully_shard(layer, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
    logprobs.attach(model)
    return model


def settings_fingerprint(spec: dict) -> str:
    """What a run's training states were trained under: its spec but the export cadence
    (checkpoints, keep_state), which changes no weight."""
    import hashlib

    kept = {k: v for k, v in spec.items() if k not in ("checkpoints", "keep_state")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


def num_updates(samples: int, global_batch_size: int) -> int:
    """Optimizer updates per rollout batch: samples // global_batch_size, as slime counts them
    (OPD 300 x 8 / 64 -> 37, RLVR 1024 x 8 / 512 -> 16), at least one. slime refuses a batch that
    is not a multiple; here the remainder is spread over the updates (see update_of_samples):
    2400 samples train in 37 updates of 64 or 65, none dropped, never fewer than configured."""
    if global_batch_size < 1:
        raise UserError(f"rollout.global_batch_size must be >= 1, got {global_batch_size}")
    return max(1, samples // global_batch_size)


def update_of_samples(counts: list[int], rank: int, updates: int) -> torch.Tensor:
    """Update index of each of this rank's samples. Sample g of the rollout batch (rank-major,
    i.e. the step's prompt order with each prompt's samples together) trains in update g mod U:
    every update holds N // U or N // U + 1 samples, each rank contributes a near-equal share to
    every update (no rank idles through an update), and the grouping does not depend on the
    number of ranks. Advantages are computed before this split, over whole GRPO groups."""
    offset = sum(counts[:rank])
    return (torch.arange(counts[rank]) + offset) % updates


# ---- schedules and optimizer ---------------------------------------------------------------

def lr_lambda(optim: dict, total_steps: int):
    """The learning-rate factor after `step` updates of a run of `total_steps` (warmup, then
    constant, linear or cosine decay to min_lr_ratio)."""
    warmup = int(round(optim.get("warmup", 0.0) * total_steps))
    schedule = optim.get("schedule", "constant")
    floor = optim.get("min_lr_ratio", 0.0)

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


def make_optimizer(model, optim: dict, total_steps: int, start_step: int = 0):
    """AdamW and its schedule. A run that starts at `start_step` of a longer run (run@step)
    continues that run's schedule: `total_steps` is the full run's length and the factor is
    evaluated from `start_step` on, not warmed up again."""
    # Decay matrices only (norm gains and biases are not decayed), as in nanoGPT.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim.get("weight_decay", 0.0)},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=optim["lr"], betas=tuple(optim.get("betas", (0.9, 0.999))), eps=optim.get("eps", 1e-8),
        foreach=False,  # the fused/foreach paths change float summation order across torch builds
    )
    factor = lr_lambda(optim, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: factor(start_step + k))
    return optimizer, scheduler


# ---- the trainer -----------------------------------------------------------------------------

class Stop(Exception):
    """Raised after a requested stop (SIGTERM) once the state is safely saved."""


class Trainer:
    def __init__(self, spec: dict, *, model=None, tokenizer=None, threads: int | None = None,
                 progress: bool = True):
        self.spec = spec
        self.method = spec["method"]
        self.engine = EngineSettings.from_spec(spec.get("engine"))
        self.dist = Dist.setup(spec.get("device", "cpu"), group=self.engine.mixed_precision)
        if threads:
            torch.set_num_threads(threads)
        self.progress = progress and self.dist.main
        self.state_dir = Path(spec["state_dir"])
        self.exports = self.state_dir / "exports"
        self.metrics_path = self.state_dir / "metrics.jsonl"
        self._stop_requested = False

        self.records = self._load_data()  # before any model is loaded: fail fast on bad data
        if model is None:
            verify_checkpoint(spec["init"], allow_foreign=True) if Path(spec["init"]).exists() else None
            tokenizer = models.load_tokenizer(spec["init"])
        self.tokenizer = tokenizer
        self.teacher = None
        if spec.get("teacher"):
            from geopd.engines.vllm_engine import check_colocation
            check_colocation(spec)  # before anything loads
        # The student is sharded before any engine starts. Under FSDP2 (shard_model) it is sharded
        # before its weights exist and each rank reads only its shards; one fp32 process without
        # mixed precision loads it whole (the miniature's bitwise path).
        if model is not None:
            self.model = shard_model(model, self.dist, self.engine)
        elif self.dist.world > 1 or self.engine.mixed_precision:
            self.model = models.load_sharded_model(spec["init"], shard=lambda m: shard_model(m, self.dist, self.engine),
                                                 device=self.dist.device)
        else:
            self.model = shard_model(models.load_model(spec["init"], dtype=torch.float32, device=self.dist.device),
                                     self.dist, self.engine)
        if spec.get("teacher"):
            from geopd.engines.teacher import make_teacher
            te = spec.get("teacher_engine") or {}
            self.teacher = make_teacher(te.get("backend", "hf"), spec["teacher"], tokenizer, device=self.dist.device,
                                        vllm=te.get("vllm"), seed=spec["seed"])
        self.model.train()
        self.optimizer, self.scheduler = make_optimizer(self.model, spec["optim"], spec["steps"],
                                                        start_step=spec.get("start_step", 0))
        self.basis = self._projection_basis() if spec.get("projection") else None
        self.rollout = self._rollout_engine() if self.method != "sft" else None
        self.step = spec.get("start_step", 0)
        self.stream = RecordStream(self.records, spec["seed"])
        self.extrapolator = None
        if spec.get("extrapolation"):
            from geopd.train.effopd import make_extrapolator
            self.extrapolator = make_extrapolator(self)  # theta_base = the initial student
        self._resume()

    # ---- set-up ----------------------------------------------------------------------------

    def _load_data(self) -> JsonlRecords:
        """The train split, read on demand through an index of line offsets: rank 0 scans the
        file once and caches the index in the state dir; no rank holds the records."""
        path = Path(self.spec["data"]["dir"]) / "train.jsonl"
        if not path.is_file():
            raise UserError(f"data file not found: {path} (run the prepare_data rule first)")
        cache = self.state_dir / "data-index"
        on_rank0(lambda: build_index(path, cache))
        records = JsonlRecords(path, cache)
        if not len(records):
            raise UserError(f"{path}: the train split is empty")
        first = records[0]
        if self.spec.get("loss_on") == "all":
            options = [("text",)]
        elif self.method == "sft":
            options = [("messages",), ("prompt", "response")]
        else:
            options = [("prompt",)]
        if not any(all(k in first for k in keys) for keys in options):
            raise UserError(f"{path}: records lack key(s) {' or '.join(str(list(k)) for k in options)}; "
                            "wrong data set for this stage?")
        if self.method in ("rlvr", "mix") and not any(k in first for k in ("answer", "tests")):
            raise UserError(f"{self.spec['data']['dir']}: RLVR needs records with an answer or tests")
        if self.method == "sft" and self.dist.main:
            seen = self.spec["batch_size"] * (self.spec["steps"] - self.spec.get("start_step", 0))
            print(f"{self.spec['run']}: {seen} records = {seen / len(records):.3g} epochs of {len(records)}",
                  file=sys.stderr, flush=True)
        return records

    def _projection_basis(self) -> dict[str, torch.Tensor]:
        """Top-K right singular vectors of each matrix's dW at the projection point (SPEC)."""
        p = self.spec["projection"]
        from geopd.io.tensors import Checkpoint, read_tensor

        tuned, origin = Checkpoint.open(p["checkpoint"]), Checkpoint.open(p["origin"])
        basis = {}
        for name, param in self.model.named_parameters():
            if param.dim() != 2 or name not in tuned:  # tied lm_head is not stored separately
                continue
            delta = read_tensor(tuned.info(name)).double() - read_tensor(origin.info(name)).double()
            basis[name] = obj.projection_basis(delta, p["rank"]).to(param.dtype)
        return basis

    def _rollout_engine(self):
        from geopd.engines.rollout import make_rollout_engine

        r = self.spec["rollout"]
        backend, vllm = r.get("backend", "hf"), dict(settings=r.get("vllm"), seed=self.spec["seed"])
        if r.get("source") == "teacher":
            # Off-policy: the teacher samples. A vLLM teacher samples from its own engine (one copy
            # of its weights); otherwise a vLLM rollout engine loads the teacher's checkpoint.
            from geopd.engines.teacher import VLLMTeacher

            if backend == "vllm" and isinstance(self.teacher, VLLMTeacher):
                from geopd.engines.rollout import VLLMRollout

                return VLLMRollout.on_engine(self.teacher.engine, self.tokenizer, self.teacher.model_path)
            return make_rollout_engine(backend, model=getattr(self.teacher, "model", None),
                                       model_path=self.spec["teacher"] if backend == "vllm" else None,
                                       tokenizer=self.tokenizer, **vllm)
        return make_rollout_engine(backend, model=self.model, tokenizer=self.tokenizer,
                                   replicate=self.dist.world > 1, **vllm)

    def _resume(self):
        latest = ckpt.latest_state(self.state_dir)
        saved = ckpt.state_extra(latest).get("settings") if latest is not None else None
        if saved is not None and saved != settings_fingerprint(self.spec):
            # Snakemake reruns a run whose settings changed; the state of an earlier attempt was
            # trained under the old ones, so continuing it would mix the two.
            if self.dist.main:
                print(f"{self.spec['run']}: {latest} was saved under other settings (the config changed); "
                      "starting over", file=sys.stderr, flush=True)
            self.dist.barrier()  # every rank has read the state list before it goes
            if self.dist.main:
                shutil.rmtree(self.state_dir)
            latest = None
        if latest is None:
            if self.dist.main:
                self.state_dir.mkdir(parents=True, exist_ok=True)
                # A fresh start: metrics and exports of an older attempt are stale.
                shutil.rmtree(self.exports, ignore_errors=True)
                self.metrics_path.unlink(missing_ok=True)
            self.dist.barrier()
            if self.spec.get("continues"):
                self._continue(self.spec["continues"])
            return
        state = ckpt.load_state(latest, self.model, self.optimizer, self.scheduler)
        self.step = state["step"]
        self.stream = RecordStream(self.records, self.spec["seed"], Position(**state["data_position"]))
        ckpt.restore_rng(state["rng"])
        if self.extrapolator is not None:
            if not (state["rank_extra"] or {}).get("extrapolator"):
                raise UserError(f"{latest}: no per-rank EffOPD state; it cannot resume run {self.spec['run']}")
            self.extrapolator.load_state_dict(state["rank_extra"]["extrapolator"])
        if self.step in self.spec.get("keep_state", ()):
            self._keep_state(latest)  # a kill between saving and keeping it
        if self.dist.main:
            self._truncate_metrics(self.step)
            print(f"resumed {self.spec['run']} from {latest} (step {self.step})", file=sys.stderr, flush=True)

    def _continue(self, c: dict):
        """A run started from run@step continues that run: its fp32 weights, Adam moments, data
        position and RNG as they were at that step (kept beside its checkpoints, `keep_state`),
        under this run's own hyperparameters and the schedule of make_optimizer."""
        path = Path(c["state"])
        if not path.is_dir():
            raise UserError(f"run {self.spec['run']} continues {c['run']}@{c['step']}, but {path} does not exist: "
                            f"rerun {c['run']} (its checkpoints now keep the training state at steps other runs "
                            "start from)")
        own = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        state = ckpt.load_state(path, self.model, self.optimizer, None)
        for group, hyper in zip(self.optimizer.param_groups, own):
            group.update(hyper)  # lr from this run's schedule; betas, eps, decay from its spec
        if state["step"] != self.step:
            raise UserError(f"{path}: training state of step {state['step']}, run {self.spec['run']} starts at "
                            f"step {self.step}")
        self.stream = RecordStream(self.records, self.spec["seed"], Position(**state["data_position"]))
        ckpt.restore_rng(state["rng"])
        if self.dist.main:
            print(f"{self.spec['run']} continues {c['run']} from {path} (step {self.step}: weights, Adam moments, "
                  "data position)", file=sys.stderr, flush=True)

    def _truncate_metrics(self, step: int):
        if not self.metrics_path.exists():
            return
        kept = [l for l in self.metrics_path.read_text().splitlines() if l and json.loads(l)["step"] <= step]
        self.metrics_path.write_text("".join(l + "\n" for l in kept))

    # ---- signals -----------------------------------------------------------------------------

    def _on_signal(self, signum, frame):
        self._stop_requested = True
        if self.dist.main:
            print(f"signal {signum}: saving state after step {self.step + 1}", file=sys.stderr, flush=True)

    # ---- one step ----------------------------------------------------------------------------

    def _token_stats(self, ids, attn, token_mask, *, temperature: float = 1.0, entropy: bool = False):
        """The student's log-probs [b, w] (and entropies) where token_mask is set, lm_head in chunks."""
        from geopd.engines.logprobs import token_stats

        dev = self.dist.device
        return token_stats(self.model, ids.to(dev), attn.to(dev), token_mask.to(dev), temperature=temperature,
                           chunk_tokens=self.engine.logprob_chunk_tokens, entropy=entropy)

    def _micro_batches(self, attn, rows=None, *, buckets: int | None = None) -> list:
        """This rank's micro-batches, padded with None (zero-weight dummies) to the count of the
        rank with the most: FSDP's all-gathers and reduce-scatters need the same calls everywhere."""
        from geopd.engines.logprobs import plan_micro_batches

        plans = plan_micro_batches(attn, rows, token_budget=self.engine.micro_batch_tokens, buckets=buckets)
        return plans + [None] * (self.dist.all_max(len(plans)) - len(plans))

    def _dummy_backward(self) -> None:
        from geopd.engines.logprobs import dummy_inputs

        logp, _ = self._token_stats(*dummy_inputs(self.dist.device))
        (logp.sum() * 0.0).backward()

    def _optimizer_step(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.spec["optim"].get("grad_clip")
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
        return self.sft_update(shard(self.stream.next(self.spec["batch_size"]), self.dist.rank, self.dist.world))

    def sft_update(self, records: list[dict]) -> dict:
        """One optimizer update on this rank's share of the step's records (shares may differ)."""
        if records:
            ids, attn, loss_mask = encode_sft(self.tokenizer, records, self.spec["max_length"],
                                              loss_on=self.spec.get("loss_on", "response"))
        else:  # more ranks than sequences
            ids = attn = torch.zeros((0, 1), dtype=torch.long)
            loss_mask = torch.zeros((0, 1))
        # Token-mean over the global batch, exact with uneven shares: each micro-batch's summed
        # loss over the global token count, times the world size (FSDP averages over ranks).
        n_global = max(self.dist.all_sum(float(loss_mask[:, 1:].sum())), 1.0)
        loss_sum = 0.0
        # Without a token budget: SFT_BUCKETS length buckets, each cut to its own longest row.
        for mb in self._micro_batches(attn, buckets=SFT_BUCKETS):
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
        from geopd.train.rewards import reward

        return torch.tensor([reward(rec, text) for rec, text in zip(records, texts)], dtype=torch.float32)

    reward_seen: bool | None = None  # a non-zero task reward in some step so far; None: not read yet

    def _check_rewards(self, rewards: torch.Tensor) -> None:
        """Stop a run whose task rewards are all zero for its first `zero_reward_patience` steps."""
        patience = self.spec.get("objective", {}).get("zero_reward_patience", obj.ZERO_REWARD_PATIENCE)
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
        done = self.step + 1 - self.spec.get("start_step", 0)
        if done >= patience:
            samples = int(self.dist.all_sum(float(len(rewards))))
            raise UserError(
                f"run {self.spec['run']}: every reward of its first {done} steps was 0 ({samples} samples in "
                f"step {self.step + 1}); the prompts' answer format, the responses and the grader do not fit "
                f"together, and {self.method} would train on nothing. Check the data's answer format, or set "
                f"objective.zero_reward_patience: 0 to train anyway (last complete state: {self.state_dir})")

    def rl_step(self) -> dict:
        r = self.spec["rollout"]
        records = shard(self.stream.next(r["prompts_per_step"]), self.dist.rank, self.dist.world)
        prompts = [format_prompt(self.tokenizer, rec["prompt"]) for rec in records]
        if r.get("source") != "teacher":  # an engine with its own copy (vLLM, replicas) needs the update
            self.rollout.sync_weights(self.model)
        seed = (self.spec["seed"] * 1_000_003 + self.step) * 64 + self.dist.rank
        t0 = time.perf_counter()
        # Every rank calls the engine, also with an empty share of the prompts (more ranks than
        # prompts): an engine's tensor-parallel group may span ranks. It returns no samples then.
        ro = self.rollout.generate(prompts, r["samples"], temperature=r["temperature"], top_p=r.get("top_p", 1.0),
                                   max_new_tokens=r["max_new_tokens"], seed=seed)
        self.rollout.sleep()  # engine interface: frees a colocated vLLM engine's GPU memory
        t_gen = time.perf_counter() - t0
        return {**self.train_on(ro, records, seed), "gen_s": t_gen}

    def train_on(self, ro, records: list[dict], seed: int) -> dict:
        """Score this rank's rollouts (`records[i]` is the prompt of group i), compute the
        advantages over the whole batch, and take the step's policy updates."""
        from geopd.engines.rollout import sequence_logprobs

        r, o = self.spec["rollout"], self.spec.get("objective", {})
        aggregation = o.get("aggregation", "token-mean")
        if aggregation not in ("token-mean", "seq-mean-token-mean"):
            raise ValueError(f"objective.aggregation must be token-mean or seq-mean-token-mean, got {aggregation!r}")
        n, temperature = r["samples"], r["temperature"]
        seq, attn = ro.sequences, ro.attention_mask
        mask = ro.response_mask[:, 1:].float()
        sample_records = [records[i] for i in ro.prompt_index]
        with torch.no_grad():
            student_logp = sequence_logprobs(
                self.model, seq, attn, ro.response_mask, temperature=temperature,
                micro_batch_tokens=self.engine.micro_batch_tokens, chunk_tokens=self.engine.logprob_chunk_tokens,
                pad_to=self.dist.all_max)[:, 1:]
            # Behaviour policy of the ratio: the student itself on-policy, the teacher off-policy.
            old_logp = ro.response_logprobs[:, 1:] if r.get("source") == "teacher" else student_logp
            teacher_logp = self.teacher.score(ro)[:, 1:] if self.teacher is not None else None
            if self.teacher is not None:
                self.teacher.sleep()
        rewards = self._rewards(sample_records, ro.texts) if self.method in ("rlvr", "mix") else None
        if rewards is not None:
            self._check_rewards(rewards)

        inputs = {"mask": mask, "student_logp": student_logp, "teacher_logp": teacher_logp,
                  "rewards": rewards, "group_size": n}
        adv, weight = obj.advantages(self.method, o, inputs, generator=torch.Generator().manual_seed(seed))
        if self.method == "rlvr" and o.get("filter_zero_variance", True):
            weight = weight * obj.nonzero_variance_groups(rewards, n).float()[:, None]
        out = self._policy_updates(seq, attn, mask * (weight > 0), old_logp, adv * weight, aggregation)

        valid, samples = self.dist.all_sum(float(mask.sum())), self.dist.all_sum(float(seq.shape[0]))
        out.update({"tokens": valid, "response_len": valid / max(samples, 1.0)})
        if teacher_logp is not None:
            kl = obj.kl_estimates(student_logp, teacher_logp, mask)
            out["mean_r_t"] = self.dist.all_sum(float(kl["k1"]) * float(mask.sum())) / max(valid, 1.0)
            out["kl_k3"] = self.dist.all_sum(float(kl["k3"]) * float(mask.sum())) / max(valid, 1.0)
        if rewards is not None:
            out["reward"] = self.dist.all_sum(float(rewards.sum())) / max(samples, 1.0)
        return out

    def _policy_updates(self, seq, attn, kept, old_logp, adv, aggregation: str) -> dict:
        """The step's optimizer updates over the rollout batch (rollout.global_batch_size samples
        each; see num_updates and update_of_samples). `kept` [N, L-1] marks the tokens that train.

        Each update is normalised by its own samples, counted over every rank, as verl/DAPO do:
        token-mean over their kept tokens; seq-mean-token-mean averages per-sequence token means
        over their sequences with any kept token. Micro-batches sum their share of that, so the
        result does not depend on how the samples fall onto ranks and micro-batches."""
        r, o = self.spec["rollout"], self.spec.get("objective", {})
        counts = self.dist.all_gather_int(seq.shape[0])
        updates = num_updates(sum(counts), r.get("global_batch_size", sum(counts)))
        which = update_of_samples(counts, self.dist.rank, updates)
        token_kept = torch.nn.functional.pad(kept, (1, 0)) > 0  # aligned with the tokens
        has_tokens = kept.sum(1) > 0
        dev, world = self.dist.device, self.dist.world
        sums = {"loss": 0.0, "tokens": 0.0, "clipped": 0.0, "entropy": 0.0}
        grad_norms = []
        for u in range(updates):
            rows = ((which == u) & has_tokens).nonzero().squeeze(1)
            local = float(kept[rows].sum()) if aggregation == "token-mean" else float(len(rows))
            denom = self.dist.all_sum(local)
            if denom == 0:  # every group filtered out: no update (AdamW would still move the weights)
                continue
            for mb in self._micro_batches(attn, rows):
                if mb is None:
                    self._dummy_backward()
                    continue
                cols, shifted = slice(mb.start, mb.stop), slice(mb.start, mb.stop - 1)
                logp, ent = self._token_stats(seq[mb.rows, cols], attn[mb.rows, cols], token_kept[mb.rows, cols],
                                              temperature=r["temperature"], entropy=True)
                m = kept[mb.rows, shifted].to(dev)
                loss, stats = obj.clipped_policy_loss(
                    logp[:, 1:], old_logp[mb.rows, shifted].to(dev), adv[mb.rows, shifted].to(dev), m,
                    eps_low=o.get("clip_low", 0.2), eps_high=o.get("clip_high", 0.28),
                    aggregation="sum" if aggregation == "token-mean" else "seq-sum")
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
               "entropy": total["entropy"] / max(total["tokens"], 1.0), "samples": sum(counts)}
        if done:
            out["clip_frac"] = total["clipped"] / max(total["tokens"], 1.0)
        return out

    # ---- checkpoints ---------------------------------------------------------------------------

    def save_state(self):
        path = ckpt.save_state(self.state_dir / f"state-{self.step:08d}", model=self.model, optimizer=self.optimizer,
                               scheduler=self.scheduler, step=self.step, rng=ckpt.capture_rng(),
                               data_position=self.stream.state(), extra=self._extra_state(),
                               rank_extra=self._rank_extra_state())
        if self.step in self.spec.get("keep_state", ()):
            self._keep_state(path)
        if self.dist.main:
            ckpt.prune_states(self.state_dir, keep=1)

    def _keep_state(self, state: Path) -> None:
        """Keep this step's training state with the exports (as `state-{step}`), for the runs
        that start from this checkpoint and continue this run (geopd.grid: keep_state). Hard
        links: no second copy on disk, and pruning the original leaves it intact. Published as
        checkpoints are (a scratch name, then a swap), so a kill never loses a kept state."""
        if self.dist.main:
            final = self.exports / f"state-{self.step}"
            tmp = scratch_name(final, "tmp")
            shutil.copytree(state, tmp, copy_function=_link_or_copy)
            publish_dir(tmp, final)
        self.dist.barrier()

    def _extra_state(self) -> dict:
        return {"run": self.spec["run"], "settings": settings_fingerprint(self.spec)}

    def _rank_extra_state(self) -> dict | None:
        """What differs between ranks: EffOPD's extrapolation base holds each rank's FSDP shard."""
        if self.extrapolator is None:
            return None
        return {"extrapolator": self.extrapolator.state_dict()}

    def export(self):
        models.save_model(self.model, self.tokenizer, self.exports / f"step-{self.step}",
                        dtype=getattr(torch, self.spec.get("checkpoint_dtype", "bfloat16")),
                        metadata={"run": self.spec["run"], "step": self.step})

    def after_update(self):
        """After each step's updates: EffOPD's extrapolation search at steps 1, 2, 4, 8, ..."""
        if self.extrapolator is None:
            return None
        search = self.extrapolator.maybe_search(self.step)
        self.rollout.sleep()  # the search generates with it
        return search

    # ---- the loop ------------------------------------------------------------------------------

    def fit(self) -> None:
        spec = self.spec
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGUSR1)}
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=spec["steps"], initial=self.step, desc=spec["run"], unit="step",
                       dynamic_ncols=True, mininterval=1.0)
        try:
            while self.step < spec["steps"]:
                _inject_fault("GEOPD_FAULT_SIGTERM_AT_STEP", self.step + 1, signal.SIGTERM)
                _slow_down("GEOPD_FAULT_STEP_DELAY")
                t0 = time.perf_counter()
                row = self.sft_step() if self.method == "sft" else self.rl_step()
                self.scheduler.step()
                self.step += 1
                search = self.after_update()
                row = {"step": self.step, "lr": self.scheduler.get_last_lr()[0], **row, "world": self.dist.world}
                row["epoch"] = self.stream.epochs
                row["tokens_per_s"] = row["tokens"] / max(time.perf_counter() - t0, 1e-9)
                if search is not None:
                    row["extrapolation"] = search
                if not all(math.isfinite(v) for k, v in row.items() if isinstance(v, float)):
                    bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
                    raise UserError(f"run {spec['run']}: non-finite {bad} at step {self.step} "
                                    f"(last complete state is kept in {self.state_dir})")
                if self.dist.main:
                    with open(self.metrics_path, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                _inject_fault("GEOPD_FAULT_KILL_AT_STEP", self.step, signal.SIGKILL)
                if self.step in spec["checkpoints"]:
                    self.export()
                    self.save_state()
                elif self._stop_requested:
                    self.save_state()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{row[k]:.3g}" for k in ("loss", "reward", "mean_r_t") if k in row})
                if self._stop_requested:
                    raise Stop()
        finally:
            if bar is not None:
                bar.close()
            for s, h in handlers.items():
                signal.signal(s, h)

    def publish(self, out_dir: str | Path, metrics_out: str | Path) -> None:
        """Move the finished exports onto the rule's outputs, then drop the resume state."""
        self.dist.barrier()
        if not self.dist.main:
            return
        missing = [s for s in self.spec["checkpoints"] if not (self.exports / f"step-{s}").is_dir()]
        if missing:
            raise UserError(f"run {self.spec['run']}: checkpoints {missing} were never written")
        out_dir = Path(out_dir)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.exports, out_dir)
        shutil.copyfile(self.metrics_path, metrics_out)
        shutil.rmtree(self.state_dir, ignore_errors=True)


SFT_BUCKETS = 4  # micro-batches per SFT step, by length, when the engine sets no token budget


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


def train(spec: dict, out_dir, metrics_out, *, threads: int | None = None, model=None, tokenizer=None,
          progress: bool = True) -> None:
    trainer = Trainer(spec, model=model, tokenizer=tokenizer, threads=threads, progress=progress)
    trainer.fit()
    trainer.publish(out_dir, metrics_out)
