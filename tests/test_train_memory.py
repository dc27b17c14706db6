"""A training step never holds [B, T, V] logits: every op's output is recorded during an SFT
step and an OPD step on a large vocabulary, and a fresh process's peak memory stays under the
memory model's bound (geopd.train.memory), far below what full logits would take."""
import importlib.util
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from geopd.train import objectives as obj

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
VOCAB = 65536
ENGINE = {"micro_batch_tokens": 512, "logprob_chunk_tokens": 64}


def bench():
    spec = importlib.util.spec_from_file_location("bench_train_memory", REPO / "scripts/bench_train_memory.py")
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
    assert largest <= obj._CHUNK_ELEMENTS, (op, largest)
    assert largest * 2 < full, (op, largest, full)
    assert rec.largest.get("aten.mm.default", 0) >= 64 * VOCAB  # the head did run in chunks of 64 rows


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "opd"])
def test_peak_memory_stays_under_the_model(large_vocab, method):
    res = bench().run_one(large_vocab(method, "rss"))
    assert 0 < res["measured"] <= res["bound"], res
    # one fp32 [B, T, V] tensor alone would not fit under the bound
    assert res["full_logits"] > res["bound"], res
