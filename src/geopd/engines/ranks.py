"""The process group as the model and state writers see it: one writer (rank 0), and its
failure told to every rank instead of leaving the others waiting at a collective."""
from __future__ import annotations

from typing import Callable

from geopd.errors import UserError


def group():
    """torch.distributed when a process group of more than one rank is up, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def rank() -> int:
    d = group()
    return d.get_rank() if d else 0


def world_size() -> int:
    d = group()
    return d.get_world_size() if d else 1


def on_rank0(fn: Callable[[], object]):
    """Run `fn` on rank 0 only; every rank returns when it is done and raises if it failed."""
    d = group()
    if d is None:
        return fn()
    result, error = None, None
    if d.get_rank() == 0:
        try:
            result = fn()
        except BaseException as exc:  # re-raised below, after the others are told
            error = exc
    box = [None if error is None else f"{type(error).__name__}: {error}"]
    d.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[0] is not None:
        raise UserError(f"rank 0 failed: {box[0]}")
    return result


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order (collective)."""
    d = group()
    if d is None:
        return [obj]
    out = [None] * d.get_world_size()
    d.all_gather_object(out, obj)
    return out


def writer() -> dict:
    """What a manifest records of the process that wrote a folder (geopd.io.publish adds the host)."""
    import torch

    return {"torch": torch.__version__, "world_size": world_size()}
