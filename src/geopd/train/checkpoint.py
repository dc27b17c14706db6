"""Resumable training state: fp32 master weights, optimizer, scheduler, per-rank RNG and the
data position as torch files, in a `state-{step:08d}` folder published whole with a manifest
(geopd.io.publish), so a folder under that name is always complete and a killed save leaves
only a scratch folder that the next save removes.

Under torch.distributed (FSDP2 `fully_shard`) every rank calls `save_state` and `load_state`:
the full state is gathered to rank 0 (CPU), only rank 0 writes, and an error on rank 0 is
re-raised on every rank instead of leaving the others at a barrier (geopd.engines.ranks).
Exported models (Hugging Face folders) are geopd.engines.models'.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import warnings
from pathlib import Path

import torch

from geopd.engines.ranks import gather_objects, group, on_rank0, rank, world_size, writer
from geopd.errors import UserError
from geopd.io.atomic import scratch_name
from geopd.io.publish import clean_stale, is_complete, verify_checkpoint, write_atomically

STATE_PATTERN = re.compile(r"^state-(\d{8})$")


# ---- random number generators -----------------------------------------------------------------

def capture_rng() -> dict:
    """Python, numpy, torch CPU and CUDA generator states, as plain values and tensors (so the
    state file loads with torch.load(weights_only=True))."""
    import numpy as np

    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": {"version": version, "state": list(state), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict) -> None:
    import numpy as np

    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            warnings.warn(f"CUDA RNG state of {len(state['cuda'])} devices not restored on "
                          f"{torch.cuda.device_count()} devices")




# ---- resumable training state --------------------------------------------------------------------

def _stage_rank_files(final: Path, rank_extra: dict) -> list[Path]:
    """Each rank writes its `rank_extra` into a scratch folder of its own beside `final` (the
    shared file system every rank resumes from); returns every rank's folder, in rank order.
    Large per-rank state (an FSDP shard) never travels between processes this way."""
    stage, error = None, None
    try:
        stage = scratch_name(final, "tmp")
        stage.mkdir(parents=True)
        with open(stage / "extra.pt", "wb") as f:
            torch.save(rank_extra, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:  # told to every rank below instead of leaving them in the gather
        error = f"rank {rank()}: {type(exc).__name__}: {exc}"
    stages = gather_objects(None if error else str(stage))
    errors = gather_objects(error)
    if any(errors):
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        raise UserError(f"{final}: cannot write per-rank state ({'; '.join(e for e in errors if e)})")
    return [Path(p) for p in stages]


def save_state(directory: str | os.PathLike, *, model, optimizer, scheduler, step: int, rng: dict,
               data_position: dict, extra: dict, rank_extra: dict | None = None) -> Path:
    """Everything a run needs to continue bitwise: fp32 weights, optimizer and scheduler state,
    every rank's RNG, the data position, `extra` (rank 0's, shared by all) and `rank_extra`
    (each rank's own, e.g. state held per FSDP shard: `extra-{rank}.pt`). Every rank calls
    this; rank 0 writes the folder."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    rngs = gather_objects(rng)
    stages = _stage_rank_files(Path(directory).absolute(), rank_extra) if rank_extra is not None else []

    def write(tmp: Path) -> None:
        torch.save(model_sd, tmp / "model.pt")
        torch.save(optim_sd, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict() if scheduler is not None else None, tmp / "scheduler.pt")
        for r, g in enumerate(rngs):
            torch.save(g, tmp / f"rng-{r:05d}.pt")
        for r, stage in enumerate(stages):
            os.rename(stage / "extra.pt", tmp / f"extra-{r:05d}.pt")
            shutil.rmtree(stage, ignore_errors=True)
        torch.save({"step": int(step), "data_position": data_position, "extra": extra, "world_size": len(rngs),
                    "rank_extra": bool(stages)}, tmp / "trainer.pt")

    fields = {"kind": "state", "step": int(step), "metadata": {"world_size": len(rngs)}}
    try:
        path = on_rank0(lambda: write_atomically(directory, write, fields, writer()))
    finally:
        for stage in stages:  # left behind only if rank 0 failed before moving them
            if stage.exists() and rank() == 0:
                shutil.rmtree(stage, ignore_errors=True)
    return Path(directory).absolute() if path is None else path


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a zip or pickle error: the file is damaged in a way sizes miss
        raise UserError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None


def load_state(directory: str | os.PathLike, model, optimizer, scheduler, *, deep: bool = False) -> dict:
    """Restore model, optimizer and scheduler in place (every rank calls this); returns
    {"step", "rng" (this rank's), "data_position", "extra", "rank_extra" (this rank's, or None
    when the state has none)}."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict, set_state_dict)

    directory = Path(directory)
    manifest = verify_checkpoint(directory, deep=deep)
    if manifest.get("kind") != "state":
        raise UserError(f"{directory}: not a training state folder (kind {manifest.get('kind')!r})")
    meta = _torch_load(directory / "trainer.pt")
    if group() is None:
        set_state_dict(model, optimizer, model_state_dict=_torch_load(directory / "model.pt"),
                       optim_state_dict=_torch_load(directory / "optimizer.pt"),
                       options=StateDictOptions(full_state_dict=True))
    else:
        # Rank 0 reads, the others receive their shards: one copy of the full state in memory.
        # Two calls, optimizer first as set_state_dict does: set_state_dict given an empty model
        # dict on ranks > 0 treats the call as optimizer-only there and rank 0's broadcast hangs.
        main = rank() == 0
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_optimizer_state_dict(model, optimizer, _torch_load(directory / "optimizer.pt") if main else {},
                                 options=options)
        set_model_state_dict(model, _torch_load(directory / "model.pt") if main else {}, options=options)
    sched = _torch_load(directory / "scheduler.pt")
    if scheduler is not None and sched is not None:
        scheduler.load_state_dict(sched)
    rank_file = directory / f"rng-{rank():05d}.pt"
    if meta["world_size"] != world_size() or not rank_file.is_file():
        warnings.warn(f"{directory}: saved with {meta['world_size']} processes, resumed with {world_size()}; "
                      "RNG streams are not continued exactly")
        rank_file = directory / "rng-00000.pt"
    rank_extra = None
    if meta.get("rank_extra"):
        if meta["world_size"] != world_size():
            raise UserError(f"{directory}: holds per-rank state of {meta['world_size']} processes (FSDP shards); "
                            f"resume it with {meta['world_size']} processes, not {world_size()}")
        rank_extra = _torch_load(directory / f"extra-{rank():05d}.pt")
    return {"step": meta["step"], "rng": _torch_load(rank_file), "data_position": meta["data_position"],
            "extra": meta["extra"], "rank_extra": rank_extra}


def state_extra(directory: str | os.PathLike) -> dict:
    """The `extra` a training state was saved with (rank 0's), without loading the rest."""
    return _torch_load(Path(directory) / "trainer.pt")["extra"]


def _state_dirs(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STATE_PATTERN.match(p.name))]
    return sorted(found, reverse=True)


def latest_state(root: str | os.PathLike, *, deep: bool = True) -> Path | None:
    """The newest complete, uncorrupted `state-{step:08d}` folder under `root`, or None.
    Damaged ones are skipped with a warning (deep: sha256 of every file is checked)."""
    for step, path in _state_dirs(Path(root)):
        try:
            manifest = verify_checkpoint(path, deep=deep)
        except UserError as exc:
            warnings.warn(f"skipping training state {path}: {exc}")
            continue
        if manifest.get("kind") == "state":
            return path
        warnings.warn(f"skipping {path}: not a training state folder")
    return None


def prune_states(root: str | os.PathLike, keep: int = 1) -> list[Path]:
    """Keep the newest `keep` complete state folders; remove older and damaged ones and stale
    temp folders. Returns what was removed."""
    root = Path(root)
    removed = clean_stale(root)
    kept = 0
    for _, path in _state_dirs(root):
        if kept < keep and is_complete(path):
            kept += 1
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
