#!/usr/bin/env python
"""The trainer's memory model (geopd.costmodel: train_step, scoring_pass) against measured peaks, on CPU.

Tensors (default): one SFT step of the project's Trainer (forward, chunked log-probs through
lm_head, backward, AdamW) on tiny Qwen3 models, measured by exact tensor accounting: torch's
MemTracker (a TorchDispatchMode that sees every tensor created, parameters, gradients, optimizer
state, activations and temporaries told apart) over the second step (the first allocates Adam's
moments). The cases cover the terms of the model: fp32 on a plain module (the miniature), a
large vocabulary, six layers, per-layer activation checkpointing, lm_head in small chunks under
a token budget, and bf16 compute over fp32 masters (FSDP2 MixedPrecisionPolicy on a one-process
group, with and without checkpointing). Predicted: costmodel.train_step for the step's largest
micro-batch (tensor bytes; no allocator slack, no CUDA context).

Steps (--steps): one SFT step and one OPD step (HF rollouts, HF teacher scoring, updates), each
in a fresh process on a world with a large vocabulary; the step's peak is VmHWM after resetting
it (/proc/self/clear_refs) right before the step, minus the resident set at that moment, against
train_step (less the master weights, resident before the step) and, for OPD, the larger of the
rollout's KV cache and the teacher's scoring pass, plus what torch allocates once at its first
step. "[B,T,V] fp32" is what one full logits tensor of the step's batch alone would take.

Diagnostics (--diagnose): peak RSS of `geopd diagnose --workers 1` on one random bf16 matrix
pair of several shapes, minus the RSS of the same command on a 64 x 32 matrix; printed per
matrix element, the figure behind Assumptions.svd_worker_bytes_per_element.

    .venv/bin/python scripts/bench_memory_model.py            # all tensor cases
    .venv/bin/python scripts/bench_memory_model.py --cases fp32 ac --json
    .venv/bin/python scripts/bench_memory_model.py --steps --vocab 16384 65536
    .venv/bin/python scripts/bench_memory_model.py --diagnose

Importable: tests/test_train_memory.py builds its worlds and specs with `world` and `spec` and
measures with `run_step`; tests/test_plan.py runs the tensor cases.
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
TINY = dict(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=256)
DEEP = dict(hidden=128, layers=6, heads=4, kv_heads=2, head_dim=32, intermediate=512)
MID = dict(hidden=96, layers=3, heads=4, kv_heads=2, head_dim=24, intermediate=384)
# name: model size, vocabulary, rows per step, tokens per row, the run's `engine` block
CASES = {
    "fp32": (TINY, 102, 32, 128, {}),
    "vocab": (TINY, 8192, 16, 128, {}),
    "deep": (DEEP, 1024, 16, 256, {}),
    "ac": (DEEP, 1024, 16, 256, {"activation_checkpointing": True}),
    "chunked": (TINY, 8192, 16, 128, {"micro_batch_tokens": 512, "logprob_chunk_tokens": 64}),
    "bf16": (MID, 2048, 16, 128, {"param_dtype": "bfloat16"}),
    "bf16-ac": (MID, 2048, 16, 128, {"activation_checkpointing": True, "param_dtype": "bfloat16",
                                     "micro_batch_tokens": 1024, "logprob_chunk_tokens": 128}),
}
# What torch allocates once, at the first step, whatever the model (kernels, thread pools):
# measured 13-16 MiB here with a 512-token vocabulary; the bound allows 24.
FIRST_STEP_RUNTIME = 24 * MiB


# ---- exact tensor accounting of an SFT step ------------------------------------------------------

def _prompt_tokens(tok) -> int:
    return len(tok(tok.apply_chat_template([{"role": "user", "content": "1+1"}], add_generation_prompt=True,
                                           tokenize=False), add_special_tokens=False)["input_ids"])


def _records(tok, n: int, tokens: int) -> list[dict]:
    """Demonstrations whose prompt + response + EOS tokenize to exactly `tokens` ids
    (the miniature tokenizer is one token per character)."""
    return [{"prompt": "1+1", "response": "7" * (tokens - _prompt_tokens(tok) - 1)} for _ in range(n)]


def largest_micro_batch(engine, rows: int, tokens: int) -> int:
    """Padded tokens of the largest micro-batch of an SFT step of `rows` equal rows of `tokens`
    (geopd.train.loop: a token budget, else SFT_BUCKETS length buckets)."""
    from geopd.train.loop import SFT_BUCKETS

    if engine.micro_batch_tokens:
        return max(1, engine.micro_batch_tokens // tokens) * tokens
    return -(-rows // SFT_BUCKETS) * tokens


def measure_tensors(case: str) -> dict:
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker

    from geopd import costmodel as cm
    from geopd.train.loop import Trainer
    from geopd.world.models import init_model, tiny_config
    from geopd.world.tokenizer import build_tokenizer

    size, vocab, rows, tokens, block = CASES[case]
    engine = cm.Engine.from_settings(block)
    torch.set_num_threads(1)
    tok = build_tokenizer()
    config = tiny_config("qwen3", vocab_size=vocab, max_position=tokens + 8, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, **size)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        with open(data / "train.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in _records(tok, 4 * rows, tokens))
        spec = {"run": f"bench-{case}", "method": "sft", "seed": 0, "device": "cpu", "init": "(in memory)",
                "data": {"name": "bench", "dir": str(data), "kind": "synthetic-demos"}, "steps": 10,
                "checkpoints": [10], "state_dir": str(Path(tmp) / "state"), "batch_size": rows,
                "max_length": tokens, "optim": {"lr": 1e-4, "weight_decay": 0.1}, "engine": block}
        trainer = Trainer(spec, model=init_model(config, 0), tokenizer=tok, threads=1, progress=False)
        trainer.sft_step()  # allocates Adam's moments
        tracker = MemTracker()
        tracker.track_external(trainer.model, trainer.optimizer)
        token_stats = trainer._token_stats

        def per_micro_batch(*args, **kwargs):
            # MemTracker's per-module statistics allow one forward per iteration; a step has one
            # per micro-batch. Clearing them keeps its (global) peak.
            tracker.reset_mod_stats()
            return token_stats(*args, **kwargs)

        trainer._token_stats = per_micro_batch
        with tracker:
            trainer.sft_step()
        peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    measured = {str(k).split(".")[-1].lower(): int(v) for k, v in peak.items()}
    shape = cm.Shape.from_hf_config(config.to_dict())
    micro = largest_micro_batch(engine, rows, tokens)
    scored = micro // tokens * (tokens - _prompt_tokens(tok))  # loss on the response (and EOS)
    predicted = cm.train_step(shape, engine, 1, micro, width=tokens, scored=scored, entropy=False)
    return {"case": case, "params": shape.params(), "vocab": vocab, "micro_batch_tokens": micro,
            "activation_checkpointing": engine.activation_checkpointing, "param_dtype": engine.param_dtype,
            "engine": block, "measured": measured, "measured_total": measured["total"],
            "predicted_total": int(predicted.total), "predicted": {k: int(v) for k, v in predicted.terms.items()},
            "ratio": predicted.total / measured["total"]}


# ---- fresh-process peaks of SFT and OPD steps -------------------------------------------------------

def world(root: Path, *, vocab: int, hidden: int, layers: int, response_chars: int, records: int = 64) -> dict:
    """Student and teacher checkpoints and a data folder under `root`; returns their paths."""
    import torch

    from geopd.engines.models import save_model
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


def measure_step(run_spec: dict) -> dict:
    """In this process: build the Trainer, then one step's peak bytes above the resident set."""
    import torch

    from geopd.train.loop import Trainer

    torch.set_num_threads(1)
    trainer = Trainer(run_spec, threads=1, progress=False)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = _status_kib("VmRSS")
    row = trainer.sft_step() if run_spec["method"] == "sft" else trainer.rl_step()
    return {"measured": (_status_kib("VmHWM") - base) * 1024, "row": row}


def step_bound(run_spec: dict) -> dict:
    """The cost model's bytes for one step of `run_spec` beyond what is resident before it."""
    from geopd import costmodel as cm

    shape = cm.Shape.from_hf_config(json.loads((Path(run_spec["init"]) / "config.json").read_text()))
    engine = cm.Engine.from_settings(run_spec.get("engine"))
    if run_spec["method"] == "sft":
        rows, width = run_spec["batch_size"], run_spec["max_length"]
        scored = rows * width
    else:
        r = run_spec["rollout"]
        rows, width = r["prompts_per_step"] * r["samples"], 64 + r["max_new_tokens"]  # prompts < 64 tokens
        scored = rows * r["max_new_tokens"]  # only response tokens go through lm_head
    tokens = max(min(engine.micro_batch_tokens or rows * width, rows * width), width)
    parts = cm.train_step(shape, engine, 1, tokens, width=width, scored=scored, entropy=run_spec["method"] != "sft")
    step = parts.total - parts.terms["fp32 master weights (sharded)"]  # resident before the step
    if run_spec["method"] != "sft":
        # One phase after the other: sampling (HFRollout, fp32), then the HF teacher scoring the
        # whole batch in one micro-batch with default chunks, then the updates.
        teacher = cm.scoring_pass(shape, cm.Engine(), 1, rows * width, width=width, scored=scored)
        step = max(step, cm.hf_generation_bytes(shape, rows, width, 4), teacher.total)
    return {"bound": int(step) + FIRST_STEP_RUNTIME, "parts": {k: int(v) for k, v in parts.terms.items()},
            "full_logits": rows * width * shape.vocab * 4}


def run_step(run_spec: dict) -> dict:
    """measure_step() in a fresh subprocess (a clean peak), step_bound() here."""
    code = ("import json, sys; sys.path.insert(0, %r); import bench_memory_model as b; "
            "print('RESULT' + json.dumps(b.measure_step(json.loads(sys.argv[1]))))" % str(Path(__file__).parent))
    # Allocations above 64 KiB straight from mmap: freed tensors leave the resident set at once,
    # so the peak is the step's live memory, not glibc's heap keeping what it once held.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(run_spec)], capture_output=True, text=True,
                          env=env, timeout=900)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    return {**json.loads(line[len("RESULT"):]), **step_bound(run_spec)}


def measure_steps(args) -> list[dict]:
    engine = {"micro_batch_tokens": args.micro_batch_tokens, "logprob_chunk_tokens": args.chunk}
    if args.bf16:
        engine.update(param_dtype="bfloat16", reduce_dtype="float32")
    rows = []
    with tempfile.TemporaryDirectory(prefix="geopd-bench-mem-") as tmp:
        for vocab in args.vocab:
            root = Path(tmp) / f"v{vocab}"
            paths = world(root, vocab=vocab, hidden=args.hidden, layers=args.layers, response_chars=args.length)
            for method in ("sft", "opd"):
                res = run_step(spec(paths, method, root / f"state-{method}", batch=args.batch, length=args.length,
                                    engine=engine))
                rows.append({"vocab": vocab, "method": method, "engine": engine,
                             **{k: res[k] for k in ("measured", "bound", "full_logits", "parts")}})
    return rows


# ---- diagnostics workers -------------------------------------------------------------------------

def _diagnose_rss(m: int, n: int, tmp: Path) -> int:
    """Peak RSS in bytes of `geopd diagnose --workers 1` on one m x n bf16 matrix pair."""
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


# ---- the command ---------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--steps", action="store_true", help="fresh-process peaks of an SFT and an OPD step")
    mode.add_argument("--diagnose", action="store_true", help="the diagnostics worker instead of the trainer")
    parser.add_argument("--cases", nargs="*", choices=sorted(CASES), default=list(CASES), help="tensor cases")
    steps = parser.add_argument_group("--steps")
    steps.add_argument("--vocab", type=int, nargs="+", default=[16384, 65536])
    steps.add_argument("--hidden", type=int, default=32)
    steps.add_argument("--layers", type=int, default=2)
    steps.add_argument("--batch", type=int, default=16, help="SFT sequences per step")
    steps.add_argument("--length", type=int, default=128, help="SFT max_length")
    steps.add_argument("--micro-batch-tokens", type=int, default=512)
    steps.add_argument("--chunk", type=int, default=64, help="logprob_chunk_tokens")
    steps.add_argument("--bf16", action="store_true", help="param_dtype bfloat16 (FSDP2 on one process)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.diagnose:
        rows = measure_diagnose([(2048, 512), (1024, 1024), (3072, 1024), (4096, 1024), (1024, 4096), (2048, 2048)])
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"{'shape':>12}{'peak RSS MiB':>14}{'bytes/element':>15}")
        for r in rows:
            print(f"{'x'.join(map(str, r['shape'])):>12}{r['rss_bytes'] / MiB:>14.1f}"
                  f"{r.get('bytes_per_element', float('nan')):>15.1f}")
        return 0
    if args.steps:
        rows = measure_steps(args)
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        print(f"hidden {args.hidden}, layers {args.layers}, SFT {args.batch} x {args.length} tokens, OPD 4 x 2 "
              f"samples; engine {rows[0]['engine']}")
        print(f"{'vocab':>7} {'method':>6} {'measured MiB':>13} {'model MiB':>10} {'[B,T,V] fp32 MiB':>17}")
        for r in rows:
            print(f"{r['vocab']:>7} {r['method']:>6} {r['measured'] / MiB:>13.1f} {r['bound'] / MiB:>10.1f} "
                  f"{r['full_logits'] / MiB:>17.1f}")
        return 0
    rows = [measure_tensors(c) for c in args.cases]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'case':<8}{'params':>9}{'vocab':>7}{'tokens':>8}{'AC':>4}{'dtype':>10}"
          f"{'measured MiB':>14}{'predicted MiB':>15}{'pred/meas':>11}")
    for r in rows:
        print(f"{r['case']:<8}{r['params']:>9}{r['vocab']:>7}{r['micro_batch_tokens']:>8}"
              f"{'y' if r['activation_checkpointing'] else 'n':>4}{r['param_dtype']:>10}"
              f"{r['measured_total'] / MiB:>14.2f}{r['predicted_total'] / MiB:>15.2f}{r['ratio']:>11.3f}")
    for r in rows:
        print(f"\n{r['case']}: measured " + ", ".join(f"{k} {v / MiB:.2f}" for k, v in r["measured"].items() if v)
              + " MiB\n" + " " * len(r["case"]) + "  predicted " + ", ".join(f"{k} {v / MiB:.2f}"
                                                                          for k, v in r["predicted"].items()) + " MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
