"""Memory and time model of the grid's jobs: what `geopd plan` checks before anything is spent.

Pure arithmetic on model shapes and run settings (no torch, no GPU). Every figure comes from a
formula below and the throughput assumptions in `Assumptions`, the one place where numbers
that are not read from the config live (each with its source or reasoning).

Memory per GPU of a training job: the trainer's own formulas ("the trainer's memory" below:
`train_step`, `scoring_pass`, `sharded_load`), the one memory model of the trainer, also used
by its tests and scripts/bench_memory_model.py. A caching-allocator factor and a CUDA context
are added on top of the tensors.

A training job runs in phases, each with its own peak: start-up (the student sharded before
its weights exist, each rank reading its own slices, before any engine starts), and for
OPD/RLVR generation (the trainer's sharded weights and Adam moments resident, gradients freed),
teacher scoring (plus the prompt log-probs vLLM computes outside its budget), recompute of the
behaviour log-probs and training. An awake vLLM engine holds its gpu_memory_utilization x the
GPU's reported total memory, as vLLM applies it (vllm/v1/worker/utils.py request_memory:
utilization x torch.cuda.mem_get_info's total; `Assumptions.reported_mib_per_gb`): weights at its
dtype / tensor_parallel, activations, the rest KV cache. At most one engine per process is in
sleep mode (vLLM 0.32's CuMem allocator is one per process; geopd.engines.vllm_engine): asleep
it keeps `vllm_sleep_residue_gib` (its KV cache freed) and its weights go to pinned host memory
(level 1: the teacher's) or are dropped (level 2: a rollout engine alone, whose weights the
trainer pushes after waking it); a resident engine (sleep: false) holds its whole share in every
phase. Every GPU phase also carries a CUDA context and `gpu_reserve_gib` (NCCL buffers,
fragmentation between PyTorch's and vLLM's pools). The trainer empties PyTorch's cache before an
engine wakes (geopd.engines.vllm_engine.Engine._wake).

Time: token counts x FLOPs per token / (GPUs x peak x utilisation) for training, recompute
and teacher scoring; vLLM decode from a memory-bandwidth roofline (weights + the KV cache read
per step, concurrency bounded by the KV cache), never faster than one longest response at
concurrency 1 (the tail of a rollout batch). Checked against measurements: the trainer terms
by scripts/bench_memory_model.py (exact tensor accounting and peak RSS of the trainer's steps on
CPU); throughput figures only by their sources until a GPU run measures them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from geopd.spec import VLLM, Benchmark, Engine, engine_placement_problems, engine_tensor_parallels, max_model_len
from geopd.train.batching import largest_micro_batch, num_updates, rollout_split

GiB = 2 ** 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}


# ---- the throughput and overhead assumptions: the one place ---------------------------------

@dataclass(frozen=True)
class Assumptions:
    # GPU class: the paper's "80GB" GPUs, taken as H100 SXM (NVIDIA datasheet: 989 TFLOP/s
    # dense bf16, 3.35 TB/s HBM3). H200 has the same compute and 4.8 TB/s: this is conservative.
    peak_tflops: float = 989.0
    hbm_tb_s: float = 3.35
    # Training MFU (model FLOPs only, recompute not counted). torchtitan's docs/performance.md:
    # Llama-3.1-8B, FSDP2 on 8-128 H100, selective AC, bf16: 33-39% MFU. Full per-layer AC
    # recomputes one forward (hardware FLOPs 4/3 of model FLOPs) and HF modelling code is not
    # compiled: 0.30.
    train_mfu: float = 0.30
    # vLLM prefill (teacher prompt_logprobs, prompt tokens): compute-bound large GEMMs.
    prefill_mfu: float = 0.45
    # vLLM decode: fraction of HBM bandwidth a step attains reading weights + KV cache
    # (paged attention, scheduling and sampling between steps), and of peak FLOPs when a
    # step is compute-bound (many sequences, MoE).
    decode_bw_eff: float = 0.5
    decode_mfu: float = 0.3
    # vLLM engine defaults on >= 70 GB GPUs for the LLM class (vllm/engine/arg_utils.py,
    # get_batch_defaults): 16384 batched tokens, 1024 sequences.
    vllm_max_num_batched_tokens: int = 16384
    vllm_max_num_seqs: int = 1024
    # Per awake engine, beyond weights and KV cache: the profiled activation peak at 16384
    # batched tokens (~1-2 GiB for 4-32B models), CUDA graphs (~0.5-1 GiB), sampler buffers.
    vllm_overhead_gib: float = 3.0
    # Per sleeping engine: what vLLM's sleep mode does not release (CUDA graph pool, NCCL
    # buffers, non-torch allocations); vLLM's docs say sleep frees "up to 90%+" of its memory.
    vllm_sleep_residue_gib: float = 2.0
    # vLLM's gpu_memory_utilization where a block sets none (vllm/config/cache.py, CacheConfig).
    vllm_default_utilization: float = 0.92
    # What CUDA reports as a GPU's total memory (torch.cuda.mem_get_info, to which vLLM applies
    # gpu_memory_utilization), per GB of its label: nvidia-smi shows 81,559 MiB (79.6 GiB) for an
    # H100 80GB HBM3 and 143,771 MiB for an H200 141GB, 1019.5 MiB per labelled GB for both.
    reported_mib_per_gb: float = 81559 / 80
    cuda_context_gib: float = 1.0        # per process
    # Per GPU beside the modelled tensors: NCCL communicators' buffers (the trainer's FSDP group,
    # vLLM's world and tensor-parallel groups: ~0.5 GiB each with NVLS on H100 NVSwitch nodes) and
    # fragmentation between PyTorch's caching allocator and vLLM's memory pools.
    gpu_reserve_gib: float = 3.0
    # Pinned host buffers of a sleeping engine beyond its weights: its "runtime" allocations
    # (model runner buffers), which vLLM's sleep offloads at every level (CuMemBackend.suspend).
    vllm_sleep_pinned_gib: float = 0.5
    allocator_factor: float = 1.10       # caching-allocator fragmentation over the tensor peak
    # Lengths the config does not state: mean generated length / max_new_tokens (reasoning
    # traces of a distilled 8B student on DAPO-Math or AIME run to several thousand tokens),
    # mean SFT sequence / max_length (Dolci-Think traces, packed), and prompt lengths (chat
    # template + problem; DAPO's OPD setting caps prompts at 2048 tokens).
    response_fraction: float = 0.5
    sft_fraction: float = 0.5
    prompt_tokens: int = 256
    max_prompt_tokens: int = 2048
    # Fixed costs: vLLM start (weights + CUDA graphs + profiling), per rollout step (wake,
    # sleep, weight push, rewards), checkpoint/state writes to a shared filesystem.
    engine_start_s: float = 180.0
    rl_step_overhead_s: float = 30.0
    filesystem_gb_s: float = 2.0
    # Code benchmarks: tests per problem x seconds per sandboxed run (LiveCodeBench problems
    # carry ~10-30 tests; a run is ~0.1-2 s), graded on the job's CPUs.
    code_tests_per_problem: int = 20
    code_test_s: float = 1.0
    # Dense float64 SVD on CPU: seconds per core for m x n x min(m, n) (MINIATURE.md: a
    # 4096 x 12288 full SVD takes 67 s on 2 cores = 134 core-seconds); svdvals only: 48/67 of it.
    svd_core_s: float = 134.0 / (4096 * 4096 * 12288)
    svdvals_ratio: float = 48.0 / 67.0
    # Diagnostics workers, measured here (scripts/bench_memory_model.py --diagnose, peak RSS of
    # `geopd diagnose --workers 1`): 0.31 GiB with torch imported; beyond it, 49-74 bytes per
    # matrix element over tall, square and wide shapes from 2048 x 512 to 2048 x 2048 in two
    # runs (float64 copies, LAPACK's input copy and workspace, full thin SVDs): 76 bounds them.
    worker_base_gib: float = 0.31
    svd_worker_bytes_per_element: float = 76.0
    host_process_gib: float = 8.0       # host memory per GPU process beyond offloaded weights
    # Planning fails when the requested runtime is below this fraction of the estimate: the
    # estimate is uncertain by up to ~2x, a request below half of it is a plan that cannot work.
    time_fail_ratio: float = 0.5
    # The early signal before a training job's time limit (sbatch --signal=USR1@lead): lead =
    # margin x (the longest step + a checkpoint export and state save) + Slurm's resolution (it may
    # send the signal up to 60 s early, sbatch(1)); jobs the model does not cover (CPU) get
    # default_signal_lead_s. Never more than half the job's runtime.
    signal_margin: float = 1.5
    signal_resolution_s: float = 60.0
    default_signal_lead_s: float = 300.0
    # RLVR with dynamic sampling: the fraction of prompt groups whose rewards all agree (all
    # right or all wrong), which are dropped and sampled again. Not measured: a planning guess
    # until a run's metrics (groups_drawn / groups_kept per step) measure it.
    zero_variance_fraction: float = 0.5


ASSUMPTIONS = Assumptions()

# Test-set sizes of the paper's benchmarks (used when the prepared data is not there yet).
BENCHMARK_PROBLEMS = {
    "HuggingFaceH4/aime_2024": 30, "yentinglin/aime_2025": 30, "HuggingFaceH4/MATH-500": 500,
    "math-ai/minervamath": 272, "Idavidrein/gpqa": 198,
    # LiveCodeBench release_v5, problems dated 2024-08-01 .. 2025-02-01: 279 by public counts
    # (DeepCoder's lcbv5 test split, its evaluation set for this window, has 279 rows).
    "livecodebench/code_generation_lite": 279,
}


# ---- model shapes ----------------------------------------------------------------------------

SHAPE_KEYS = ("arch", "hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate", "vocab",
              "tied_embeddings", "num_experts", "experts_per_tok", "moe_intermediate")


@dataclass(frozen=True)
class Shape:
    arch: str                       # qwen3 | qwen3_moe
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool = False
    num_experts: int = 0
    experts_per_tok: int = 0
    moe_intermediate: int = 0

    @classmethod
    def from_entry(cls, entry: dict) -> "Shape":
        """From a config `shape:` (or a model_sizes entry plus a vocab)."""
        moe = entry.get("arch") == "qwen3_moe"
        return cls(arch="qwen3_moe" if moe else "qwen3", hidden=entry["hidden"], layers=entry["layers"],
                   heads=entry["heads"], kv_heads=entry["kv_heads"],
                   head_dim=entry.get("head_dim") or entry["hidden"] // entry["heads"],
                   intermediate=entry["intermediate"], vocab=entry["vocab"],
                   tied_embeddings=bool(entry.get("tied_embeddings", False)),
                   num_experts=entry.get("num_experts", 0) if moe else 0,
                   experts_per_tok=entry.get("experts_per_tok", 0) if moe else 0,
                   moe_intermediate=entry.get("moe_intermediate", 0) if moe else 0)

    @classmethod
    def from_hf_config(cls, cfg: dict) -> "Shape":
        """From a Hugging Face config.json of a Qwen3 / Qwen3-MoE model."""
        moe = cfg.get("model_type") == "qwen3_moe"
        if moe and (cfg.get("mlp_only_layers") or cfg.get("decoder_sparse_step", 1) != 1):
            raise ValueError("Qwen3-MoE with dense layers (mlp_only_layers / decoder_sparse_step) is not modelled")
        return cls(arch="qwen3_moe" if moe else "qwen3", hidden=cfg["hidden_size"],
                   layers=cfg["num_hidden_layers"], heads=cfg["num_attention_heads"],
                   kv_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
                   head_dim=cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"],
                   intermediate=cfg["intermediate_size"], vocab=cfg["vocab_size"],
                   tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                   # the hub's files say num_experts; transformers >= 5 saves num_local_experts
                   num_experts=cfg.get("num_experts", cfg.get("num_local_experts", 0)) if moe else 0,
                   experts_per_tok=cfg.get("num_experts_per_tok", 0) if moe else 0,
                   moe_intermediate=cfg.get("moe_intermediate_size", 0) if moe else 0)

    def differences(self, other: "Shape") -> list[str]:
        return [f"{k}: {getattr(self, k)} vs {getattr(other, k)}" for k in SHAPE_KEYS
                if getattr(self, k) != getattr(other, k)]

    @property
    def moe(self) -> bool:
        return self.num_experts > 0

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def attention_params(self) -> int:
        h = self.hidden
        return 2 * h * self.q_dim + 2 * h * self.kv_dim + 2 * self.head_dim  # q, o, k, v, q/k norms

    def mlp_params(self, active: bool = False) -> int:
        if not self.moe:
            return 3 * self.hidden * self.intermediate
        experts = self.experts_per_tok if active else self.num_experts
        return experts * 3 * self.hidden * self.moe_intermediate + self.hidden * self.num_experts  # + router

    def layer_params(self) -> int:
        return self.attention_params() + self.mlp_params() + 2 * self.hidden

    def root_params(self) -> int:
        """Embedding, lm_head (unless tied) and the final norm: FSDP2's root module."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2) + self.hidden

    def params(self) -> int:
        return self.layers * self.layer_params() + self.root_params()

    def matmul_params(self) -> int:
        """Parameters one token multiplies through (active experts, lm_head; no embedding lookup)."""
        return self.layers * (self.attention_params() + self.mlp_params(active=True)) + self.vocab * self.hidden

    def forward_flops(self, context: float) -> float:
        """FLOPs of one token's forward pass attending to `context` earlier tokens."""
        return 2 * self.matmul_params() + 4 * self.layers * self.q_dim * context

    def kv_bytes_per_token(self, dtype_bytes: int, tp: int = 1) -> float:
        """KV cache bytes of one token on one GPU of a tensor-parallel group (KV heads are
        split over the group, replicated when the group is wider than the KV heads)."""
        heads = math.ceil(self.kv_heads / tp)
        return 2 * self.layers * heads * self.head_dim * dtype_bytes

    def layer_activation_bytes(self, dtype_bytes: int, width: int = 0) -> float:
        """Bytes autograd saves per token in one decoder layer of transformers' Qwen3 under SDPA,
        in a padded micro-batch of `width` columns (counted tensor by tensor with
        saved_tensors_hooks on CPU, fp32 and bf16: exact to the byte, weights aside).

        Each RMSNorm saves its input in fp32 (4w), its rsqrt (4 per row) and the normalised
        value in the compute dtype (bw), and its output is saved by the projection it feeds (bh,
        two per layer); q_norm/k_norm the same on q/k (their outputs feed RoPE, which saves only
        cos/sin). SDPA saves q, k and v with k/v repeated to every head (transformers repeats
        them whenever a mask is passed), its output (also o_proj's input), an fp32 log-sum-exp
        per head, and the additive form of the mask in the compute dtype (width per token). The
        SwiGLU MLP saves gate, silu(gate), up and their product (MoE: those of its k experts,
        the routed input copies and the fp32 router logits). The layer's input is saved by the
        norm (as its fp32 copy, or itself in fp32), not again."""
        b, h, q, kv = dtype_bytes, self.hidden, self.q_dim, self.kv_dim
        if self.moe:
            k = self.experts_per_tok
            mlp = k * (4 * b * self.moe_intermediate + b * h) + 8 * self.num_experts
        else:
            mlp = 4 * b * self.intermediate
        norms = 4 * (2 * h + q + kv) + b * (4 * h + q + kv) + 4 * (2 + self.heads + self.kv_heads)
        attention = 4 * b * q + 4 * self.heads + b * width
        return norms + attention + mlp


# ---- breakdowns ------------------------------------------------------------------------------

@dataclass
class Breakdown:
    """Named byte counts of one phase; `total` is their sum."""
    terms: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value: float) -> "Breakdown":
        if value:
            self.terms[name] = self.terms.get(name, 0.0) + float(value)
        return self

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    def gib(self) -> dict[str, float]:
        return {k: v / GiB for k, v in self.terms.items()}


def compute_bytes(engine: Engine) -> int:
    """Bytes per element of the trainer's compute dtype (engine.param_dtype)."""
    return DTYPE_BYTES[engine.param_dtype]


# ---- a sleeping engine's weights in pinned host memory ------------------------------------------
#
# vLLM's level-1 sleep copies each allocation of its CuMem pool tagged "weights" into a pinned host
# tensor of the allocation's size (device_allocator/cumem.py, CuMemAllocator.sleep), and PyTorch's
# CachingHostAllocator rounds every pinned allocation up to a power of two and keeps it cached
# after it is freed (aten/src/ATen/core/CachingHostAllocator.h, allocate: "Round up the allocation
# to the nearest power of two", PowerOf2Ceil, unless pinned_max_round_threshold is set: unset by
# default). The pool's allocations are the CUDA caching allocator's segments
# (c10/cuda/CUDACachingAllocator.cpp): a tensor of 10 MiB or more gets its own, rounded up to
# 2 MiB; tensors under 1 MiB share 2 MiB segments and those of 1-10 MiB 20 MiB ones.

MiB = 2 ** 20


def pow2_ceil(n: int) -> int:
    return 1 << max(0, math.ceil(n) - 1).bit_length()


def engine_weight_tensors(shape: Shape, tp: int, dtype_bytes: int) -> list[int]:
    """Bytes of each weight tensor one rank of a vLLM engine holds: vLLM's Qwen3 fuses q/k/v into
    qkv_proj and gate/up into gate_up_proj (Qwen3-MoE: every expert's w13 and w2 stacked in one
    tensor each, the router replicated), splits them, the embedding and lm_head over tp, and
    replicates KV heads past their number."""
    b, h = dtype_bytes, shape.hidden
    kv = math.ceil(shape.kv_heads / tp) * shape.head_dim
    layer = [(shape.q_dim // tp + 2 * kv) * h * b, h * (shape.q_dim // tp) * b,
             2 * h * b, 2 * shape.head_dim * b]  # qkv, o, the two layer norms, q/k norms
    if shape.moe:
        e, m = shape.num_experts, shape.moe_intermediate // tp
        layer += [e * 2 * m * h * b, e * h * m * b, e * h * b]
    else:
        i = shape.intermediate // tp
        layer += [2 * i * h * b, h * i * b]
    root = [shape.vocab // tp * h * b] * (1 if shape.tied_embeddings else 2) + [h * b]
    return layer * shape.layers + root


def pinned_sleep_bytes(shape: Shape, tp: int, dtype_bytes: int) -> int:
    """Pinned host bytes one rank's weights take while its engine sleeps at level 1."""
    small = medium = total = 0
    for t in engine_weight_tensors(shape, tp, dtype_bytes):
        if t < MiB:
            small += t
        elif t < 10 * MiB:
            medium += t
        else:
            total += pow2_ceil(math.ceil(t / (2 * MiB)) * 2 * MiB)
    total += math.ceil(small / (2 * MiB)) * pow2_ceil(2 * MiB) + math.ceil(medium / (20 * MiB)) * pow2_ceil(20 * MiB)
    return total


# ---- the trainer's memory ---------------------------------------------------------------------
#
# What one training process holds, from the trainer's code paths (geopd.train.loop and .distributed,
# geopd.engines.logprobs); bytes, P parameters, W processes, b bytes of the compute dtype, L
# layers, H hidden, V vocabulary, a micro-batch of T padded tokens over `width` columns of which
# n positions are scored, a = Shape.layer_activation_bytes(b, width):
#
#   persistent   fp32 master 4P/W + fp32 gradients 4P/W + AdamW moments 8P/W
#   unsharded    FSDP2 only: b (P_root + 2 P_layer) weights (the root unit -- embedding, final
#                norm, lm_head -- stays gathered from forward to backward; one layer computing,
#                one prefetched) and as much again for their gradients before reduce-scatter
#   activations  without checkpointing every layer's, L T a; with it each layer's input L T H b,
#                and one layer's T a while it is recomputed in backward
#   decoder      the final norm's T (4H + bH + 4) and the token ids, the n scored hidden states
#                and their gradient 2 n H b
#   head         C = min(logprob_chunk_tokens, n) rows of logits, C V b, never [B, T, V]; fp32
#                blocks of at most 2**24 logits (forward 2, 4 with the entropy; backward 2; one
#                more for the fp32 copy of bf16 logits), and in backward lm_head's fp32 gradient
#                accumulator 4 V H, with one chunk's product b V H and its fp32 cast when b < 4
#   backward     one layer's gradient temporaries T (2 b I + 2 b H) (the MLP's intermediate,
#                the hidden stream), alive when the head's are not
#   optimizer    AdamW one parameter at a time (foreach=False): 2 fp32 temporaries of the
#                largest shard
#
#   step = persistent + unsharded + max(activations + decoder + max(head, backward), optimizer)
#
# (with checkpointing the recomputed layer and its backward replace `backward`: the head runs
# before any layer is recomputed). A no-grad pass (old log-probs, rollout log-probs, the HF
# teacher) holds per micro-batch one layer's working set, the decoder output, the scored hidden
# states and one head chunk (`scoring_pass`); transformers' `generate` its KV cache
# (`hf_generation_bytes`). Checked against exact tensor accounting and peak RSS of the trainer's
# steps on CPU (scripts/bench_memory_model.py; tests/test_plan.py, tests/test_train_memory.py).

# Logits per fp32 block of the log-softmax pieces: geopd.engines.kernels.CHUNK_ELEMENTS (a
# test holds the two equal; this module does not import torch).
LOGIT_BLOCK_ELEMENTS = 1 << 24


def head_chunk_rows(shape: Shape, scored: int, chunk_tokens: int | None) -> int:
    """Rows per lm_head chunk: the run's logprob_chunk_tokens, else ~2**24 logits
    (geopd.engines.logprobs.default_chunk_tokens), never more than the scored positions."""
    return max(1, min(scored, chunk_tokens or max(1, LOGIT_BLOCK_ELEMENTS // shape.vocab)))


def head_bytes(shape: Shape, chunk: int, b: int, *, blocks: int) -> int:
    """One chunk of logits in the compute dtype and `blocks` fp32 temporaries of at most 2**24
    logits (plus one for the fp32 copy of logits in a narrower dtype)."""
    blocks += 1 if b < 4 else 0
    return chunk * shape.vocab * b + blocks * 4 * min(chunk * shape.vocab, LOGIT_BLOCK_ELEMENTS)


def trainer_state(shape: Shape, world: int, *, grads: bool = True) -> Breakdown:
    """Sharded fp32 master weights, gradients and Adam moments on one of `world` processes."""
    p = shape.params() / world
    out = Breakdown().add("fp32 master weights (sharded)", 4 * p)
    if grads:
        out.add("fp32 gradients (sharded)", 4 * p)
    return out.add("Adam moments (sharded)", 8 * p)


def unsharded_bytes(shape: Shape, engine: Engine, world: int, *, grads: bool = True) -> Breakdown:
    """FSDP2's gathered compute copies (and gradients before reduce-scatter): the root unit and
    two decoder layers in the compute dtype; nothing for a plain module."""
    out = Breakdown()
    if engine.sharded(world):
        units = compute_bytes(engine) * (shape.root_params() + 2 * shape.layer_params())
        out.add("unsharded weights: root + 2 layers", units)
        if grads:
            out.add("unsharded gradients: root + 2 layers", units)
    return out


def sharded_load(shape: Shape, world: int, file_bytes: int = 2) -> Breakdown:
    """The start-up peak of one of `world` processes (geopd.engines.models.load_sharded_model,
    before any engine starts): the model is built on the meta device and sharded, its fp32 shards
    allocated, and each rank reads only its slices of the checkpoint's tensors (`file_bytes` per
    element: bf16 on the hub), one at a time -- never the whole model, as a plain load would
    (4P on every GPU)."""
    out = Breakdown().add("fp32 master weights (sharded)", 4 * shape.params() / world)
    return out.add("largest tensor's slice being read", file_bytes * shape.vocab * shape.hidden / world)


def _decoder_bytes(shape: Shape, b: int, tokens: int, scored: int, *, grad: bool) -> float:
    """The final norm's saved tensors, the token ids and the scored hidden states (and their
    gradient)."""
    h = shape.hidden
    return tokens * (4 * h + b * h + 12) + (2 if grad else 1) * scored * h * b


def train_step(shape: Shape, engine: Engine, world: int, tokens: int, *, width: int | None = None,
               scored: int | None = None, entropy: bool = True) -> Breakdown:
    """Peak bytes of one process in a training step: forward and backward of its largest
    micro-batch (`tokens` padded tokens, `width` columns, default one row; `scored` positions
    through lm_head, default all; `entropy`: the RL updates log it, SFT does not), then AdamW."""
    b, h, v, T = compute_bytes(engine), shape.hidden, shape.vocab, tokens
    n = T if scored is None else min(scored, T)
    out = trainer_state(shape, world)
    out.terms.update(unsharded_bytes(shape, engine, world).terms)
    a = shape.layer_activation_bytes(b, width or T)
    chunk = head_chunk_rows(shape, n, engine.logprob_chunk_tokens)
    forward = head_bytes(shape, chunk, b, blocks=4 if entropy else 2)
    backward = head_bytes(shape, chunk, b, blocks=2) + 4 * v * h + ((b + 4) * v * h if b < 4 else 0)
    head = max(forward, backward)
    layer_backward = T * (2 * b * shape.intermediate + 2 * b * h)
    during = Breakdown()
    if engine.activation_checkpointing:
        during.add("checkpointed layer inputs", shape.layers * T * h * b)
    else:
        during.add("activations (every layer)", shape.layers * T * a)
    during.add("final norm, scored hidden states", _decoder_bytes(shape, b, T, n, grad=True))
    if engine.activation_checkpointing and T * a + layer_backward > head:
        during.add("one layer recomputed + its backward", T * a + layer_backward)
    elif head >= layer_backward:
        during.add("log-probs through lm_head (chunks)", head)
    else:
        during.add("one layer's backward", layer_backward)
    largest = max(v * h, shape.layer_params()) / (world if engine.sharded(world) else 1)
    optimizer = 2 * 4 * largest
    if optimizer > during.total:
        return out.add("AdamW temporaries", optimizer)
    out.terms.update(during.terms)
    return out


def scoring_pass(shape: Shape, engine: Engine, world: int, tokens: int, *, width: int | None = None,
                 scored: int | None = None) -> Breakdown:
    """Bytes of a no-grad forward over one micro-batch (the trainer's old log-probs, rollout
    log-probs, the HF teacher) beyond what the process holds anyway: FSDP2's gathered weights,
    one layer's working set, the final norm and scored hidden states, one head chunk."""
    b, T = compute_bytes(engine), tokens
    n = T if scored is None else min(scored, T)
    out = unsharded_bytes(shape, engine, world, grads=False)
    out.add("one layer (no grad)", T * shape.layer_activation_bytes(b, width or T))
    out.add("final norm, scored hidden states", _decoder_bytes(shape, b, T, n, grad=False))
    chunk = head_chunk_rows(shape, n, engine.logprob_chunk_tokens)
    return out.add("log-prob chunk (no grad)", head_bytes(shape, chunk, b, blocks=2))


def hf_generation_bytes(shape: Shape, rows: int, length: int, dtype_bytes: int) -> int:
    """transformers `generate` over `rows` sequences of up to `length` tokens (the CPU rollout
    backend): the KV cache and the last position's logits with the processors' fp32 copies."""
    return rows * length * shape.kv_bytes_per_token(dtype_bytes) + 4 * rows * shape.vocab * 4


@dataclass
class VLLMEngine:
    """One vLLM engine (per tensor-parallel group), per GPU."""
    shape: Shape
    tp: int
    utilization: float
    dtype_bytes: int
    gpu_bytes: float
    # Allocations vLLM does not profile, so not inside its gpu_memory_utilization budget: the
    # teacher's prompt log-probs (vLLM 0.32 gpu_model_runner._get_prompt_logprobs_dict computes,
    # request by request, the logits of all the prompt tokens scheduled in a step and their
    # fp32 log-softmax).
    transient: float = 0.0
    a: Assumptions = ASSUMPTIONS

    @property
    def reserved(self) -> float:
        return self.utilization * self.gpu_bytes

    @property
    def weights(self) -> float:
        return self.shape.params() * self.dtype_bytes / self.tp

    @property
    def overhead(self) -> float:
        return self.a.vllm_overhead_gib * GiB

    @property
    def kv_bytes(self) -> float:
        return self.reserved - self.weights - self.overhead

    @property
    def kv_per_token(self) -> float:
        return self.shape.kv_bytes_per_token(self.dtype_bytes, self.tp)

    @property
    def kv_tokens(self) -> float:
        return max(0.0, self.kv_bytes / self.kv_per_token)

    def breakdown(self) -> Breakdown:
        return (Breakdown().add(f"weights / tp={self.tp}", self.weights)
                .add("activations, CUDA graphs", self.overhead)
                .add("KV cache", max(0.0, self.kv_bytes)))

    def problems(self, max_model_len: int) -> list[str]:
        out = []
        if self.tp > 1 and (self.shape.heads % self.tp or (self.shape.kv_heads % self.tp and self.tp % self.shape.kv_heads)):
            out.append(f"tensor_parallel {self.tp} does not divide {self.shape.heads} heads / "
                       f"{self.shape.kv_heads} KV heads")
        need = self.kv_per_token * max_model_len
        if self.kv_bytes < need:
            out.append(f"gpu_memory_utilization {self.utilization} reserves {self.reserved / GiB:.1f} GiB, "
                       f"but weights {self.weights / GiB:.1f} + overhead {self.overhead / GiB:.1f} + one "
                       f"{max_model_len}-token sequence's KV cache {need / GiB:.1f} GiB need "
                       f"{(self.weights + self.overhead + need) / GiB:.1f} GiB")
        return out

    def decode_tokens_per_s(self, context: float, sequences: float) -> float:
        """Tokens/s of this engine (all its tp GPUs) decoding `sequences` at mean `context`."""
        a = self.a
        concurrency = max(1.0, min(sequences, a.vllm_max_num_seqs, self.kv_tokens / max(context, 1.0)))
        return concurrency / self.decode_step_s(context, concurrency)

    def decode_step_s(self, context: float, concurrency: float) -> float:
        a, s = self.a, self.shape
        weights = self.weights
        if s.moe:  # experts a step touches: 1 - (1 - k/E)^tokens of each layer's expert weights
            expert = s.layers * s.num_experts * 3 * s.hidden * s.moe_intermediate * self.dtype_bytes / self.tp
            touched = 1 - (1 - s.experts_per_tok / s.num_experts) ** concurrency
            weights = weights - expert * (1 - touched)
        read = weights + concurrency * context * self.kv_per_token
        t_mem = read / (a.hbm_tb_s * 1e12 * a.decode_bw_eff)
        t_flops = concurrency * s.forward_flops(context) / self.tp / (a.peak_tflops * 1e12 * a.decode_mfu)
        return max(t_mem, t_flops)


def generation_seconds(engine: VLLMEngine, engines: int, sequences: int, prompt: float, max_new: int,
                       a: Assumptions = ASSUMPTIONS) -> float:
    """Wall seconds for `engines` copies of `engine` to sample `sequences` responses."""
    mean_new = a.response_fraction * max_new
    context = prompt + mean_new / 2  # mean context over a response's life
    per_engine = math.ceil(sequences / max(engines, 1))
    rate = engine.decode_tokens_per_s(context, per_engine)
    throughput_s = per_engine * mean_new / rate
    # the longest response runs alone at the end of the batch
    tail_s = max_new * engine.decode_step_s(prompt + max_new / 2, 1.0)
    prefill_s = per_engine * prompt * engine.shape.forward_flops(prompt / 2) / engine.tp / (
        a.peak_tflops * 1e12 * a.prefill_mfu)
    return max(throughput_s, tail_s) + prefill_s


def compute_seconds(flops: float, gpus: int, utilisation: float, a: Assumptions = ASSUMPTIONS) -> float:
    return flops / (gpus * a.peak_tflops * 1e12 * utilisation)


# ---- CPU diagnostics ---------------------------------------------------------------------------

def weight_matrices(shape: Shape, matrices: str) -> list[tuple[int, int]]:
    """(rows, cols) of the matrices diagnostics analyse in one checkpoint (geopd.diagnostics.run)."""
    h, q, kv = shape.hidden, shape.q_dim, shape.kv_dim
    per_layer = [(q, h), (kv, h), (kv, h), (h, q)]
    if matrices == "all":
        if shape.moe:
            m = shape.moe_intermediate
            per_layer += [(m, h), (m, h), (h, m)] * shape.num_experts
        else:
            i = shape.intermediate
            per_layer += [(i, h), (i, h), (h, i)]
    return per_layer * shape.layers


def svd_units(m: int, n: int) -> float:
    return float(m) * n * min(m, n)


def svd_worker_bytes(m: int, n: int, a: Assumptions | None = None) -> float:
    """Peak memory of one diagnostics worker on an m x n matrix (float64 copies, LAPACK's
    input copy and workspace, the thin SVDs before truncation to k vectors, masks): the
    measured per-element bound (scripts/bench_memory_model.py --diagnose)."""
    return (a or ASSUMPTIONS).svd_worker_bytes_per_element * m * n


# ---- job estimates ---------------------------------------------------------------------------

@dataclass
class Estimate:
    """Memory (per GPU, or per node for CPU jobs) and time of one job, and what does not fit."""
    rule: str
    subject: str
    gpus: int                                   # per node
    nodes: int
    requested_hours: float
    memory_kind: str = "GPU"                    # "GPU": bytes per GPU; "host": bytes per node
    memory_limit: float | None = None
    phases: dict[str, Breakdown] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def peak_phase(self) -> str | None:
        return max(self.phases, key=lambda p: self.phases[p].total) if self.phases else None

    @property
    def peak(self) -> float | None:
        return self.phases[self.peak_phase].total if self.phases else None

    @property
    def hours(self) -> float | None:
        return sum(self.seconds.values()) / 3600 if self.seconds else None

    @property
    def gpu_hours(self) -> float | None:
        return None if self.hours is None else self.hours * self.gpus * self.nodes

    def check(self, a: Assumptions = ASSUMPTIONS) -> "Estimate":
        """Add the memory and time problems (call once, after the phases and seconds are set)."""
        if self.phases and self.memory_limit is not None and self.peak > self.memory_limit:
            terms = sorted(self.phases[self.peak_phase].terms.items(), key=lambda kv: -kv[1])[:4]
            top = ", ".join(f"{k} {v / GiB:.1f}" for k, v in terms)
            self.problems.append(f"needs {self.peak / GiB:.1f} GiB per {self.memory_kind} "
                                 f"({self.peak_phase}: {top} GiB) but has {self.memory_limit / GiB:.1f} GiB")
        if self.hours is not None and self.requested_hours < a.time_fail_ratio * self.hours:
            self.problems.append(f"requests {self.requested_hours:.1f} h but needs ~{self.hours:.1f} h "
                                 f"(fails below {a.time_fail_ratio:g} x the estimate)")
        return self


def gpu_memory_bytes(resources: dict, a: Assumptions = ASSUMPTIONS) -> float | None:
    """A GPU's total memory as CUDA reports it (79.6 GiB for an "80 GB" H100), from the label."""
    gb = resources.get("gpu_memory_gb")
    return None if gb is None else gb * a.reported_mib_per_gb * MiB


def _vllm(shape: Shape, block: VLLM, gpu_bytes: float, *, transient: float = 0.0,
          a: Assumptions = ASSUMPTIONS) -> VLLMEngine:
    """A vLLM engine of `block`'s settings (vLLM's default share where it sets none)."""
    util = a.vllm_default_utilization if block.gpu_memory_utilization is None else block.gpu_memory_utilization
    return VLLMEngine(shape, tp=int(block.tensor_parallel), utilization=float(util),
                      dtype_bytes=DTYPE_BYTES[block.gpu_dtype], gpu_bytes=gpu_bytes, transient=transient, a=a)


# ---- one training job, phase by phase ---------------------------------------------------------
#
# estimate_train calls one function per phase: the start-up load, the training step, the vLLM
# engines (generation and teacher scoring), the behaviour log-prob recompute, then host memory
# and time. What they all read is a TrainJob.

@dataclass
class TrainJob:
    """One training job on GPUs, as every phase of its estimate sees it."""
    run: object                  # a geopd.grid.runs.Run
    student: Shape
    teacher: Shape | None
    gpus: int                    # per node
    world: int                   # GPU processes
    gpu_bytes: float
    engine: Engine               # the trainer's precision and memory settings
    seq: int                     # tokens of the longest sequence
    micro: int                   # padded tokens of the largest micro-batch
    width: int                   # columns of that micro-batch
    extra: Breakdown             # held beside the weights and moments in every phase
    a: Assumptions

    @property
    def settings(self):
        return self.run.settings

    @property
    def rl(self) -> bool:
        return self.run.method != "sft"

    @property
    def hf_teacher(self) -> bool:
        """geopd.engines.teacher.HFTeacher: fp32 on every GPU for the whole run."""
        return self.rl and self.teacher is not None and self.settings.teacher_engine.backend != "vllm"

    def slack(self, b: Breakdown) -> Breakdown:
        return b.add("allocator slack", (self.a.allocator_factor - 1) * b.total)

    def with_extra(self, b: Breakdown) -> Breakdown:
        b.terms.update(self.extra.terms)
        return b

    def resident(self) -> Breakdown:
        """The trainer between steps: sharded weights and moments (gradients freed), extras."""
        return self.with_extra(trainer_state(self.student, self.world, grads=False))


@dataclass
class _Colocated:
    """A vLLM engine in every trainer process."""
    name: str                    # "rollout" | "teacher"
    engine: VLLMEngine
    block: VLLM
    level: int                   # its sleep level (1: weights kept in pinned host memory, 2: dropped)

    @property
    def sleeps(self) -> bool:
        return self.block.sleep


def updates_info(run) -> dict:
    """Optimizer updates per step and in all (and samples left over per rollout step)."""
    steps = run.steps - run.start_step
    r = run.settings.rollout
    if run.method == "sft":
        return {"updates_per_step": 1, "leftover_samples": 0, "updates": steps}
    # The trainer's count (geopd.train.batching.num_updates, slime's: full batches); a
    # global_batch_size above a step's samples is refused before planning (geopd.grid.checks).
    samples = r.samples_per_step
    batch = samples if r.global_batch_size is None else r.global_batch_size
    updates, left = num_updates(samples, batch), rollout_split(samples, batch)[1]
    return {"updates_per_step": updates, "leftover_samples": left, "updates": steps * updates}


def train_job(run, student: Shape, teacher: Shape | None, gpus: int, world: int, gpu_bytes: float,
              a: Assumptions) -> TrainJob:
    s = run.settings
    engine = s.engine
    if run.method != "sft":
        r = s.rollout
        seq = a.max_prompt_tokens + r.max_new_tokens
        # no token budget: one micro-batch per update, of global_batch_size samples over the ranks
        # (taken as 1 sample where the rollout sets none; the trainer's update then holds them all)
        rows = 1 if r.global_batch_size is None else r.global_batch_size
    else:
        seq, rows = s.max_length, s.batch_size
    micro = largest_micro_batch(engine, run.method, rows, world, seq)
    extra = Breakdown()
    if run.extrapolation:  # EffOPD: theta_base kept, current + direction during a search (fp32 shards)
        extra.add("EffOPD snapshots (base, current, direction)", 12 * student.layers * student.layer_params() / world)
    if run.projection:
        # fp32 right singular vectors (in_features x rank) of every weight matrix, unsharded
        inputs = student.layers * (5 * student.hidden + student.q_dim + student.intermediate) + 2 * student.hidden
        extra.add("rank-K projection bases", 4 * run.projection.rank * inputs)
    job = TrainJob(run, student, teacher, gpus, world, gpu_bytes, engine, seq, micro,
                   # A micro-batch of `micro` padded tokens spans at most one longest sequence; every
                   # position is counted as scored (an upper bound: prompts do not reach lm_head).
                   width=min(seq, micro), extra=extra, a=a)
    if job.hf_teacher:
        extra.add("HF teacher fp32 weights", 4 * teacher.params())
    return job


def load_phase(job: TrainJob) -> Breakdown:
    return sharded_load(job.student, job.world)


def train_phase(job: TrainJob) -> Breakdown:
    return job.slack(job.with_extra(train_step(job.student, job.engine, job.world, job.micro, width=job.width,
                                               entropy=job.rl)))


def hf_teacher_scoring_phase(job: TrainJob) -> Breakdown:
    """The HF teacher scoring 64 sequences per micro-batch, lm_head in default chunks."""
    score = Breakdown(dict(job.resident().terms))
    score.terms.update(scoring_pass(job.teacher, Engine(), 1, 64 * job.seq, width=job.seq).terms)
    return job.slack(score)


def colocated_engines(job: TrainJob, est: Estimate) -> list[_Colocated]:
    """The vLLM engines of each trainer process (their problems and breakdowns into `est`)."""
    a, s = job.a, job.settings
    r, te = s.rollout, s.teacher_engine
    out = []
    if r.backend != "vllm":
        est.problems.append("rollout.backend hf on GPU is not modelled (fp32 replica, whole-batch "
                            "KV cache): use rollout.backend vllm")
    elif r.off_policy and te.backend == "vllm":
        pass  # off-policy: the teacher's own engine samples (Trainer._rollout_engine): no second engine
    else:
        source = job.teacher if r.off_policy else job.student
        engine = _vllm(source, r.vllm, job.gpu_bytes, a=a)
        # the student's engine drops its weights asleep (pushed before each use); a checkpoint's keeps them
        out.append(_Colocated("rollout", engine, r.vllm, 1 if r.off_policy else 2))
        est.problems += [f"rollout engine: {p}" for p in engine.problems(job.seq)]
        est.info["rollout engine (awake, per GPU)"] = engine.breakdown()
        if max_model_len(r.vllm.max_model_len, r.max_new_tokens, a.max_prompt_tokens) < job.seq:
            est.problems.append(f"rollout.vllm.max_model_len {r.vllm.max_model_len} is shorter than "
                                f"a prompt ({a.max_prompt_tokens}) + max_new_tokens ({r.max_new_tokens})")
    if job.teacher is not None and not job.hf_teacher:
        v = te.vllm
        # one request's prompt tokens per step: logits in the engine dtype + fp32 log-probs
        batched = a.vllm_max_num_batched_tokens if v.max_num_batched_tokens is None else v.max_num_batched_tokens
        logprobs = min(batched, job.seq) * job.teacher.vocab * (DTYPE_BYTES[v.gpu_dtype] + 4)
        engine = _vllm(job.teacher, v, job.gpu_bytes, transient=logprobs, a=a)
        out.append(_Colocated("teacher", engine, v, 1))
        est.problems += [f"teacher engine: {p}" for p in engine.problems(job.seq)]
        est.info["teacher engine (awake, per GPU)"] = engine.breakdown()
    return out


def sleeping_weights(job: TrainJob, engines: list[_Colocated]) -> Breakdown:
    """Pinned host memory per node of the sleep-mode engine (at most one per process): at level 1
    its weights, each CuMem allocation rounded up to a power of two (pinned_sleep_bytes); at every
    level its runtime buffers."""
    out = Breakdown()
    for e in engines:
        if not e.sleeps:
            continue
        if e.level == 1:
            pinned = pinned_sleep_bytes(e.engine.shape, e.engine.tp, e.engine.dtype_bytes)
            out.add(f"{e.name} engine weights, level-1 sleep (pinned, rounded to 2^k, x {job.gpus} GPUs)",
                    job.gpus * pinned)
        out.add(f"{e.name} engine runtime buffers, asleep (pinned, x {job.gpus} GPUs)",
                job.gpus * job.a.vllm_sleep_pinned_gib * GiB)
    return out


def held(engines: list[_Colocated], a: Assumptions, b: Breakdown, awake: tuple[str, ...] = ()) -> Breakdown:
    """Each engine in a phase: its whole share when awake (`awake`) or resident (sleep: false),
    its residue when asleep."""
    for e in engines:
        if e.name in awake:
            b.add(f"{e.name} engine (awake)", e.engine.reserved)
        elif e.sleeps:
            b.add(f"{e.name} engine (asleep)", a.vllm_sleep_residue_gib * GiB)
        else:
            b.add(f"{e.name} engine (resident)", e.engine.reserved)
    return b


def engine_phases(job: TrainJob, engines: list[_Colocated]) -> dict[str, Breakdown]:
    """Generation and teacher scoring: the resident trainer beside the engine at work (the
    sampler, or the teacher) and the others as they are held (geopd.engines.vllm_engine)."""
    names = {e.name: e for e in engines}
    out = {}
    sampler = "rollout" if "rollout" in names else ("teacher" if job.settings.rollout.off_policy else None)
    if sampler is not None and sampler in names:
        out["generation"] = held(engines, job.a, job.resident(), awake=(sampler,))
    if "teacher" in names:
        score = held(engines, job.a, job.resident(), awake=("teacher",))
        score.add("teacher prompt log-probs (outside vLLM's budget)", names["teacher"].engine.transient)
        out["teacher scoring"] = score
    return out


def recompute_phase(job: TrainJob, engines: list[_Colocated]) -> Breakdown:
    """The behaviour log-probs recomputed (no grad), one micro-batch at a time."""
    rec = job.resident()
    rec.terms.update(scoring_pass(job.student, job.engine, job.world, job.micro, width=job.width).terms)
    return held(engines, job.a, job.slack(rec))


def host_memory(job: TrainJob, engines: list[_Colocated]) -> Breakdown:
    """Host memory per node: the GPU processes, rank 0 gathering the training state, and the
    sleeping engine's pinned buffers."""
    host = Breakdown().add("GPU processes", job.gpus * job.a.host_process_gib * GiB)
    # rank 0 gathers on the host: the fp32 weights and a bf16 copy to export a checkpoint (6P), the
    # fp32 weights and Adam moments to save the training state (12P; geopd.train.checkpoint)
    host.add("training state gathered on rank 0 (fp32 + Adam)", 12 * job.student.params())
    host.terms.update(sleeping_weights(job, engines).terms)
    return host


def sampling_rounds(rollout, a: Assumptions = ASSUMPTIONS) -> int:
    """Sampling rounds of one rollout step: 1, or under dynamic sampling the rounds of
    `prompts_per_round` prompts that yield `prompts_per_step` informative groups when a fraction
    `zero_variance_fraction` of groups is dropped (at most max_rounds)."""
    ds = rollout.dynamic_sampling
    if ds is None:
        return 1
    kept_per_round = rollout.prompts_per_round * (1.0 - a.zero_variance_fraction)
    needed = math.ceil(rollout.prompts_per_step / kept_per_round) if kept_per_round > 0 else ds.max_rounds
    return max(1, min(ds.max_rounds, needed))


def train_seconds(job: TrainJob, est: Estimate, engines: list[_Colocated]) -> None:
    """Time of each component into est.seconds (token counts into est.info)."""
    a, run, student, teacher, world = job.a, job.run, job.student, job.teacher, job.world
    s, sec = job.settings, est.seconds
    steps = run.steps - run.start_step
    names = {e.name: e.engine for e in engines}
    rollout_engine, teacher_engine = names.get("rollout"), names.get("teacher")
    fs = a.filesystem_gb_s * 1e9
    save = (2 * student.params() + 16 * student.params()) / fs  # a checkpoint export and a state save
    est.info["state_save_s"] = save
    sec["start (load, engines)"] = 2 * student.params() / fs + a.engine_start_s * len(engines)
    sec["checkpoints (export + state)"] = len([c for c in run.saved_steps if c > run.start_step]) * save
    if not job.rl:
        mean = a.sft_fraction * s.max_length
        tokens = s.batch_size * mean * steps
        sec["SFT forward + backward"] = compute_seconds(3 * tokens * student.forward_flops(mean / 2), world, a.train_mfu, a)
        est.info["train_tokens"] = tokens
        est.info["longest_step_s"] = sec["SFT forward + backward"] / max(steps, 1)
        return
    r = s.rollout
    samples = r.samples_per_step
    mean_new = a.response_fraction * r.max_new_tokens
    tokens = samples * (a.prompt_tokens + mean_new)
    context = (a.prompt_tokens + mean_new) / 2
    # dynamic sampling generates `rounds` rounds of prompts_per_round prompts; the kept groups train
    rounds, drawn = sampling_rounds(r, a), r.prompts_per_round * r.samples
    est.info.update(rollout_tokens=steps * rounds * drawn * mean_new, train_tokens=steps * tokens,
                    sampling_rounds=rounds)
    # off-policy: the teacher's engine samples
    sampler = rollout_engine if rollout_engine is not None else (teacher_engine if r.off_policy else None)
    replicas = max(1, world // sampler.tp) if sampler is not None else 1
    if sampler is not None:
        sec["rollout generation"] = steps * rounds * generation_seconds(
            sampler, replicas, drawn, a.prompt_tokens, r.max_new_tokens, a)
        est.info["decode_tokens_per_s_per_gpu"] = sampler.decode_tokens_per_s(
            a.prompt_tokens + mean_new / 2, math.ceil(drawn / replicas)) / sampler.tp
    search = 0.0
    if rollout_engine is not None and run.extrapolation:
        ext = run.extrapolation
        searches = sum(1 for k in range(steps.bit_length() + 1) if run.start_step < 2 ** k <= run.steps)
        validation = generation_seconds(rollout_engine, replicas, ext.validation_prompts,
                                        a.prompt_tokens, r.max_new_tokens, a)
        search = (ext.candidates + 1) * validation
        sec["EffOPD searches (worst case)"] = searches * search
    if teacher is not None:
        est.info["teacher_tokens"] = steps * tokens
        mfu = a.prefill_mfu if teacher_engine is not None else a.train_mfu
        sec["teacher scoring"] = steps * compute_seconds(tokens * teacher.forward_flops(context), world, mfu, a)
    sec["log-prob recompute"] = steps * compute_seconds(tokens * student.forward_flops(context), world, a.train_mfu, a)
    sec["training forward + backward"] = steps * compute_seconds(
        3 * tokens * student.forward_flops(context), world, a.train_mfu, a)
    sec["per-step overhead"] = steps * a.rl_step_overhead_s
    per_step = sum(v for k, v in sec.items() if k not in ("start (load, engines)", "checkpoints (export + state)",
                                                          "EffOPD searches (worst case)"))
    est.info["longest_step_s"] = per_step / max(steps, 1) + search


def signal_lead_s(est: Estimate, requested_s: float, a: Assumptions = ASSUMPTIONS) -> int:
    """Seconds before the time limit that a training job asks Slurm for USR1 (geopd.train.loop saves
    its state after the step it is in and exits for a retry): margin x (the longest step + a
    state save) + Slurm's resolution, or the default where the model has no step time (CPU jobs);
    at most half the job's `requested_s` and Slurm's 65,535."""
    if "longest_step_s" in est.info:
        lead = a.signal_margin * (est.info["longest_step_s"] + est.info["state_save_s"]) + a.signal_resolution_s
    else:
        lead = a.default_signal_lead_s
    return int(min(math.ceil(lead), requested_s // 2, 65535))


def estimate_train(run, student: Shape, teacher: Shape | None, resources: dict, *, device: str,
                   a: Assumptions = ASSUMPTIONS) -> Estimate:
    """One training job (`run` is a geopd.grid.runs.Run): each phase's peak memory per GPU, host
    memory per node, time, and the early signal it asks Slurm for (info signal_lead_s: the
    resources' signal_lead_s, else `signal_lead_s` of the estimate)."""
    est = _estimate_train(run, student, teacher, resources, device=device, a=a)
    est.info["signal_lead_s"] = job_signal_lead(est, resources, a)
    return est


def job_signal_lead(est: Estimate, resources: dict, a: Assumptions = ASSUMPTIONS) -> int:
    """A training job's early-signal lead: its resources' signal_lead_s, else `signal_lead_s`."""
    lead = resources.get("signal_lead_s")
    return int(lead) if lead is not None else signal_lead_s(est, resources["runtime"] * 60, a)


def engine_layout(engines: list[_Colocated]) -> str:
    """Which engines share each trainer process, in the order they are built (the sleep-mode
    engine first: geopd.engines.vllm_engine), and how each is held while the trainer computes."""
    parts = []
    for e in sorted(engines, key=lambda e: not e.sleeps):
        how = (f"sleep mode, level {e.level} ({'weights in pinned host memory' if e.level == 1 else 'weights dropped, pushed on waking'})"
               if e.sleeps else "resident (no sleep mode: its share is held in every phase)")
        parts.append(f"{e.name} engine tp {e.engine.tp} at {e.engine.utilization:g}, {how}")
    return "; ".join(parts) or "no vLLM engine"


def _estimate_train(run, student: Shape, teacher: Shape | None, resources: dict, *, device: str,
                    a: Assumptions = ASSUMPTIONS) -> Estimate:
    gpus, nodes = resources.get("gpus", 0), resources.get("nodes", 1)
    est = Estimate("train", run.name, gpus, nodes, resources["runtime"] / 60)
    est.info.update(updates_info(run))
    if gpus == 0 or device == "cpu":
        return est  # CPU training (the miniature): not modelled
    gpu_bytes = gpu_memory_bytes(resources, a)
    est.memory_limit = gpu_bytes
    if gpu_bytes is None:
        est.problems.append("resources: gpu_memory_gb is not set: GPU memory cannot be checked")
        gpu_bytes = float("inf")
    job = train_job(run, student, teacher, gpus, gpus * nodes, gpu_bytes, a)
    est.info.update(micro_batch_tokens=job.micro, world=job.world)
    s = run.settings
    placement = [p for key, tp in engine_tensor_parallels(s, teacher=teacher is not None).items()
                 for p in engine_placement_problems(key, tp, gpus, job.world)]
    if placement:  # its engines cannot be placed: say so, and estimate nothing else
        est.problems += placement
        return est

    phases = {"load": load_phase(job), "train": train_phase(job)}
    if job.hf_teacher:
        phases["teacher scoring"] = hf_teacher_scoring_phase(job)
    engines = colocated_engines(job, est) if job.rl else []
    if job.rl:
        est.info["engine layout (per trainer process)"] = engine_layout(engines)
        phases.update(engine_phases(job, engines))
        held(engines, a, phases["train"])
        phases["recompute"] = recompute_phase(job, engines)
    ctx = (Breakdown().add("CUDA context", a.cuda_context_gib * GiB)
           .add("NCCL buffers, fragmentation (reserve)", a.gpu_reserve_gib * GiB))
    for phase in phases.values():
        phase.terms = {**ctx.terms, **phase.terms}
    est.phases = phases

    for e in engines:  # the largest share each engine could take with every phase still fitting
        rooms = [(gpu_bytes - (p.total - p.terms[k])) / gpu_bytes for p in phases.values()
                 for k in (f"{e.name} engine (awake)", f"{e.name} engine (resident)") if k in p.terms]
        est.info[f"{e.name}_utilization_that_fits"] = min(rooms, default=None)

    host = host_memory(job, engines)
    est.info["host memory (per node)"] = host
    host_limit = resources.get("mem_mb", 0) * 1e6
    if host.total > host_limit:
        est.problems.append(f"host memory: needs {host.total / GiB:.0f} GiB per node "
                            f"({', '.join(f'{k} {v / GiB:.0f}' for k, v in host.terms.items())} GiB) "
                            f"but mem_mb is {resources.get('mem_mb')}")
    train_seconds(job, est, engines)
    return est.check(a)


def eval_parallelism(shape: Shape, bench: Benchmark, gpus: int, nodes: int, gpu_bytes: float, max_model_len: int,
                     a: Assumptions = ASSUMPTIONS) -> tuple[int, int]:
    """(tensor_parallel, data_parallel) of an evaluation: the benchmark's own, else the smallest
    power-of-two tensor-parallel group that holds the model and one longest sequence, and as
    many data-parallel engines as the job's GPUs allow (every GPU it requests is used)."""
    tp = bench.tensor_parallel
    if tp is None:
        tp = 1
        while tp < gpus and _vllm(shape, bench.vllm(tp), gpu_bytes, a=a).problems(max_model_len):
            tp *= 2
    dp = bench.data_parallel or max(1, gpus * nodes // tp)
    return int(tp), int(dp)


def estimate_eval(rule: str, subject: str, shape: Shape, bench: Benchmark, problems: int | None, resources: dict, *,
                  device: str, a: Assumptions = ASSUMPTIONS) -> Estimate:
    gpus, nodes = resources.get("gpus", 0), resources.get("nodes", 1)
    est = Estimate(rule, subject, gpus, nodes, resources["runtime"] / 60, info={"bench": bench.name})
    if gpus == 0 or device == "cpu":
        return est
    gpu_bytes = gpu_memory_bytes(resources, a)
    est.memory_limit = gpu_bytes
    if gpu_bytes is None:
        est.problems.append("resources: gpu_memory_gb is not set: GPU memory cannot be checked")
        gpu_bytes = float("inf")
    if bench.backend == "hf":
        est.problems.append(f"benchmark {bench.name}: backend hf on GPU is not modelled: use vllm")
        return est.check(a)
    max_len = bench.model_len(a.max_prompt_tokens)
    if max_len < a.max_prompt_tokens + bench.max_new_tokens:  # as a rollout engine's (colocated_engines)
        est.problems.append(f"benchmark {bench.name}: max_model_len {bench.max_model_len} is shorter than "
                            f"a prompt ({a.max_prompt_tokens}) + max_new_tokens ({bench.max_new_tokens})")
    tp, dp = eval_parallelism(shape, bench, gpus, nodes, gpu_bytes, max_len, a)
    engine = _vllm(shape, bench.vllm(tp), gpu_bytes, a=a)
    est.info.update(tp=tp, dp=dp)
    est.info["vLLM engine (per GPU)"] = engine.breakdown()
    est.problems += [f"vLLM engine: {p}" for p in engine.problems(max_len)]
    if tp > gpus:
        est.problems.append(f"tensor_parallel {tp} spans more than the {gpus} GPUs of a node")
    if tp * dp > gpus * nodes:
        est.problems.append(f"tensor_parallel {tp} x data_parallel {dp} needs more than the {gpus * nodes} GPUs requested")
    est.phases = {"generation": Breakdown().add("CUDA context", a.cuda_context_gib * GiB)
                  .add("NCCL buffers, fragmentation (reserve)", a.gpu_reserve_gib * GiB)
                  .add(f"vLLM engine (tp={tp})", engine.reserved)}
    if problems is None:
        est.problems.append(f"benchmark {bench.name}: number of problems unknown (prepare its data first)")
        return est.check(a)
    sequences = problems * bench.samples
    est.info.update(problems=problems, sequences=sequences)
    est.seconds["engine start"] = a.engine_start_s
    est.seconds["generation"] = generation_seconds(engine, dp, sequences, a.prompt_tokens, bench.max_new_tokens, a)
    if bench.kind in ("code", "lcb"):
        est.seconds["sandboxed tests"] = sequences * a.code_tests_per_problem * a.code_test_s / resources.get("cpus", 1)
    return est.check(a)


def estimate_svd_job(rule: str, subject: str, shape: Shape, matrices: str, resources: dict, *,
                     checkpoints: int = 1, a: Assumptions = ASSUMPTIONS) -> Estimate:
    """`diagnose` (checkpoints=1: SVD of W0, of W+ and singular values of dW per matrix) or
    `similarity` (checkpoints=c: one SVD of each checkpoint's dW per matrix), on CPU workers."""
    workers = max(1, resources.get("cpus", 1))
    est = Estimate(rule, subject, resources.get("gpus", 0), resources.get("nodes", 1),
                   resources["runtime"] / 60, memory_kind="node", memory_limit=resources.get("mem_mb", 0) * 1e6)
    mats = sorted(weight_matrices(shape, matrices), key=lambda mn: -svd_units(*mn))
    if rule == "similarity":  # one SVD of dW per checkpoint (per-worker memory not measured apart)
        per = [checkpoints * svd_units(m, n) for m, n in mats]
    else:
        per = [(2 + a.svdvals_ratio) * svd_units(m, n) for m, n in mats]  # W0 uncached: the worst case
    core_s = [u * a.svd_core_s for u in per]
    est.seconds["SVDs"] = max(sum(core_s) / workers, max(core_s, default=0.0))
    busy = mats[:workers]  # the largest matrices go first, one per worker
    est.phases = {"SVD workers": Breakdown()
                  .add(f"{len(busy)} workers' float64 matrices and SVDs", sum(svd_worker_bytes(m, n, a) for m, n in busy))
                  .add("worker processes", len(busy) * a.worker_base_gib * GiB)}
    est.info.update(matrices=len(mats), workers=workers)
    return est.check(a)
