"""A training step never holds [B, T, V] logits: every op's output is recorded during an SFT
step and an OPD step on a large vocabulary, and a fresh process's peak memory stays under the
memory model's bound (geopd.costmodel.train_step, scoring_pass), far below what full logits
would take."""
import importlib.util
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from geopd import costmodel as cm
from geopd.engines import kernels

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
VOCAB = 65536
ENGINE = {"micro_batch_tokens": 512, "logprob_chunk_tokens": 64}


def bench():
    spec = importlib.util.spec_from_file_location("bench_memory_model", REPO / "scripts/bench_memory_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def large_vocab(tmp_path_factory):
    """spec(method, name): a one-step run on a world with a 65,536-token vocabulary: SFT 16 x 128
    tokens, OPD 8 prompts x 4 samples x 64 new tokens."""
    root = tmp_path_factory.mktemp("large-vocab")
    b = bench()
    paths = b.world(root, vocab=VOCAB, hidden=32, layers=1, response_chars=128)
    return lambda method, name: b.spec(paths, method, root / f"{name}-{method}", batch=16, length=128,
                                       engine=ENGINE, prompts=8, samples=4, max_new_tokens=64)


class LargestOutputs(TorchDispatchMode):
    """The element count of the largest tensor each op returns, by op."""

    def __init__(self):
        super().__init__()
        self.largest: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest[str(func)] = max(self.largest.get(str(func), 0), t.numel())
        return out


@pytest.mark.parametrize("method", ["sft", "opd"])
def test_no_op_returns_full_logits(large_vocab, method):
    from geopd.train.loop import Trainer

    spec = large_vocab(method, "dispatch")
    trainer = Trainer(spec, threads=1, progress=False)
    with LargestOutputs() as rec:
        row = trainer.sft_step() if method == "sft" else trainer.rl_step()
    if method == "sft":
        rows, width = 16, 128
    else:
        r = spec["rollout"]
        rows, width = r["prompts_per_step"] * r["samples"], row["response_len"]  # responses alone
    full = rows * width * VOCAB
    largest = max(rec.largest.values())
    op = max(rec.largest, key=rec.largest.get)
    # Logit blocks: the trainer's chunks (64 x V), the rollout's and teacher's default chunks
    # (<= 2**24 logits); nothing near a whole batch's logits.
    assert largest <= kernels.CHUNK_ELEMENTS, (op, largest)
    assert largest * 2 < full, (op, largest, full)
    assert rec.largest.get("aten.mm.default", 0) >= 64 * VOCAB  # the head did run in chunks of 64 rows


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "opd"])
def test_peak_memory_stays_under_the_model(large_vocab, method):
    res = bench().run_step(large_vocab(method, "rss"))
    assert 0 < res["measured"] <= res["bound"], res
    # one fp32 [B, T, V] tensor alone would not fit under the bound
    assert res["full_logits"] > res["bound"], res


def test_the_cost_model_uses_the_trainers_logit_blocks():
    """geopd.costmodel (no torch) restates the trainer's fp32 block size and default chunk."""
    from geopd.engines.logprobs import default_chunk_tokens

    assert cm.LOGIT_BLOCK_ELEMENTS == kernels.CHUNK_ELEMENTS
    shape = cm.Shape.from_entry({"hidden": 64, "layers": 1, "heads": 4, "kv_heads": 2, "intermediate": 128,
                                 "vocab": VOCAB})
    assert cm.head_chunk_rows(shape, 10**9, None) == default_chunk_tokens(VOCAB) == 256
    assert cm.head_chunk_rows(shape, 10**9, 64) == 64 and cm.head_chunk_rows(shape, 5, 64) == 5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_activations_are_what_autograd_saves(dtype):
    """Shape.layer_activation_bytes against the bytes saved_tensors_hooks sees in the decoder of
    transformers' Qwen3 (3 layers minus 1 layer, the weights left out) on a padded batch."""
    from geopd.engines.chat import position_ids
    from geopd.world.models import init_model, tiny_config

    rows, width = 4, 48
    size = dict(hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=96)

    def saved(layers: int) -> int:
        model = init_model(tiny_config("qwen3", vocab_size=300, layers=layers, max_position=64, **size), 0).to(dtype)
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        ids = torch.randint(0, 300, (rows, width), generator=torch.Generator().manual_seed(0))
        attn = torch.ones_like(ids)
        attn[0, :5] = 0  # padding: transformers passes a mask to SDPA
        storages = {}

        def pack(t):
            s = t.untyped_storage()
            if s.data_ptr() not in weights:
                storages[s.data_ptr()] = s.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.model(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn), use_cache=False)
        return sum(storages.values())

    shape = cm.Shape.from_entry({**size, "layers": 1, "vocab": 300})
    per_layer = (saved(3) - saved(1)) / 2
    assert per_layer == rows * width * shape.layer_activation_bytes(torch.finfo(dtype).bits // 8, width)
