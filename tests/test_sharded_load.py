"""Loading at paper scale: under FSDP2 the trainer's model is sharded before its weights exist
and each rank reads only its shards (geopd.engines.models.load_sharded_model). Two gloo
processes: the result equals a plain load (weights, buffers such as RoPE's inv_freq, a forward
pass), no rank's memory grows by the full fp32 model while loading, and the student is sharded
before the teacher's engine starts."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from geopd import costmodel as cm

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20


def checkpoint(path: Path, *, vocab: int, hidden: int, tie: bool, dtype: torch.dtype, layers: int = 2) -> Path:
    from geopd.engines.models import save_model
    from geopd.world.models import init_model, tiny_config
    from geopd.world.tokenizer import build_tokenizer

    tok = build_tokenizer()
    cfg = tiny_config("qwen3", vocab_size=vocab, hidden=hidden, layers=layers, heads=4, kv_heads=2,
                      intermediate=4 * hidden, tie_word_embeddings=tie, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id)
    save_model(init_model(cfg, 3), tok, path, dtype=dtype)
    return path


def run_worker(tmp_path: Path, ckpt: Path, engine: dict) -> list[dict]:
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(REPO / "tests/sharded_load_worker.py"), str(ckpt), json.dumps(engine), str(out)],
                          capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_ranks_load_their_shards_only(tmp_path):
    """A bf16 checkpoint (as on the hub) of 12 layers, loaded as fp32 masters over two FSDP2
    ranks: exactly the plain load's values and logits. Each rank's memory peaks at most the cost
    model's loading figure (its fp32 half and one slice being read) plus 16 MiB of runtime above
    where it was -- less than the full fp32 model alone, which a plain load does add to every
    rank."""
    ckpt = checkpoint(tmp_path / "ckpt", vocab=2048, hidden=512, layers=12, tie=False, dtype=torch.bfloat16)
    ranks = run_worker(tmp_path, ckpt, {})
    main = ranks[0]
    assert main["missing"] == [] and main["dtypes"] == ["torch.float32"]
    assert main["weights_max_diff"] == 0.0
    assert main["buffers_equal"] and main["buffer_names"] == ["model.rotary_emb.inv_freq",
                                                              "model.rotary_emb.original_inv_freq"]
    assert main["logits_max_diff"] <= 1e-5
    shape = cm.Shape.from_hf_config(json.loads((ckpt / "config.json").read_text()))
    full = 4 * shape.params()
    bound = cm.sharded_load(shape, 2).total + 16 * MiB
    assert bound < full
    for r in ranks:
        assert r["sharded_peak"] <= bound, (r, bound, full)
        assert r["plain_peak"] >= full, r  # the measure sees a whole fp32 model when there is one


@pytest.mark.slow
def test_tied_model_sharded_in_bf16_loads_the_same_weights(tmp_path):
    """Qwen3-4B ties lm_head to the embedding (one parameter, stored once): the paper's engine
    (bf16 compute over fp32 masters, activation checkpointing) loads it to the plain values."""
    ckpt = checkpoint(tmp_path / "ckpt", vocab=512, hidden=64, tie=True, dtype=torch.float32)
    main = run_worker(tmp_path, ckpt, {"param_dtype": "bfloat16", "activation_checkpointing": True})[0]
    assert main["missing"] == [] and main["weights_max_diff"] == 0.0 and main["buffers_equal"]
    assert main["dtypes"] == ["torch.float32"]


def test_student_is_sharded_before_the_teacher_starts(tmp_path, monkeypatch):
    """Trainer start-up order: the student exists (sharded) before make_teacher runs, so a vLLM
    teacher engine profiles the GPU with the trainer's shards already in place."""
    import importlib.util

    from geopd.engines import models
    from geopd.engines import teacher
    from geopd.train.loop import Trainer

    found = importlib.util.spec_from_file_location("bench_memory_model", REPO / "scripts/bench_memory_model.py")
    bench = importlib.util.module_from_spec(found)
    found.loader.exec_module(bench)
    paths = bench.world(tmp_path, vocab=512, hidden=32, layers=1, response_chars=16, records=8)
    calls = []
    load, make = models.load_model, teacher.make_teacher
    monkeypatch.setattr(models, "load_model", lambda *a, **k: calls.append(str(a[0])) or load(*a, **k))
    monkeypatch.setattr(teacher, "make_teacher", lambda *a, **k: calls.append("make_teacher") or make(*a, **k))
    Trainer(bench.spec(paths, "opd", tmp_path / "state", batch=2, length=32), threads=1, progress=False)
    assert calls == [paths["student"], "make_teacher", paths["teacher"]]
