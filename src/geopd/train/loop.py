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

from geopd.errors import UserError
from geopd.train import checkpoint as ckpt
from geopd.train import objectives as obj
from geopd.train.data import RecordStream, Position, encode_sft, format_prompt, position_ids, shard


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
    def setup(cls, device: str) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if world == 1:
            return cls(0, 1, device)
        import torch.distributed as dist

        backend = "nccl" if device == "cuda" else "gloo"
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

    def barrier(self):
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier()


def shard_model(model, dist: Dist):
    """FSDP2: each decoder layer, then the root. The same code path serves 1..N processes."""
    if dist.world == 1:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cuda" if dist.device.startswith("cuda") else "cpu", (dist.world,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


# ---- schedules and optimizer ---------------------------------------------------------------

def lr_lambda(optim: dict, total_steps: int):
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


def make_optimizer(model, optim: dict, total_steps: int):
    # Decay matrices only (norm gains and biases are not decayed), as in nanoGPT.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim.get("weight_decay", 0.0)},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=optim["lr"], betas=tuple(optim.get("betas", (0.9, 0.999))), eps=optim.get("eps", 1e-8),
        foreach=False,  # the fused/foreach paths change float summation order across torch builds
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim, total_steps))
    return optimizer, scheduler


# ---- the trainer -----------------------------------------------------------------------------

class Stop(Exception):
    """Raised after a requested stop (SIGTERM) once the state is safely saved."""


class Trainer:
    def __init__(self, spec: dict, *, model=None, tokenizer=None, threads: int | None = None,
                 progress: bool = True):
        self.spec = spec
        self.method = spec["method"]
        self.dist = Dist.setup(spec.get("device", "cpu"))
        if threads:
            torch.set_num_threads(threads)
        self.progress = progress and self.dist.main
        self.state_dir = Path(spec["state_dir"])
        self.exports = self.state_dir / "exports"
        self.metrics_path = self.state_dir / "metrics.jsonl"
        self._stop_requested = False

        self.records = self._load_data()  # before any model is loaded: fail fast on bad data
        if model is None:
            ckpt.verify_checkpoint(spec["init"], allow_foreign=True) if Path(spec["init"]).exists() else None
            tokenizer = ckpt.load_tokenizer(spec["init"])
        self.tokenizer = tokenizer
        self.teacher = None
        if spec.get("teacher"):
            from geopd.train.teacher import make_teacher
            from geopd.train.vllm_engine import check_colocation
            check_colocation(spec)  # before anything loads
            te = spec.get("teacher_engine") or {}
            self.teacher = make_teacher(te.get("backend", "hf"), spec["teacher"], tokenizer, device=self.dist.device,
                                        vllm=te.get("vllm"), seed=spec["seed"])
        if model is None:
            model = ckpt.load_model(spec["init"], dtype=torch.float32, device=self.dist.device)
        self.model = shard_model(model, self.dist)
        self.model.train()
        self.optimizer, self.scheduler = make_optimizer(self.model, spec["optim"], spec["steps"] - spec.get("start_step", 0))
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

    def _load_data(self) -> list[dict]:
        from geopd.data import load_split

        keys = {"sft": ("prompt", "response")}.get(self.method, ("prompt",))
        if self.spec.get("loss_on") == "all":
            keys = ("text",)
        records = load_split(self.spec["data"]["dir"], "train", required_keys=keys)
        if self.method in ("rlvr", "mix") and not any(k in records[0] for k in ("answer", "tests")):
            raise UserError(f"{self.spec['data']['dir']}: RLVR needs records with an answer or tests")
        return records

    def _projection_basis(self) -> dict[str, torch.Tensor]:
        """Top-K right singular vectors of each matrix's dW at the projection point (SPEC)."""
        p = self.spec["projection"]
        from geopd.diagnostics.reader import Checkpoint, read_tensor

        tuned, origin = Checkpoint.open(p["checkpoint"]), Checkpoint.open(p["origin"])
        basis = {}
        for name, param in self.model.named_parameters():
            if param.dim() != 2 or name not in tuned:  # tied lm_head is not stored separately
                continue
            delta = read_tensor(tuned.info(name)).double() - read_tensor(origin.info(name)).double()
            basis[name] = obj.projection_basis(delta, p["rank"]).to(param.dtype)
        return basis

    def _rollout_engine(self):
        from geopd.train.rollout import make_rollout_engine

        r = self.spec["rollout"]
        backend, vllm = r.get("backend", "hf"), dict(settings=r.get("vllm"), seed=self.spec["seed"])
        if r.get("source") == "teacher":
            # Off-policy: the teacher samples. A vLLM teacher has no torch module here; a vLLM
            # rollout engine loads the teacher's checkpoint itself.
            return make_rollout_engine(backend, model=getattr(self.teacher, "model", None),
                                       model_path=self.spec["teacher"] if backend == "vllm" else None,
                                       tokenizer=self.tokenizer, **vllm)
        return make_rollout_engine(backend, model=self.model, tokenizer=self.tokenizer,
                                   replicate=self.dist.world > 1, **vllm)

    def _resume(self):
        latest = ckpt.latest_state(self.state_dir)
        if latest is None:
            if self.dist.main:
                self.state_dir.mkdir(parents=True, exist_ok=True)
                # A fresh start: metrics and exports of an older attempt are stale.
                shutil.rmtree(self.exports, ignore_errors=True)
                self.metrics_path.unlink(missing_ok=True)
            self.dist.barrier()
            return
        state = ckpt.load_state(latest, self.model, self.optimizer, self.scheduler)
        self.step = state["step"]
        self.stream = RecordStream(self.records, self.spec["seed"], Position(**state["data_position"]))
        ckpt.restore_rng(state["rng"])
        if self.extrapolator is not None:
            self.extrapolator.load_state_dict(state["extra"]["extrapolator"])
        if self.dist.main:
            self._truncate_metrics(self.step)
            print(f"resumed {self.spec['run']} from {latest} (step {self.step})", file=sys.stderr, flush=True)

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

    def forward_logits(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids.to(self.dist.device),
                         attention_mask=attention_mask.to(self.dist.device),
                         position_ids=position_ids(attention_mask).to(self.dist.device))
        return out.logits.float()

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
        bs = self.spec["batch_size"]
        records = shard(self.stream.next(bs), self.dist.rank, self.dist.world)
        ids, attn, loss_mask = encode_sft(self.tokenizer, records, self.spec["max_length"],
                                          loss_on=self.spec.get("loss_on", "response"))
        # Token-mean over the global batch: scale by this rank's share of the tokens
        # (FSDP averages gradients over ranks).
        n_local = float(loss_mask[:, 1:].sum())
        n_global = self.dist.all_sum(n_local)
        loss_sum = 0.0
        for rows in length_buckets(attn, SFT_BUCKETS):
            # Rows of similar length together, each bucket cut to its own longest row: a batch of
            # short math demos and long programs no longer pays the programs' width everywhere.
            width = int(attn[rows].sum(1).max())
            b_ids, b_attn, b_mask = ids[rows, :width], attn[rows, :width], loss_mask[rows, :width]
            logits = self.forward_logits(b_ids, b_attn)
            labels, mask = b_ids[:, 1:].to(logits.device), b_mask[:, 1:].to(logits.device)
            n_bucket = float(mask.sum())
            loss = obj.sft_loss(logits[:, :-1], labels, mask)
            (loss * n_bucket / n_global * self.dist.world).backward()
            loss_sum += float(loss.detach()) * n_bucket
        grad_norm = self._optimizer_step()
        return {"loss": self.dist.all_sum(loss_sum) / n_global, "grad_norm": grad_norm, "tokens": n_global}

    def _rewards(self, records: list[dict], texts: list[str]) -> torch.Tensor:
        from geopd.train.rewards import reward

        return torch.tensor([reward(rec, text) for rec, text in zip(records, texts)], dtype=torch.float32)

    def rl_step(self) -> dict:
        r, o = self.spec["rollout"], self.spec.get("objective", {})
        n = r["samples"]
        records = shard(self.stream.next(r["prompts_per_step"]), self.dist.rank, self.dist.world)
        prompts = [format_prompt(self.tokenizer, rec["prompt"]) for rec in records]
        if r.get("source") != "teacher":  # an engine with its own copy (vLLM, replicas) needs the update
            self.rollout.sync_weights(self.model)
        seed = (self.spec["seed"] * 1_000_003 + self.step) * 64 + self.dist.rank
        t0 = time.perf_counter()
        ro = self.rollout.generate(prompts, n, temperature=r["temperature"], top_p=r.get("top_p", 1.0),
                                   max_new_tokens=r["max_new_tokens"], seed=seed)
        self.rollout.sleep()  # engine interface: frees a colocated vLLM engine's GPU memory
        t_gen = time.perf_counter() - t0
        seq, attn = ro.sequences, ro.attention_mask
        mask = ro.response_mask[:, 1:].float()
        sample_records = [records[i] for i in ro.prompt_index]
        with torch.no_grad():
            logits = self.forward_logits(seq, attn)[:, :-1] / r["temperature"]
            student_logp = obj.token_logprobs(logits, seq[:, 1:].to(logits.device)).cpu()
            # Behaviour policy of the ratio: the student itself on-policy, the teacher off-policy.
            old_logp = ro.response_logprobs[:, 1:] if r.get("source") == "teacher" else student_logp
            teacher_logp = self.teacher.score(ro)[:, 1:] if self.teacher is not None else None
            if self.teacher is not None:
                self.teacher.sleep()
        rewards = self._rewards(sample_records, ro.texts) if self.method in ("rlvr", "mix") else None

        inputs = {"mask": mask, "student_logp": student_logp, "teacher_logp": teacher_logp,
                  "rewards": rewards, "group_size": n}
        adv, weight = obj.advantages(self.method, o, inputs,
                                     generator=torch.Generator().manual_seed(seed))
        if self.method == "rlvr" and o.get("filter_zero_variance", True):
            keep = obj.nonzero_variance_groups(rewards, n).float()
            weight = weight * keep[:, None]
        aggregation = o.get("aggregation", "token-mean")
        if aggregation not in ("token-mean", "seq-mean-token-mean"):
            raise ValueError(f"objective.aggregation must be token-mean or seq-mean-token-mean, got {aggregation!r}")

        # Minibatch updates over the rollout batch (prompts stay with their samples). Each update
        # is normalised by its own minibatch, counted over every rank, as verl/DAPO do: the
        # token-mean is over the minibatch's valid tokens; seq-mean-token-mean averages the
        # per-sequence token means over the minibatch's sequences that have any valid token.
        mb = max(1, r["global_batch_size"] // self.dist.world)
        stats_sum: dict[str, float] = {}
        grad_norms, loss_total = [], 0.0
        for start in range(0, seq.shape[0], mb):
            sl = slice(start, start + mb)
            mb_mask = mask[sl] * (weight[sl] > 0)
            if aggregation == "token-mean":
                local, denom = "sum", self.dist.all_sum(float(mb_mask.sum()))
            else:
                local, denom = "seq-sum", self.dist.all_sum(float((mb_mask.sum(-1) > 0).sum()))
            if denom == 0:  # every group filtered out: no update (AdamW would still move the weights)
                continue
            logits = self.forward_logits(seq[sl], attn[sl])[:, :-1] / r["temperature"]
            logp = obj.token_logprobs(logits, seq[sl, 1:].to(logits.device))
            loss, stats = obj.clipped_policy_loss(
                logp, old_logp[sl].to(logp.device), (adv[sl] * weight[sl]).to(logp.device),
                mb_mask.to(logp.device), eps_low=o.get("clip_low", 0.2), eps_high=o.get("clip_high", 0.28),
                aggregation=local)
            # FSDP averages gradients over ranks: multiply back by the world size.
            (loss * self.dist.world / max(denom, 1.0)).backward()
            grad_norms.append(self._optimizer_step())
            loss_total += float(loss.detach()) / max(denom, 1.0)
            ent = obj.entropy(logits.detach())
            stats["entropy"] = float((ent * mb_mask.to(ent.device)).sum())
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + float(v)
        valid = float(mask.sum())
        updates = len(grad_norms)
        out = {"loss": self.dist.all_sum(loss_total) / max(updates, 1), "updates": updates,
               "grad_norm": max(grad_norms, default=0.0),
               "tokens": self.dist.all_sum(valid), "gen_s": t_gen,
               "response_len": self.dist.all_sum(valid) / self.dist.all_sum(float(seq.shape[0])),
               "entropy": self.dist.all_sum(stats_sum.get("entropy", 0.0)) / max(self.dist.all_sum(valid), 1.0)}
        if "clip_frac" in stats_sum:
            out["clip_frac"] = stats_sum["clip_frac"] / max(updates, 1)
        if teacher_logp is not None:
            kl = obj.kl_estimates(student_logp, teacher_logp, mask)
            out["mean_r_t"] = self.dist.all_sum(float(kl["k1"]) * valid) / self.dist.all_sum(valid)
            out["kl_k3"] = self.dist.all_sum(float(kl["k3"]) * valid) / self.dist.all_sum(valid)
        if rewards is not None:
            out["reward"] = self.dist.all_sum(float(rewards.sum())) / self.dist.all_sum(float(len(rewards)))
        return out

    # ---- checkpoints ---------------------------------------------------------------------------

    def save_state(self):
        ckpt.save_state(self.state_dir / f"state-{self.step:08d}", model=self.model, optimizer=self.optimizer,
                        scheduler=self.scheduler, step=self.step, rng=ckpt.capture_rng(),
                        data_position=self.stream.state(), extra=self._extra_state())
        if self.dist.main:
            ckpt.prune_states(self.state_dir, keep=1)

    def _extra_state(self) -> dict:
        extra = {"run": self.spec["run"]}
        if self.extrapolator is not None:
            extra["extrapolator"] = self.extrapolator.state_dict()
        return extra

    def export(self):
        ckpt.save_model(self.model, self.tokenizer, self.exports / f"step-{self.step}",
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


SFT_BUCKETS = 4  # micro-batches per SFT step, by length (the same count on every rank: FSDP)


def length_buckets(attention_mask: torch.Tensor, buckets: int) -> list[torch.Tensor]:
    """Row indices sorted by length (stable), cut into at most `buckets` equal parts."""
    order = torch.sort(attention_mask.sum(1), stable=True).indices
    return [part for part in torch.tensor_split(order, min(buckets, len(order))) if len(part)]


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
