#!/usr/bin/env python
"""Peak memory of one training step, measured against the formula of geopd.train.memory.

For each size (vocabulary x hidden x layers) it builds a miniature world in a temp folder
(the project's own tokenizer, random-weight Qwen3 student and teacher with that vocabulary,
addition prompts with long responses), then, each in its own subprocess, constructs the real
Trainer and runs one SFT step and one OPD step (rollouts, teacher scoring, updates). The
step's peak is VmHWM after resetting it (/proc/self/clear_refs) right before the step, minus
the resident set at that moment; the formula is step_bytes (everything but the master weights,
which are already resident) plus, for OPD, generation_bytes. "full logits" is what one
[B, T, V] fp32 tensor of the step's batch alone would take.

    .venv/bin/python scripts/bench_train_memory.py
    .venv/bin/python scripts/bench_train_memory.py --vocab 65536 --hidden 32 --layers 2 --json

Importable: tests/test_train_memory.py builds its worlds and specs with `world` and `spec`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

MiB = 2**20
# What torch allocates once, at the first step, whatever the model (kernels, thread pools):
# measured 13-16 MiB here with a 512-token vocabulary; the bound allows 24.
FIRST_STEP_RUNTIME = 24 * MiB


def world(root: Path, *, vocab: int, hidden: int, layers: int, response_chars: int, records: int = 64) -> dict:
    """Student and teacher checkpoints and a data folder under `root`; returns their paths."""
    import torch

    from geopd.train.checkpoint import save_model
    from geopd.world.models import init_model, tiny_config
    from geopd.world.tasks import math_problems
    from geopd.world.tokenizer import build_tokenizer

    tok = build_tokenizer()
    if vocab < len(tok):
        raise SystemExit(f"--vocab {vocab} is smaller than the tokenizer's {len(tok)} tokens")
    # Rows beyond the tokenizer's are never data, but every logit row is computed over them,
    # as with a hub model's padded vocabulary.
    cfg = tiny_config("qwen3", vocab_size=vocab, hidden=hidden, layers=layers, heads=2, kv_heads=1,
                      intermediate=2 * hidden, max_position=512, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id)
    paths = {"student": root / "student", "teacher": root / "teacher", "data": root / "data"}
    for name, seed in (("student", 0), ("teacher", 1)):
        save_model(init_model(cfg, seed), tok, paths[name], dtype=torch.float32)
    paths["data"].mkdir(parents=True, exist_ok=True)
    with open(paths["data"] / "train.jsonl", "w") as fh:
        for i, p in enumerate(math_problems(records, 0, "train")):
            response = (f"{p['answer']} " * response_chars)[:response_chars]
            fh.write(json.dumps({**p, "response": response}) + "\n")
    return {k: str(v) for k, v in paths.items()}


def spec(paths: dict, method: str, state_dir: Path, *, batch: int, length: int, engine: dict | None = None,
         prompts: int = 4, samples: int = 2, max_new_tokens: int = 32) -> dict:
    """A run spec for one `method` step on the world at `paths`."""
    s = {"run": f"bench-{method}", "family": "bench", "method": method, "seed": 0, "device": "cpu",
         "init": paths["student"], "start_step": 0, "teacher": paths["teacher"] if method == "opd" else None,
         "data": {"name": "bench", "dir": paths["data"], "kind": "synthetic-math"}, "steps": 1,
         "checkpoints": [1], "state_dir": str(state_dir),
         "optim": {"lr": 1e-4, "schedule": "constant", "weight_decay": 0.0, "betas": [0.9, 0.98]}}
    if method == "sft":
        s.update(batch_size=batch, max_length=length)
    else:
        s.update(rollout={"prompts_per_step": prompts, "samples": samples, "temperature": 1.0, "top_p": 1.0,
                          "max_new_tokens": max_new_tokens, "global_batch_size": prompts * samples},
                 objective={"coef": 1.0, "clip_low": 0.2, "clip_high": 0.28})
    if engine:
        s["engine"] = engine
    return s


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def measure(run_spec: dict) -> dict:
    """In this process: build the Trainer, then one step's peak bytes above the resident set."""
    import torch

    from geopd.train.loop import Trainer

    torch.set_num_threads(1)
    trainer = Trainer(run_spec, threads=1, progress=False)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = _status_kib("VmRSS")
    row = trainer.sft_step() if run_spec["method"] == "sft" else trainer.rl_step()
    return {"measured": (_status_kib("VmHWM") - base) * 1024, "row": row}


def formula(run_spec: dict) -> dict:
    """step_bytes (+ generation_bytes for OPD) for this spec, from the student's config."""
    from transformers import AutoConfig

    from geopd.train.loop import EngineSettings
    from geopd.train.memory import Shape, generation_bytes, scoring_bytes, step_bytes

    shape = Shape.of(AutoConfig.from_pretrained(run_spec["init"]))
    engine = EngineSettings.from_spec(run_spec.get("engine"))
    b = engine.param_dtype.itemsize
    if run_spec["method"] == "sft":
        rows, width = run_spec["batch_size"], run_spec["max_length"]
        scored = rows * width
    else:
        r = run_spec["rollout"]
        rows, width = r["prompts_per_step"] * r["samples"], 64 + r["max_new_tokens"]  # prompts < 64 tokens
        scored = rows * r["max_new_tokens"]  # only response tokens go through lm_head
    tokens = max(min(engine.micro_batch_tokens or rows * width, rows * width), width)
    parts = step_bytes(shape, micro_batch_tokens=tokens, width=width, scored_tokens=scored,
                       chunk_tokens=engine.logprob_chunk_tokens,
                       param_bytes=b, sharded=engine.mixed_precision, activation_checkpointing=engine.activation_checkpointing)
    step = parts["total"] - parts["master"]  # the master weights are resident before the step
    if run_spec["method"] != "sft":
        # Phases one after the other: sampling, then scoring the whole batch (HFRollout and
        # HFTeacher, default chunks), then the updates.
        step = max(step, generation_bytes(shape, rows=rows, length=width),
                   scoring_bytes(shape, tokens=rows * width, scored_tokens=scored))
    return {"bound": step + FIRST_STEP_RUNTIME, "parts": parts, "full_logits": rows * width * shape.vocab * 4}


def run_one(run_spec: dict) -> dict:
    """measure() in a fresh subprocess (a clean peak), formula() here."""
    code = ("import json, sys; sys.path.insert(0, %r); import bench_train_memory as b; "
            "print('RESULT' + json.dumps(b.measure(json.loads(sys.argv[1]))))" % str(Path(__file__).parent))
    # Allocations above 64 KiB straight from mmap: freed tensors leave the resident set at once,
    # so the peak is the step's live memory, not glibc's heap keeping what it once held.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(run_spec)], capture_output=True, text=True,
                          env=env, timeout=900)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    return {**json.loads(line[len("RESULT"):]), **formula(run_spec)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, nargs="+", default=[16384, 65536])
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="SFT sequences per step")
    ap.add_argument("--length", type=int, default=128, help="SFT max_length")
    ap.add_argument("--micro-batch-tokens", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=64, help="logprob_chunk_tokens")
    ap.add_argument("--bf16", action="store_true", help="param_dtype bfloat16 (FSDP2 on one process)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    engine = {"micro_batch_tokens": args.micro_batch_tokens, "logprob_chunk_tokens": args.chunk}
    if args.bf16:
        engine.update(param_dtype="bfloat16", reduce_dtype="float32")
    rows = []
    with tempfile.TemporaryDirectory(prefix="geopd-bench-mem-") as tmp:
        for vocab in args.vocab:
            root = Path(tmp) / f"v{vocab}"
            paths = world(root, vocab=vocab, hidden=args.hidden, layers=args.layers,
                          response_chars=args.length)
            for method in ("sft", "opd"):
                s = spec(paths, method, root / f"state-{method}", batch=args.batch, length=args.length,
                         engine=engine)
                res = run_one(s)
                rows.append({"vocab": vocab, "method": method, **{k: res[k] for k in ("measured", "bound", "full_logits")},
                             "parts": res["parts"]})
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"hidden {args.hidden}, layers {args.layers}, SFT {args.batch} x {args.length} tokens, OPD 4 x 2 samples; "
          f"engine {engine}")
    print(f"{'vocab':>7} {'method':>6} {'measured MiB':>13} {'formula MiB':>12} {'[B,T,V] fp32 MiB':>17}")
    for r in rows:
        print(f"{r['vocab']:>7} {r['method']:>6} {r['measured'] / MiB:>13.1f} {r['bound'] / MiB:>12.1f} "
              f"{r['full_logits'] / MiB:>17.1f}")


if __name__ == "__main__":
    main()
