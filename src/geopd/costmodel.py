"""Memory and time model of the grid's jobs: what `geopd plan` checks before anything is spent.

Pure arithmetic on model shapes and run settings (no torch, no GPU). Every figure comes from a
formula below and the throughput assumptions in `Assumptions`, the one place where numbers
that are not read from the config live (each with its source or reasoning).

Memory per GPU of a training job (FSDP2 over all N GPUs of the job, P parameters):
- sharded state: fp32 master weights 4P/N + fp32 gradients 4P/N + Adam moments 8P/N;
- compute copies in param dtype: the root module (embedding, lm_head, final norm: FSDP2 keeps
  the root unsharded from forward to backward) plus two decoder layers (the one computing and
  the one prefetched); unsharded gradients: the root's in param dtype, one layer's in param
  dtype plus its reduce-dtype copy. Each of these is taken at its own worst moment, so their
  sum is an upper bound (measured: +8% on a tiny bf16 model);
- activations of one micro-batch of T tokens (`Shape.layer_activation_bytes`): without
  checkpointing every layer's, alive while the log-probs run; with per-layer checkpointing each
  layer's saved input (L x H x T) plus the larger of the log-probs' peak and one layer's
  recompute (the log-probs finish their backward before the last layer is recomputed);
- log-probs through lm_head: a chunk of C tokens x vocab in param dtype, its fp32 upcast and
  fp32 gradient (`logprob_chunk_tokens`); without chunking (today's trainer) the whole
  micro-batch's fp32 logits, their gradient and the gradient of the [:, :-1] slice, with the
  logits held by the caller until backward returns.
A caching-allocator factor and a CUDA context are added on top of the tensors.

OPD/RLVR steps run in phases, each with its own peak: generation (trainer's sharded weights
and Adam moments resident, gradients freed, rollout engine awake), teacher scoring (teacher
engine awake, plus the prompt log-probs vLLM computes outside its budget), recompute of the
behaviour log-probs, training. An awake vLLM engine holds its gpu_memory_utilization x GPU
memory (weights at its dtype / tensor_parallel, activations, the rest KV cache); with `sleep`
a sleeping one keeps `vllm_sleep_residue_gib` (its KV cache is freed; its weights go to host
memory at level 1, the teacher, or are dropped at level 2, the rollout engine, whose weights
the trainer pushes after waking it). This presumes the trainer empties PyTorch's cache before
an engine wakes.

Time: token counts x FLOPs per token / (GPUs x peak x utilisation) for training, recompute
and teacher scoring; vLLM decode from a memory-bandwidth roofline (weights + the KV cache read
per step, concurrency bounded by the KV cache), never faster than one longest response at
concurrency 1 (the tail of a rollout batch). Checked against measurements: the trainer terms
by scripts/bench_memory_model.py (tensor accounting of tiny-model steps on CPU); throughput
figures only by their sources until a GPU run measures them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

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
    cuda_context_gib: float = 1.0        # per process
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


ASSUMPTIONS = Assumptions()

# Test-set sizes of the paper's benchmarks (used when the prepared data is not there yet).
BENCHMARK_PROBLEMS = {
    "HuggingFaceH4/aime_2024": 30, "yentinglin/aime_2025": 30, "HuggingFaceH4/MATH-500": 500,
    "math-ai/minervamath": 272, "Idavidrein/gpqa": 198,
    # LiveCodeBench release_v5, problems dated 2024-08-01 .. 2025-02-01: an estimate.
    "livecodebench/code_generation_lite": 280,
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

    def layer_activation_bytes(self, dtype_bytes: int) -> float:
        """Bytes one decoder layer saves for backward, per token (HF Qwen3, SDPA/flash attention).

        RMSNorm of width w saves an fp32 copy of its input (4w) plus its normalised value and
        output in the compute dtype (2bw; for fp32 these are the input itself and two new
        tensors, 12w in all); q_norm/k_norm save no output (RoPE multiplies by constants).
        q: input copy + normalised + RoPE output; k the same on kv width; v; attention output
        and its contiguous copy for o_proj, fp32 log-sum-exp per head; MLP: gate, silu(gate),
        up and their product. The layer's input is not saved by the layer itself.
        """
        b, h, q, kv = dtype_bytes, self.hidden, self.q_dim, self.kv_dim
        norms = 2 * (4 * h + 2 * b * h)
        attn = (4 * q + 2 * b * q) + (4 * kv + 2 * b * kv) + b * kv + 2 * b * q + 4 * self.heads
        if self.moe:  # per token: its k experts' gate/silu/up/product, routed input copies, fp32 router
            k = self.experts_per_tok
            mlp = k * (4 * b * self.moe_intermediate + b * h) + 8 * self.num_experts
        else:
            mlp = 4 * b * self.intermediate
        return norms + attn + mlp


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


@dataclass(frozen=True)
class Engine:
    """The trainer's precision and memory settings (a run's `engine:` block)."""
    param_dtype: str = "float32"
    reduce_dtype: str = "float32"
    activation_checkpointing: bool = False
    micro_batch_tokens: int | None = None       # None: today's trainer (rows x width per micro-batch)
    logprob_chunk_tokens: int | None = None     # None: full [B, T, V] logits

    @classmethod
    def from_settings(cls, block: dict | None) -> "Engine":
        return cls(**(block or {}))

    @property
    def b(self) -> int:
        return DTYPE_BYTES[self.param_dtype]

    @property
    def r(self) -> int:
        return DTYPE_BYTES[self.reduce_dtype]


def trainer_state(shape: Shape, world: int, *, grads: bool = True) -> Breakdown:
    """Sharded fp32 master weights, gradients and Adam moments on one of `world` GPUs."""
    p = shape.params() / world
    out = Breakdown().add("fp32 master weights (sharded)", 4 * p)
    if grads:
        out.add("fp32 gradients (sharded)", 4 * p)
    return out.add("Adam moments (sharded)", 8 * p)


def logits_bytes(shape: Shape, engine: Engine, tokens: int) -> tuple[float, float]:
    """(peak, kept) bytes of the log-probs through lm_head for one micro-batch with backward:
    the peak while they are computed and differentiated, and what stays alive through the
    rest of the backward pass."""
    if engine.logprob_chunk_tokens:
        chunk = min(engine.logprob_chunk_tokens, tokens)
        # chunk logits in param dtype, their fp32 upcast, and its fp32 gradient; nothing kept
        return chunk * shape.vocab * (engine.b + 8), 0.0
    # Today: logits upcast to fp32 (saved by the log-prob), their gradient, and the gradient of
    # the [:, :-1] slice (a full-size copy; the bf16 logits and their gradient are never alive
    # at the same time as all three). The caller holds the fp32 logits until backward returns.
    full = tokens * shape.vocab
    return 12 * full, 4 * full


def activation_bytes(shape: Shape, engine: Engine, tokens: int) -> Breakdown:
    """Activation and log-prob bytes at the peak of one micro-batch's forward + backward."""
    b, h = engine.b, shape.hidden
    layer = shape.layer_activation_bytes(b) * tokens
    chunked = " (chunked)" if engine.logprob_chunk_tokens else " (full logits)"
    peak, kept = logits_bytes(shape, engine, tokens)
    out = Breakdown()
    # final norm (saved like a layer's norm) and the hidden-state gradients in flight
    out.add("final norm + hidden gradients", (4 * h + 2 * b * h) * tokens + 2 * b * h * tokens)
    if not engine.activation_checkpointing:  # every layer's activations live when lm_head runs
        out.add("activations (every layer)", shape.layers * layer)
        return out.add("log-probs through lm_head" + chunked, peak)
    out.add("saved layer inputs (checkpointing)", shape.layers * b * h * tokens)
    # the log-probs finish their backward before the last layer is recomputed
    if peak >= layer + kept:
        return out.add("log-probs through lm_head" + chunked, peak)
    out.add("one layer's activations (recompute)", layer)
    return out.add("logits kept by the trainer through backward", kept)


def trainer_peak(shape: Shape, engine: Engine, world: int, tokens: int) -> Breakdown:
    """Tensor bytes on one GPU at the peak of a training micro-batch (forward + backward)."""
    out = trainer_state(shape, world)
    sharded = world > 1 or engine.param_dtype != "float32"
    if sharded:  # FSDP2: unsharded compute copies and gradient buffers
        b, r = engine.b, engine.r
        out.add("compute copies: root + 2 layers", b * (shape.root_params() + 2 * shape.layer_params()))
        out.add("unsharded gradients: root + 1 layer", b * shape.root_params() + (b + r) * shape.layer_params())
    for name, value in activation_bytes(shape, engine, tokens).terms.items():
        out.add(name, value)
    return out


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


def gpu_memory_bytes(resources: dict) -> float | None:
    gb = resources.get("gpu_memory_gb")
    return None if gb is None else gb * 1e9  # decimal GB, as GPUs are labelled (80 GB ~ 74.5 GiB)


def _vllm(shape: Shape, block: dict, gpu_bytes: float, *, default_util: float, transient: float = 0.0,
          a: Assumptions = ASSUMPTIONS) -> VLLMEngine:
    return VLLMEngine(shape, tp=int(block.get("tensor_parallel", 1)),
                      utilization=float(block.get("gpu_memory_utilization", default_util)),
                      dtype_bytes=DTYPE_BYTES[block.get("dtype", "bfloat16")], gpu_bytes=gpu_bytes,
                      transient=transient, a=a)


def _engine_parallel_problems(name: str, engine: VLLMEngine, gpus: int, world: int) -> list[str]:
    out = []
    if engine.tp > gpus:
        out.append(f"{name} tensor_parallel {engine.tp} spans more than the {gpus} GPUs of a node")
    elif world % engine.tp:
        out.append(f"{name} tensor_parallel {engine.tp} does not divide the job's {world} GPUs")
    return out


def updates_per_rollout_step(rollout: dict) -> tuple[int, int]:
    """(optimizer updates per rollout step, samples left over): slime's rollout batch
    (prompts x samples) over `global_batch_size` samples."""
    samples = rollout["prompts_per_step"] * rollout["samples"]
    gbs = rollout.get("global_batch_size", samples)
    return samples // gbs, samples % gbs


def estimate_train(run, student: Shape, teacher: Shape | None, resources: dict, *, device: str,
                   a: Assumptions = ASSUMPTIONS) -> Estimate:
    """One training job (`run` is a geopd.grid.Run)."""
    gpus, nodes = resources.get("gpus", 0), resources.get("nodes", 1)
    est = Estimate("train", run.name, gpus, nodes, resources["runtime"] / 60)
    s = run.settings
    steps = run.steps - run.start_step
    rl = run.method != "sft"
    if rl:
        updates, left = updates_per_rollout_step(s["rollout"])
        est.info.update(updates_per_step=updates, leftover_samples=left, updates=steps * updates)
    else:
        est.info.update(updates_per_step=1, leftover_samples=0, updates=steps)
    if gpus == 0 or device == "cpu":
        return est  # CPU training (the miniature): not modelled
    world = gpus * nodes
    gpu_bytes = gpu_memory_bytes(resources)
    engine = Engine.from_settings(s.get("engine"))
    ctx = Breakdown().add("CUDA context", a.cuda_context_gib * GiB)
    host = Breakdown().add("GPU processes", gpus * a.host_process_gib * GiB)
    host.add("checkpoint export on rank 0 (fp32 state + bf16 copy)", 6 * student.params())
    est.memory_limit = gpu_bytes
    if gpu_bytes is None:
        est.problems.append("resources: gpu_memory_gb is not set: GPU memory cannot be checked")
        gpu_bytes = float("inf")

    def slack(b: Breakdown) -> Breakdown:
        return b.add("allocator slack", (a.allocator_factor - 1) * b.total)

    if rl:
        r = s["rollout"]
        seq = a.max_prompt_tokens + r["max_new_tokens"]
        micro = max(engine.micro_batch_tokens, seq) if engine.micro_batch_tokens else \
            max(1, r.get("global_batch_size", 1) // world) * seq
        samples = r["prompts_per_step"] * r["samples"]
        local_rows = math.ceil(samples / world)
    else:
        seq = s["max_length"]
        micro = max(engine.micro_batch_tokens, seq) if engine.micro_batch_tokens else \
            math.ceil(s["batch_size"] / world / 4) * seq  # today: 4 length buckets per step
    est.info.update(micro_batch_tokens=micro, world=world)

    train = slack(trainer_peak(student, engine, world, micro))
    resident = trainer_state(student, world, grads=False)
    if run.extrapolation:  # EffOPD: theta_base kept, current + direction during a search (fp32 shards)
        layers = student.layers * student.layer_params() / world
        resident.add("EffOPD snapshots (base, current, direction)", 12 * layers)
    if run.projection:
        # fp32 right singular vectors (in_features x rank) of every weight matrix, unsharded
        inputs = student.layers * (5 * student.hidden + student.q_dim + student.intermediate) + 2 * student.hidden
        resident.add("rank-K projection bases", 4 * run.projection["rank"] * inputs)
    phases = {"train": train}
    rollout_engine = teacher_engine = None
    if rl:
        r = s["rollout"]
        if r.get("backend", "hf") != "vllm":
            est.problems.append("rollout.backend hf on GPU is not modelled (fp32 replica, whole-batch "
                                "KV cache): use rollout.backend vllm")
        elif r.get("source") == "teacher" and s.get("teacher_engine", {}).get("backend") == "vllm":
            pass  # off-policy: the teacher's own engine samples (geopd.train.loop): no second engine
        else:
            source = teacher if r.get("source") == "teacher" else student
            rollout_engine = _vllm(source, r.get("vllm", {}), gpu_bytes, default_util=0.5, a=a)
            est.problems += [f"rollout engine: {p}" for p in rollout_engine.problems(seq)]
            est.info["rollout engine (awake, per GPU)"] = rollout_engine.breakdown()
            if r.get("vllm", {}).get("max_model_len", seq) < seq:
                est.problems.append(f"rollout.vllm.max_model_len {r['vllm']['max_model_len']} is shorter than "
                                    f"a prompt ({a.max_prompt_tokens}) + max_new_tokens ({r['max_new_tokens']})")
            est.problems += _engine_parallel_problems("rollout engine", rollout_engine, gpus, world)
        if teacher is not None:
            te = s.get("teacher_engine", {})
            if te.get("backend", "hf") == "vllm":
                v = te.get("vllm", {})
                # one request's prompt tokens per step: logits in the engine dtype + fp32 log-probs
                batched = v.get("max_num_batched_tokens", a.vllm_max_num_batched_tokens)
                logprobs = min(batched, seq) * teacher.vocab * (DTYPE_BYTES[v.get("dtype", "bfloat16")] + 4)
                teacher_engine = _vllm(teacher, v, gpu_bytes, default_util=0.4, transient=logprobs, a=a)
                est.problems += [f"teacher engine: {p}" for p in teacher_engine.problems(seq)]
                est.info["teacher engine (awake, per GPU)"] = teacher_engine.breakdown()
                est.problems += _engine_parallel_problems("teacher engine", teacher_engine, gpus, world)
                host.add("sleeping teacher weights (level 1, in host memory)", gpus * teacher_engine.weights)
            else:
                # Today's HF teacher: fp32 on every GPU, 64 sequences of logits at a time.
                hf = Breakdown().add("HF teacher fp32 weights", 4 * teacher.params())
                hf.add("HF teacher logits (64 sequences)", 64 * seq * teacher.vocab * 4 * 2)
                phases["teacher scoring"] = hf
        # Memory of each engine while the trainer computes: its reservation, or its residue asleep.
        # The engines of one process sleep and wake together (vLLM 0.32 has one sleep allocator per
        # process; geopd.train.vllm_engine), so while either generates or scores both are awake.
        def held(e: VLLMEngine | None, block: dict) -> float:
            if e is None:
                return 0.0
            return a.vllm_sleep_residue_gib * GiB if block.get("sleep") else e.reserved
        r_block = r.get("vllm", {})
        t_block = s.get("teacher_engine", {}).get("vllm", {})
        awake = Breakdown(dict(resident.terms))
        for e, name in ((rollout_engine, "rollout"), (teacher_engine, "teacher")):
            if e is not None:
                awake.add(f"{name} engine (awake)", e.reserved)
        if rollout_engine is not None or teacher_engine is not None and r.get("source") == "teacher":
            phases["generation"] = Breakdown(dict(awake.terms))
        if teacher_engine is not None:
            score = Breakdown(dict(awake.terms))
            score.add("teacher prompt log-probs (outside vLLM's budget)", teacher_engine.transient)
            phases["teacher scoring"] = score
        for e, block, name in ((rollout_engine, r_block, "rollout"), (teacher_engine, t_block, "teacher")):
            train.add(f"{name} engine" + (" (asleep)" if block.get("sleep") else ""), held(e, block))
        # Recompute of the behaviour log-probs (no grad) over this rank's rollout batch.
        rec = Breakdown(dict(resident.terms))
        if engine.logprob_chunk_tokens:
            rec.add("log-prob chunk (no grad)", min(engine.logprob_chunk_tokens, micro) * student.vocab * (engine.b + 4))
            rec.add("one layer (no grad)", student.layer_activation_bytes(engine.b) * micro)
        else:  # today: the whole local batch in one forward, logits and logits / T in fp32
            rec.add("full logits of the local rollout batch (no grad)", local_rows * seq * student.vocab * 4 * 2)
        for e, block, name in ((rollout_engine, r_block, "rollout"), (teacher_engine, t_block, "teacher")):
            rec.add(f"{name} engine" + (" (asleep)" if block.get("sleep") else ""), held(e, block))
        phases["recompute"] = slack(rec)
    for phase in phases.values():
        phase.terms = {**ctx.terms, **phase.terms}
    est.phases = phases
    est.info["host memory (per node)"] = host
    host_limit = resources.get("mem_mb", 0) * 1e6
    if host.total > host_limit:
        est.problems.append(f"host memory: needs {host.total / GiB:.0f} GiB per node "
                            f"({', '.join(f'{k} {v / GiB:.0f}' for k, v in host.terms.items())} GiB) "
                            f"but mem_mb is {resources.get('mem_mb')}")

    # ---- time ----
    sec = est.seconds
    fs = a.filesystem_gb_s * 1e9
    sec["start (load, engines)"] = 2 * student.params() / fs + a.engine_start_s * (
        (rollout_engine is not None) + (teacher_engine is not None))
    sec["checkpoints (export + state)"] = len([c for c in run.checkpoints if c > run.start_step]) * (
        2 * student.params() + 16 * student.params()) / fs
    if not rl:
        mean = a.sft_fraction * s["max_length"]
        tokens = s["batch_size"] * mean * steps
        sec["SFT forward + backward"] = compute_seconds(3 * tokens * student.forward_flops(mean / 2), world, a.train_mfu, a)
        est.info["train_tokens"] = tokens
    else:
        r = s["rollout"]
        samples = r["prompts_per_step"] * r["samples"]
        mean_new = a.response_fraction * r["max_new_tokens"]
        tokens = samples * (a.prompt_tokens + mean_new)
        context = (a.prompt_tokens + mean_new) / 2
        est.info.update(rollout_tokens=steps * samples * mean_new, train_tokens=steps * tokens)
        sampler = rollout_engine if rollout_engine is not None else (
            teacher_engine if r.get("source") == "teacher" else None)  # off-policy: the teacher's engine
        if sampler is not None:
            engines = world // sampler.tp
            sec["rollout generation"] = steps * generation_seconds(
                sampler, engines, samples, a.prompt_tokens, r["max_new_tokens"], a)
            est.info["decode_tokens_per_s_per_gpu"] = sampler.decode_tokens_per_s(
                a.prompt_tokens + mean_new / 2, math.ceil(samples / engines)) / sampler.tp
        if rollout_engine is not None:
            if run.extrapolation:
                ext = run.extrapolation
                searches = sum(1 for k in range(steps.bit_length() + 1)
                               if run.start_step < 2 ** k <= run.steps)
                validation = generation_seconds(rollout_engine, engines, ext.get("validation_prompts", 50),
                                                a.prompt_tokens, r["max_new_tokens"], a)
                sec["EffOPD searches (worst case)"] = searches * (ext.get("candidates", 5) + 1) * validation
        if teacher is not None:
            est.info["teacher_tokens"] = steps * tokens
            mfu = a.prefill_mfu if teacher_engine is not None else a.train_mfu
            sec["teacher scoring"] = steps * compute_seconds(tokens * teacher.forward_flops(context), world, mfu, a)
        sec["log-prob recompute"] = steps * compute_seconds(tokens * student.forward_flops(context), world, a.train_mfu, a)
        sec["training forward + backward"] = steps * compute_seconds(
            3 * tokens * student.forward_flops(context), world, a.train_mfu, a)
        sec["per-step overhead"] = steps * a.rl_step_overhead_s
    return est.check(a)


def eval_parallelism(shape: Shape, bench: dict, gpus: int, nodes: int, gpu_bytes: float, max_model_len: int,
                     a: Assumptions = ASSUMPTIONS) -> tuple[int, int]:
    """(tensor_parallel, data_parallel) of an evaluation: the benchmark's own, else the smallest
    power-of-two tensor-parallel group that holds the model and one longest sequence, and as
    many data-parallel engines as the job's GPUs allow (every GPU it requests is used)."""
    tp = bench.get("tensor_parallel")
    if tp is None:
        tp = 1
        while tp < gpus and _vllm(shape, {"tensor_parallel": tp, **_eval_block(bench)}, gpu_bytes,
                                  default_util=0.9, a=a).problems(max_model_len):
            tp *= 2
    dp = bench.get("data_parallel") or max(1, gpus * nodes // tp)
    return int(tp), int(dp)


def _eval_block(bench: dict) -> dict:
    return {k: bench[k] for k in ("gpu_memory_utilization", "dtype") if k in bench}


def estimate_eval(rule: str, subject: str, shape: Shape, bench: dict, problems: int | None, resources: dict, *,
                  device: str, a: Assumptions = ASSUMPTIONS) -> Estimate:
    gpus, nodes = resources.get("gpus", 0), resources.get("nodes", 1)
    est = Estimate(rule, subject, gpus, nodes, resources["runtime"] / 60, info={"bench": bench["name"]})
    if gpus == 0 or device == "cpu":
        return est
    gpu_bytes = gpu_memory_bytes(resources)
    est.memory_limit = gpu_bytes
    if gpu_bytes is None:
        est.problems.append("resources: gpu_memory_gb is not set: GPU memory cannot be checked")
        gpu_bytes = float("inf")
    if bench.get("backend", "auto") == "hf":
        est.problems.append(f"benchmark {bench['name']}: backend hf on GPU is not modelled: use vllm")
        return est.check(a)
    max_len = bench.get("max_model_len") or a.max_prompt_tokens + bench["max_new_tokens"]
    tp, dp = eval_parallelism(shape, bench, gpus, nodes, gpu_bytes, max_len, a)
    engine = _vllm(shape, {"tensor_parallel": tp, **_eval_block(bench)}, gpu_bytes, default_util=0.9, a=a)
    est.info.update(tp=tp, dp=dp)
    est.info["vLLM engine (per GPU)"] = engine.breakdown()
    est.problems += [f"vLLM engine: {p}" for p in engine.problems(max_len)]
    if tp > gpus:
        est.problems.append(f"tensor_parallel {tp} spans more than the {gpus} GPUs of a node")
    if tp * dp > gpus * nodes:
        est.problems.append(f"tensor_parallel {tp} x data_parallel {dp} needs more than the {gpus * nodes} GPUs requested")
    est.phases = {"generation": Breakdown().add("CUDA context", a.cuda_context_gib * GiB)
                  .add(f"vLLM engine (tp={tp})", engine.reserved)}
    if problems is None:
        est.problems.append(f"benchmark {bench['name']}: number of problems unknown (prepare its data first)")
        return est.check(a)
    sequences = problems * bench["samples"]
    est.info.update(problems=problems, sequences=sequences)
    est.seconds["engine start"] = a.engine_start_s
    est.seconds["generation"] = generation_seconds(engine, dp, sequences, a.prompt_tokens, bench["max_new_tokens"], a)
    if bench["kind"] in ("code", "lcb"):
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
