#!/usr/bin/env python
"""The memory model of `geopd plan` (geopd.costmodel) against measured peaks, on CPU.

Trainer (default): one SFT step of the project's trainer (geopd.train.loop.Trainer.sft_step:
forward, log-probs, backward, AdamW) on tiny Qwen3 models, measured by exact tensor
accounting: torch's MemTracker (a TorchDispatchMode that sees every tensor created, with
parameters, gradients, optimizer state, activations and temporaries told apart) over the
second step (the first allocates Adam's moments). Cases cover the terms of the model: fp32
without checkpointing (today's trainer), a large vocabulary (the full-logits term), per-layer
activation checkpointing (HF gradient checkpointing, as the FSDP2 trainer would wrap layers),
and bf16 compute with fp32 masters (FSDP2 MixedPrecisionPolicy on a 1-process gloo group).
Predicted = geopd.costmodel.trainer_peak (tensor bytes; no allocator slack, no CUDA context).

Diagnostics (--diagnose): peak RSS of `geopd diagnose --workers 1` on one random bf16 matrix
pair of several shapes, minus the RSS of the same command on a 64 x 32 matrix; printed per
matrix element, the figure behind Assumptions.svd_worker_bytes_per_element.

    .venv/bin/python scripts/bench_memory_model.py            # all trainer cases
    .venv/bin/python scripts/bench_memory_model.py --cases fp32 ac --json
    .venv/bin/python scripts/bench_memory_model.py --diagnose
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TINY = dict(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=256)
DEEP = dict(hidden=128, layers=6, heads=4, kv_heads=2, head_dim=32, intermediate=512)
MID = dict(hidden=96, layers=3, heads=4, kv_heads=2, head_dim=24, intermediate=384)
# name: model size, vocabulary, rows per step, tokens per row, the run's `engine` block
CASES = {
    "fp32": (TINY, 102, 32, 128, {}),
    "vocab": (TINY, 8192, 16, 128, {}),
    "deep": (DEEP, 1024, 16, 256, {}),
    "ac": (DEEP, 1024, 16, 256, {"activation_checkpointing": True}),
    "bf16": (MID, 2048, 16, 128, {"activation_checkpointing": True, "param_dtype": "bfloat16"}),
    # log-probs through lm_head in chunks: the trainer of issue 15 item 1 (today's computes the
    # whole micro-batch's logits, and measures ~2.4x this prediction)
    "chunked": (TINY, 8192, 16, 128, {"logprob_chunk_tokens": 64}),
}


def _records(n: int, tokens: int) -> list[dict]:
    """Demonstrations whose prompt + response + EOS tokenize to exactly `tokens` ids
    (the miniature tokenizer is one token per character)."""
    from geopd.world.tokenizer import build_tokenizer

    tok = build_tokenizer()
    prompt_ids = len(tok(tok.apply_chat_template([{"role": "user", "content": "1+1"}], add_generation_prompt=True,
                                                 tokenize=False), add_special_tokens=False)["input_ids"])
    return [{"prompt": "1+1", "response": "7" * (tokens - prompt_ids - 1)} for _ in range(n)]


def measure_trainer(case: str) -> dict:
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker

    from geopd import costmodel as cm
    from geopd.train.loop import Trainer
    from geopd.world.models import init_model, tiny_config
    from geopd.world.tokenizer import build_tokenizer

    size, vocab, rows, tokens, block = CASES[case]
    engine = cm.Engine.from_settings(block)
    ac, dtype = engine.activation_checkpointing, engine.param_dtype
    torch.set_num_threads(1)
    tok = build_tokenizer()
    config = tiny_config("qwen3", vocab_size=vocab, max_position=tokens + 8, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, **size)
    model = init_model(config, 0)
    if ac:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if dtype != "float32":
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if not dist.is_initialized():
            dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)
        mesh = init_device_mesh("cpu", (1,))
        mp = MixedPrecisionPolicy(param_dtype=getattr(torch, dtype), reduce_dtype=torch.float32)
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        with open(data / "train.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in _records(4 * rows, tokens))
        spec = {"run": f"bench-{case}", "method": "sft", "seed": 0, "device": "cpu", "init": "(in memory)",
                "data": {"name": "bench", "dir": str(data), "kind": "synthetic-demos"}, "steps": 10,
                "checkpoints": [10], "state_dir": str(Path(tmp) / "state"), "batch_size": rows,
                "max_length": tokens, "optim": {"lr": 1e-4, "weight_decay": 0.1}, "engine": block}
        trainer = Trainer(spec, model=model, tokenizer=tok, threads=1, progress=False)
        trainer.sft_step()  # allocates Adam's moments
        tracker = MemTracker()
        tracker.track_external(trainer.model, trainer.optimizer)
        forward = trainer.forward_logits

        def forward_logits(*args, **kwargs):
            # MemTracker's per-module statistics allow one forward per iteration; a step has one
            # per micro-batch. Clearing them keeps its (global) peak.
            tracker.reset_mod_stats()
            return forward(*args, **kwargs)

        trainer.forward_logits = forward_logits
        with tracker:
            trainer.sft_step()
        peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    measured = {str(k).split(".")[-1].lower(): int(v) for k, v in peak.items()}
    shape = cm.Shape.from_entry({**size, "vocab": vocab})
    # a token budget, or today's 4 length buckets per SFT step
    micro = max(engine.micro_batch_tokens, tokens) if engine.micro_batch_tokens else -(-rows // 4) * tokens
    predicted = cm.trainer_peak(shape, engine, 1, micro)
    return {"case": case, "params": shape.params(), "vocab": vocab, "micro_batch_tokens": micro,
            "activation_checkpointing": ac, "param_dtype": dtype, "engine": block, "measured": measured,
            "measured_total": measured["total"], "predicted_total": int(predicted.total),
            "predicted": {k: int(v) for k, v in predicted.terms.items()},
            "ratio": predicted.total / measured["total"]}


def _diagnose_rss(m: int, n: int, tmp: Path) -> int:
    """Peak RSS in bytes of `geopd diagnose --workers 1` on one m x n bf16 matrix pair."""
    import resource

    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(m, n, generator=g)
    for name, w in (("a", w0), ("b", w0 + 0.01 * torch.randn(m, n, generator=g))):
        (tmp / f"{m}x{n}" / name).mkdir(parents=True, exist_ok=True)
        save_file({"model.layers.0.mlp.gate_proj.weight": w.to(torch.bfloat16)}, tmp / f"{m}x{n}" / name / "model.safetensors")
    code = ("import resource, sys; from geopd.cli import main; rc = main(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")
    d = tmp / f"{m}x{n}"
    proc = subprocess.run([sys.executable, "-c", code, "diagnose", "--base", str(d / "a"), "--tuned", str(d / "b"),
                           "--out", str(d / "o.csv"), "--matrices", "all", "--workers", "1"],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return int(proc.stderr.strip().splitlines()[-1]) * 1024  # ru_maxrss is in KiB on Linux


def measure_diagnose(shapes: list[tuple[int, int]]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        base = _diagnose_rss(64, 32, Path(tmp))
        out = [{"shape": [64, 32], "rss_bytes": base}]
        for m, n in shapes:
            rss = _diagnose_rss(m, n, Path(tmp))
            out.append({"shape": [m, n], "rss_bytes": rss, "bytes_per_element": (rss - base) / (m * n)})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--diagnose", action="store_true", help="the diagnostics worker instead of the trainer")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.diagnose:
        rows = measure_diagnose([(2048, 512), (1024, 1024), (3072, 1024), (4096, 1024), (1024, 4096), (2048, 2048)])
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(f"{'shape':>12}{'peak RSS MiB':>14}{'bytes/element':>15}")
            for r in rows:
                print(f"{'x'.join(map(str, r['shape'])):>12}{r['rss_bytes'] / 2**20:>14.1f}"
                      f"{r.get('bytes_per_element', float('nan')):>15.1f}")
        return 0
    rows = [measure_trainer(c) for c in args.cases]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'case':<8}{'params':>9}{'vocab':>7}{'tokens':>8}{'AC':>4}{'dtype':>10}"
          f"{'measured MiB':>14}{'predicted MiB':>15}{'pred/meas':>11}")
    for r in rows:
        print(f"{r['case']:<8}{r['params']:>9}{r['vocab']:>7}{r['micro_batch_tokens']:>8}"
              f"{'y' if r['activation_checkpointing'] else 'n':>4}{r['param_dtype']:>10}"
              f"{r['measured_total'] / 2**20:>14.2f}{r['predicted_total'] / 2**20:>15.2f}{r['ratio']:>11.3f}")
    for r in rows:
        print(f"\n{r['case']}: measured " + ", ".join(f"{k} {v / 2**20:.2f}" for k, v in r["measured"].items() if v)
              + " MiB\n" + " " * len(r["case"]) + "  predicted " + ", ".join(f"{k} {v / 2**20:.2f}"
                                                                          for k, v in r["predicted"].items()) + " MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
