"""What one training step holds in memory on one rank, from the model's shape and the engine
settings: the formulas the trainer's code paths imply (geopd.train.loop, geopd.train.logprobs).
scripts/bench_train_memory.py prints them beside measured peaks; tests bound the measured peak
by them. Bytes throughout; P = parameters, W = ranks, b = bytes of the compute (param) dtype.

    persistent   master 4P/W + gradients 4P/W + AdamW moments 8P/W (fp32 under FSDP2)
    unsharded    FSDP2 only: b * (P_root + 2 P_layer) weights (the root unit -- embedding, final
                 norm, lm_head -- stays gathered from forward to backward; one layer computing,
                 one prefetched) and as much again for their gradients before reduce-scatter
    activations  micro-batch of T padded tokens, L layers, a = bytes saved per token and layer:
                 without checkpointing L T a; with it L T H b (each layer's input) + T a (the
                 layer being recomputed); plus the decoder's output T H b and the hidden states
                 of the n scored positions n H b (twice in backward: value and gradient)
    head         C = min(logprob_chunk_tokens, n) rows of logits, C V b, never [B, T, V]; fp32
                 blocks of at most 2**24 logits (forward: 4 live with the entropy; backward: 3,
                 the gradient overwrites the recomputed logits), and in backward the fp32
                 accumulator of lm_head's gradient 4 V H (+ b V H for one chunk's product, b < 4)
    optimizer    AdamW per parameter (foreach=False): 2 fp32 temporaries of the largest shard

    mask         a padded micro-batch's SDPA mask (transformers): T x width x (1 + b)

    total = master + grads + adam + unsharded + max(activations + hidden + mask + head, optimizer)

A no-grad pass (old log-probs, rollout log-probs, the HF teacher) needs, per micro-batch, one
layer's working set, T H b twice and one head chunk (scoring_bytes); `generate` its KV cache
(generation_bytes).
"""
from __future__ import annotations

from dataclasses import dataclass

from geopd.train import objectives as obj


@dataclass(frozen=True)
class Shape:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool

    @classmethod
    def of(cls, config) -> "Shape":
        c = config.get_text_config() if hasattr(config, "get_text_config") else config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return cls(c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads,
                   getattr(c, "num_key_value_heads", None) or c.num_attention_heads, head_dim,
                   c.intermediate_size, bool(getattr(c, "tie_word_embeddings", False)))

    @property
    def layer_params(self) -> int:  # Qwen3: q/k/v/o, q/k norms, two RMSNorms, SwiGLU MLP
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return self.hidden * (2 * q + 2 * kv) + 2 * self.head_dim + 2 * self.hidden + 3 * self.hidden * self.intermediate

    @property
    def root_params(self) -> int:  # embedding, final norm, lm_head unless tied
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def params(self) -> int:
        return self.root_params + self.layers * self.layer_params

    def activation_bytes_per_token(self, b: int) -> int:
        """Saved by autograd per token in one decoder layer (transformers' Qwen3, SDPA): two
        RMSNorms (fp32 input and output), q/k before and after their norms, rotary inputs,
        SDPA's q/k/v (k/v repeated to every head)/output, o_proj's input, and the SwiGLU MLP's
        gate, silu(gate), up and product."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return b * (2 * self.hidden + 8 * q + 4 * kv + 4 * self.intermediate) + 4 * (4 * self.hidden + q + kv)


def step_bytes(shape: Shape, *, micro_batch_tokens: int, width: int | None = None, scored_tokens: int | None = None,
               chunk_tokens: int | None = None, param_bytes: int = 4, world: int = 1, sharded: bool = False,
               activation_checkpointing: bool = False) -> dict[str, int]:
    """Peak bytes of one step (forward/backward of the largest micro-batch, then AdamW) on one
    rank, by part, and "total" = the persistent parts + the largest of the three phases.

    micro_batch_tokens: padded tokens of the largest micro-batch (rows x columns); width: its
    columns (default: one row of micro_batch_tokens); scored_tokens: positions of it sent through
    lm_head (default: all)."""
    b, P, W = param_bytes, shape.params, world
    T = micro_batch_tokens
    n = T if scored_tokens is None else min(scored_tokens, T)
    C = _chunk(shape, n, chunk_tokens)
    H, V = shape.hidden, shape.vocab
    a = shape.activation_bytes_per_token(b)
    out = {
        "master": 4 * P // W,
        "grads": 4 * P // W,
        "adam": 8 * P // W,
        "unsharded": 2 * b * (shape.root_params + 2 * shape.layer_params) if sharded else 0,
        "activations": shape.layers * T * H * b + T * a if activation_checkpointing else shape.layers * T * a,
        "hidden": T * H * b + 2 * n * H * b,
        # transformers' SDPA mask of a padded micro-batch, rows x 1 x width x width bool, and its
        # additive form in the compute dtype (one layer at a time)
        "attention_mask": T * (width or T) * (1 + b),
    }
    forward = _head_bytes(shape, C, b, blocks=4)
    backward = _head_bytes(shape, C, b, blocks=3) + 4 * V * H + (b * V * H if b < 4 else 0)
    out["head"] = max(forward, backward)
    # AdamW one parameter at a time (foreach=False): sqrt(v) and the step's quotient
    optimizer = 2 * 4 * max(V * H, shape.layer_params) // (W if sharded else 1)
    out["optimizer"] = optimizer
    during = out["activations"] + out["hidden"] + out["attention_mask"] + out["head"]
    out["total"] = sum(out[k] for k in ("master", "grads", "adam", "unsharded")) + max(during, optimizer)
    return out


def _chunk(shape: Shape, tokens: int, chunk_tokens: int | None) -> int:
    return min(tokens, chunk_tokens or max(1, obj._CHUNK_ELEMENTS // shape.vocab))


def _head_bytes(shape: Shape, chunk: int, b: int, blocks: int) -> int:
    """One chunk of logits in the compute dtype and `blocks` fp32 temporaries of at most 2**24
    logits: 2 for a logsumexp, 4 with the entropy, 3 for the backward's softmax."""
    return chunk * shape.vocab * b + blocks * 4 * min(chunk * shape.vocab, obj._CHUNK_ELEMENTS)


def scoring_bytes(shape: Shape, *, tokens: int, scored_tokens: int | None = None, chunk_tokens: int | None = None,
                  param_bytes: int = 4) -> int:
    """A no-grad forward over a micro-batch of `tokens` (old log-probs, rollout log-probs, the
    HF teacher): a layer's working set, the decoder output and the scored hidden states, and
    one head chunk."""
    b = param_bytes
    n = tokens if scored_tokens is None else min(scored_tokens, tokens)
    return (tokens * shape.activation_bytes_per_token(b) + tokens * shape.hidden * b + n * shape.hidden * b
            + _head_bytes(shape, _chunk(shape, n, chunk_tokens), b, blocks=2))


def generation_bytes(shape: Shape, *, rows: int, length: int, param_bytes: int = 4) -> int:
    """transformers `generate` over `rows` sequences of up to `length` tokens: the KV cache
    (2 x kv heads x head_dim per token and layer) and the last position's logits with the
    processors' copies (4 x rows x V fp32)."""
    kv = 2 * shape.kv_heads * shape.head_dim * shape.layers * param_bytes
    return rows * length * kv + 4 * rows * shape.vocab * 4
