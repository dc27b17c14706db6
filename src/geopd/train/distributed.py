"""The trainer's processes: torchrun's ranks as a `Dist` (rank, world, device and the few
collectives the loop needs), and `shard_model`, how the student is spread over them (FSDP2 and
activation checkpointing, as torchtitan keeps parallelism outside its trainer).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from geopd.engines import logprobs
from geopd.spec import Engine


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


def shard_model(model, dist: Dist, engine: Engine | None = None):
    """Activation checkpointing per decoder layer (transformers' own, non-reentrant), then FSDP2:
    each decoder layer, then the root, which holds the embedding, the final norm and lm_head --
    one unit, so a tied lm_head/embedding stays one parameter -- with the engine's
    MixedPrecisionPolicy over fp32 master weights. The same code path serves 1..N processes;
    one process without mixed precision stays a plain module (the miniature's bitwise CPU path).
    Finally the chunked log-prob method is attached (see geopd.engines.logprobs)."""
    engine = engine or Engine()
    if engine.activation_checkpointing:
        # transformers 5.20 renamed gradient_checkpointing_enable; vLLM 0.32 (envs/vllm-base.txt,
        # the GPU nodes' env) pins transformers < 5.20, which has only the old name.
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    if dist.world > 1 or engine.mixed_precision:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh("cuda" if dist.device.startswith("cuda") else "cpu", (dist.world,))
        mp = MixedPrecisionPolicy(param_dtype=getattr(torch, engine.param_dtype),
                                  reduce_dtype=getattr(torch, engine.reduce_dtype))
        for layer in model.get_decoder().layers:
            fully_shard(layer, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
    logprobs.attach(model)
    return model
