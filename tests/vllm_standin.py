"""A stand-in for vLLM 0.32.0 on a CUDA machine: the process-wide rules that the engines' layout
(geopd.engines.vllm_engine) rests on, enforced as vLLM enforces them, on a CPU without vLLM.

Read in vLLM 0.32.0's source (.venv-vllm/lib/python3.11/site-packages/vllm/):
- config/model.py, ModelConfig: `enable_sleep_mode` on CUDA turns `enable_cumem_allocator` on.
- device_allocator/cumem.py, CuMemAllocator: one per process (`get_instance`); `pointer_to_data`
  keeps every allocation made in its pools, asleep or not, and `get_current_usage` sums them all;
  `sleep(offload_tags)` copies the offloaded tags to host memory and discards the rest, keeping
  the entries; `wake_up(tags)` maps back the deferrable tags asked for ("weights", "kv_cache")
  and always every other tag.
- device_allocator/sleep_mode_backend.py, CuMemBackend.suspend: "runtime" and "cudagraph" are
  offloaded at every level, "weights" too at level 1.
- v1/worker/gpu_worker.py, `_maybe_get_memory_pool_context`: no pool without the CuMem allocator;
  for tag "weights" `assert allocator.get_current_usage() == 0, "CuMem allocator can only be used
  for one instance per process."`; `load_model` loads the weights inside that context, the KV
  cache is allocated in the "kv_cache" pool.
- v1/worker/workspace.py: one workspace manager per process; each engine's worker re-initialises
  it (`init_workspace_manager`, "WorkspaceManager already initialized ... reinitializing"), in its
  "workspace" pool when it has one; sleep discards that pool.

What the stand-in does not model (nothing here needs it): sampling (responses are one EOS token,
log-probs fixed), memory sizes beyond "some bytes" per allocation, tensor-parallel collectives
(each engine's TP group is its own rank alone).

Use `install(monkeypatch)`: it puts the stand-in in sys.modules as `vllm` and makes
geopd.engines.vllm_engine see CUDA.
"""
from __future__ import annotations

import os
import sys
import types
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

VERSION = "0.32.0"
CUMEM_MESSAGE = "CuMem allocator can only be used for one instance per process."
DEFERRABLE_TAGS = ("weights", "kv_cache")
# The keyword arguments of vllm.LLM that geopd passes (EngineArgs fields of vLLM 0.32).
ENGINE_ARGS = {"model", "tokenizer", "seed", "tensor_parallel_size", "dtype", "generation_config", "enforce_eager",
               "gpu_memory_utilization", "max_model_len", "max_num_batched_tokens", "kv_cache_memory_bytes",
               "load_format", "logprobs_mode", "distributed_executor_backend", "enable_sleep_mode"}


# ---- device_allocator/cumem.py -------------------------------------------------------------------

@dataclass
class AllocationData:
    size: int
    tag: str
    cpu_backup: bool = False
    is_asleep: bool = False


class CuMemAllocator:
    instance: "CuMemAllocator | None" = None

    @staticmethod
    def get_instance() -> "CuMemAllocator":
        if CuMemAllocator.instance is None:
            CuMemAllocator.instance = CuMemAllocator()
        return CuMemAllocator.instance

    def __init__(self):
        self.pointer_to_data: dict[int, AllocationData] = {}
        self.current_tag = "default"
        self._next = 1

    @contextmanager
    def use_memory_pool(self, tag: str):
        old, self.current_tag = self.current_tag, tag
        try:
            yield self
        finally:
            self.current_tag = old

    def malloc(self, size: int) -> int:
        ptr, self._next = self._next, self._next + 1
        self.pointer_to_data[ptr] = AllocationData(size, self.current_tag)
        return ptr

    def get_current_usage(self) -> int:
        return sum(d.size for d in self.pointer_to_data.values())

    def sleep(self, offload_tags: tuple[str, ...]) -> None:
        for data in self.pointer_to_data.values():
            if data.is_asleep:
                continue
            data.cpu_backup = data.tag in offload_tags
            data.is_asleep = True  # unmapped; the entry stays

    def wake_up(self, tags: list[str] | None = None) -> None:
        for data in self.pointer_to_data.values():
            if data.is_asleep and (tags is None or data.tag in tags or data.tag not in DEFERRABLE_TAGS):
                data.is_asleep = False
                data.cpu_backup = False


class Memory:
    """A GPU allocation: in a CuMem pool (`ptr`) or PyTorch's own allocator (ptr None, always mapped)."""

    def __init__(self, size: int, pool: CuMemAllocator | None):
        self.ptr = pool.malloc(size) if pool is not None else None

    @property
    def mapped(self) -> bool:
        return self.ptr is None or not CuMemAllocator.get_instance().pointer_to_data[self.ptr].is_asleep

    def touch(self, what: str) -> None:
        if not self.mapped:
            raise RuntimeError(f"CUDA error: an illegal memory access was encountered ({what} is unmapped: "
                               "its CuMem pool sleeps)")


# ---- v1/worker/workspace.py ----------------------------------------------------------------------

class WorkspaceManager:
    def __init__(self, alloc_context):
        self.alloc_context, self.workspace = alloc_context, None

    def reserve(self) -> None:
        """During the engine's warm-up (after its weights and KV cache), then locked."""
        if self.workspace is None:
            with self.alloc_context() as pool:
                self.workspace = Memory(1 << 20, pool)


_manager: WorkspaceManager | None = None


def init_workspace_manager(alloc_context) -> None:
    global _manager
    _manager = WorkspaceManager(alloc_context)


# ---- v1/worker/gpu_worker.py ---------------------------------------------------------------------

class Worker:
    def __init__(self, llm: "LLM"):
        self.llm = llm
        init_workspace_manager(lambda: self._maybe_get_memory_pool_context("workspace"))
        with self._maybe_get_memory_pool_context("weights") as pool:
            self.weights = Memory(llm.weight_bytes, pool)
        with self._maybe_get_memory_pool_context("kv_cache") as pool:
            self.kv_cache = Memory(1 << 24, pool)
        with self._maybe_get_memory_pool_context("runtime") as pool:
            self.runtime = Memory(1 << 16, pool)
        _manager.reserve()

    def _maybe_get_memory_pool_context(self, tag: str):
        if not self.llm.cumem:
            return nullcontext()
        allocator = CuMemAllocator.get_instance()
        if tag == "weights":
            assert allocator.get_current_usage() == 0, CUMEM_MESSAGE
        return allocator.use_memory_pool(tag)

    def execute(self, what: str) -> None:
        for memory, name in ((self.weights, "weights"), (self.kv_cache, "the KV cache"),
                             (_manager.workspace, "the process's workspace")):
            memory.touch(f"{what}: {name}")

    def get_model(self):
        return types.SimpleNamespace()  # no lm_head: geopd's tied-head refresh has nothing to do


# ---- the public API geopd uses ------------------------------------------------------------------

class SamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)
        self.n = kwargs.get("n", 1)


@dataclass
class Logprob:
    logprob: float


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int]
    logprobs: list[dict]


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    prompt_logprobs: list | None = None


class LLM:
    """vllm.LLM: ModelConfig's sleep-mode rule, then one worker (this rank's) built in-process."""

    def __init__(self, **kwargs):
        unknown = sorted(set(kwargs) - ENGINE_ARGS)
        if unknown:
            raise TypeError(f"LLM.__init__() got unexpected keyword arguments {unknown}")
        self.kwargs = kwargs
        self.sleep_mode = bool(kwargs.get("enable_sleep_mode", False))
        self.cumem = self.sleep_mode  # config/model.py: sleep mode turns the CuMem allocator on (CUDA)
        self.level: int | None = None
        dtype = kwargs.get("dtype", "auto")
        self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(
            dtype=torch.bfloat16 if dtype == "auto" else getattr(torch, dtype)))
        files = list(Path(kwargs["model"]).glob("*.safetensors"))
        dummy = kwargs.get("load_format") == "dummy"
        self.weight_bytes = 1 if dummy or not files else sum(f.stat().st_size for f in files)
        self.eos = self._eos(Path(kwargs["model"]))
        self.worker = Worker(self)
        self.calls: list[tuple] = []

    @staticmethod
    def _eos(model: Path) -> int:
        import json

        config = json.loads((model / "config.json").read_text())
        eos = config.get("eos_token_id", 0)
        return eos[0] if isinstance(eos, list) else int(eos)

    # sleep mode (LLM.sleep / wake_up -> worker -> CuMemBackend)
    def sleep(self, level: int = 1) -> None:
        if not self.sleep_mode:
            raise RuntimeError("sleep mode is not enabled for this engine (enable_sleep_mode=False)")
        offload = ("runtime", "cudagraph") + (("weights",) if level == 1 else ())
        CuMemAllocator.get_instance().sleep(offload_tags=offload)
        self.level = level
        self.calls.append(("sleep", level))

    def wake_up(self, tags: list[str] | None = None) -> None:
        CuMemAllocator.get_instance().wake_up(tags)
        self.calls.append(("wake_up", tuple(tags or ())))

    # requests
    def generate(self, prompts, params, use_tqdm=False):
        self.worker.execute("generate")
        out = []
        params = params if isinstance(params, list) else [params] * len(prompts)
        for prompt, p in zip(prompts, params):
            ids = list(prompt["prompt_token_ids"])
            request = RequestOutput(prompt_token_ids=ids)
            if getattr(p, "prompt_logprobs", None) is not None:
                request.prompt_logprobs = [None] + [{t: Logprob(-1.0)} for t in ids[1:]]
            request.outputs = [CompletionOutput(j, [self.eos], [{self.eos: Logprob(-0.5)}]) for j in range(p.n)]
            out.append(request)
        self.calls.append(("generate", len(prompts)))
        return out

    def collective_rpc(self, method, kwargs=None, **_):
        if method == "reload_weights":
            self.worker.weights.touch("reload_weights: weights")
            for _name, _tensor in (kwargs or {})["weights_iterator"]:
                pass
            self.calls.append(("reload_weights",))
            return [None]
        return [method(self.worker)]

    def reset_prefix_cache(self) -> None:
        pass


class _TPGroup:
    world_size, rank_in_group, cpu_group = 1, 0, None


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def install(monkeypatch) -> types.ModuleType:
    """vLLM as this stand-in for the test (sys.modules), on a pretend CUDA device, with a fresh
    process: no CuMem allocator, no workspace manager, no engines yet."""
    from geopd.engines import vllm_engine

    vllm = _module("vllm", LLM=LLM, SamplingParams=SamplingParams, __version__=VERSION)
    distributed = _module("vllm.distributed")
    parallel_state = _module("vllm.distributed.parallel_state", get_tp_group=lambda: _TPGroup())
    for name, module in (("vllm", vllm), ("vllm.distributed", distributed),
                         ("vllm.distributed.parallel_state", parallel_state)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(CuMemAllocator, "instance", None)
    monkeypatch.setattr(sys.modules[__name__], "_manager", None)
    monkeypatch.setattr(vllm_engine, "on_cuda", lambda: True)
    monkeypatch.setattr(vllm_engine, "_GPU_ENGINES", [])
    monkeypatch.setattr(vllm_engine, "_LIVE", [])
    monkeypatch.setattr(vllm_engine, "_PROCESS_TP", {})
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0"))
    return vllm
