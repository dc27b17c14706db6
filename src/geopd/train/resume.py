"""A run's training state across jobs: resuming after a kill, continuing another run, and the
states kept for the runs that continue this one.

At each checkpoint step (and on a requested stop) the full state is saved to the run's
state_dir (geopd.train.checkpoint: weights, Adam moments, scheduler, data position, RNG); a
restarted job resumes from the last complete state and ends bitwise where an uninterrupted run
would (CPU). A state saved under other settings (the config changed: Snakemake reruns the run)
is not resumed: `settings_fingerprint` tells them apart. A run started from run@step continues
that run from the state it kept at that step (`keep_state`, beside its checkpoints).

The functions take the Trainer (geopd.train.loop) whose state they save or restore.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from geopd.errors import UserError
from geopd.io.atomic import publish_dir, scratch_name
from geopd.spec import Continuation, RunSpec
from geopd.train import checkpoint as ckpt
from geopd.train.data import Position, RecordStream


def settings_fingerprint(spec: RunSpec) -> str:
    """What a run's training states were trained under: its spec but the export cadence
    (checkpoints, keep_state), which changes no weight."""
    kept = {k: v for k, v in spec.to_dict().items() if k not in ("checkpoints", "keep_state")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def save_state(trainer) -> None:
    """The trainer's full state after its current step; the one before is pruned."""
    path = ckpt.save_state(trainer.state_dir / f"state-{trainer.step:08d}", model=trainer.model,
                           optimizer=trainer.optimizer, scheduler=trainer.scheduler, step=trainer.step,
                           rng=ckpt.capture_rng(), data_position=trainer.stream.state(),
                           extra=_extra_state(trainer), rank_extra=_rank_extra_state(trainer))
    if trainer.step in trainer.spec.keep_state:
        keep_state(trainer, path)
    if trainer.dist.main:
        ckpt.prune_states(trainer.state_dir, keep=1)


def keep_state(trainer, state: Path) -> None:
    """Keep this step's training state with the exports (as `state-{step}`), for the runs
    that start from this checkpoint and continue this run (geopd.grid: keep_state). Hard
    links: no second copy on disk, and pruning the original leaves it intact. Published as
    checkpoints are (a scratch name, then a swap), so a kill never loses a kept state."""
    if trainer.dist.main:
        final = trainer.exports / f"state-{trainer.step}"
        tmp = scratch_name(final, "tmp")
        shutil.copytree(state, tmp, copy_function=_link_or_copy)
        publish_dir(tmp, final)
    trainer.dist.barrier()


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


def _extra_state(trainer) -> dict:
    return {"run": trainer.spec.run, "settings": settings_fingerprint(trainer.spec)}


def _rank_extra_state(trainer) -> dict | None:
    """What differs between ranks: EffOPD's extrapolation base holds each rank's FSDP shard."""
    if trainer.extrapolator is None:
        return None
    return {"extrapolator": trainer.extrapolator.state_dict()}


def resume(trainer) -> None:
    """Resume from the last complete state saved under the same settings; else start fresh
    (continuing the run this one starts from, if any)."""
    spec, dist = trainer.spec, trainer.dist
    latest = ckpt.latest_state(trainer.state_dir)
    saved = ckpt.state_extra(latest).get("settings") if latest is not None else None
    if saved is not None and saved != settings_fingerprint(spec):
        # Snakemake reruns a run whose settings changed; the state of an earlier attempt was
        # trained under the old ones, so continuing it would mix the two.
        if dist.main:
            print(f"{spec.run}: {latest} was saved under other settings (the config changed); "
                  "starting over", file=sys.stderr, flush=True)
        dist.barrier()  # every rank has read the state list before it goes
        if dist.main:
            shutil.rmtree(trainer.state_dir)
        latest = None
    if latest is None:
        if dist.main:
            trainer.state_dir.mkdir(parents=True, exist_ok=True)
            # A fresh start: metrics and exports of an older attempt are stale.
            shutil.rmtree(trainer.exports, ignore_errors=True)
            trainer.metrics_path.unlink(missing_ok=True)
        dist.barrier()
        if spec.continues:
            continue_run(trainer, spec.continues)
        return
    state = ckpt.load_state(latest, trainer.model, trainer.optimizer, trainer.scheduler)
    trainer.step = state["step"]
    trainer.stream = RecordStream(trainer.records, spec.seed, Position(**state["data_position"]))
    ckpt.restore_rng(state["rng"])
    if trainer.extrapolator is not None:
        if not (state["rank_extra"] or {}).get("extrapolator"):
            raise UserError(f"{latest}: no per-rank EffOPD state; it cannot resume run {spec.run}")
        trainer.extrapolator.load_state_dict(state["rank_extra"]["extrapolator"])
    if trainer.step in spec.keep_state:
        keep_state(trainer, latest)  # a kill between saving and keeping it
    if dist.main:
        truncate_metrics(trainer.metrics_path, trainer.step)
        print(f"resumed {spec.run} from {latest} (step {trainer.step})", file=sys.stderr, flush=True)


def continue_run(trainer, c: Continuation) -> None:
    """A run started from run@step continues that run: its fp32 weights, Adam moments, data
    position and RNG as they were at that step (kept beside its checkpoints, `keep_state`),
    under this run's own hyperparameters and the schedule of make_optimizer."""
    spec = trainer.spec
    path = Path(c.state)
    if not path.is_dir():
        raise UserError(f"run {spec.run} continues {c.run}@{c.step}, but {path} does not exist: "
                        f"rerun {c.run} (its checkpoints now keep the training state at steps other runs "
                        "start from)")
    own = [{k: v for k, v in g.items() if k != "params"} for g in trainer.optimizer.param_groups]
    state = ckpt.load_state(path, trainer.model, trainer.optimizer, None)
    for group, hyper in zip(trainer.optimizer.param_groups, own):
        group.update(hyper)  # lr from this run's schedule; betas, eps, decay from its spec
    if state["step"] != trainer.step:
        raise UserError(f"{path}: training state of step {state['step']}, run {spec.run} starts at "
                        f"step {trainer.step}")
    trainer.stream = RecordStream(trainer.records, spec.seed, Position(**state["data_position"]))
    ckpt.restore_rng(state["rng"])
    if trainer.dist.main:
        print(f"{spec.run} continues {c.run} from {path} (step {trainer.step}: weights, Adam moments, "
              "data position)", file=sys.stderr, flush=True)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the metrics rows after `step` (a resumed run writes them again)."""
    if not path.exists():
        return
    kept = [l for l in path.read_text().splitlines() if l and json.loads(l)["step"] <= step]
    path.write_text("".join(l + "\n" for l in kept))
