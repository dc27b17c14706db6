"""The trainer's paper path on one GPU, against the cost model: a first check for a lent GPU.

    python scripts/gpu_check.py            # on a CUDA GPU: a Qwen3-8B-shaped model, 4 layers
    python scripts/gpu_check.py --tiny     # the same code on CPU in seconds (CI runs it)

Needs only what a bare GPU machine has (PyTorch, transformers; no vLLM). It builds a model of
Qwen3-8B's shape cut to a few decoder layers, with the real 151,936-token vocabulary (random
weights), hands it to the trainer (geopd.train.loop.Trainer, as `geopd train` would: FSDP2 over a
world of 1 with bf16 parameters and fp32 gradient reduction, activation checkpointing per layer,
micro-batches by token budget, log-probs through lm_head in chunks), and runs OPD updates
(Trainer.train_on: the behaviour log-probs recomputed, the OPD advantage against synthetic teacher
log-probs, the clipped policy loss, AdamW) on synthetic rollouts. It prints, per update, the time,
tokens/s and MFU, and the measured peak GPU memory (max allocated, max reserved) against
geopd.costmodel's prediction for the same shape and batch: the trainer's step (`train_step`) and
its recompute pass (`trainer_state` + `scoring_pass`), the larger of the two, and with the
allocator's slack. Exit status 1 when the loss is not finite or the weights did not move.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from geopd import costmodel as cm  # noqa: E402
from geopd.spec import Engine  # noqa: E402

QWEN3_8B = dict(arch="qwen3", hidden=4096, layers=36, heads=32, kv_heads=8, head_dim=128, intermediate=12288,
                vocab=151936, tied_embeddings=False)
TINY = dict(arch="qwen3", hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=128, vocab=4096,
            tied_embeddings=False)


def build_model(shape: dict, tokenizer):
    from geopd.world.models import init_model, tiny_config

    cfg = tiny_config("qwen3", vocab_size=shape["vocab"], hidden=shape["hidden"], layers=shape["layers"],
                      heads=shape["heads"], kv_heads=shape["kv_heads"], head_dim=shape["head_dim"],
                      intermediate=shape["intermediate"], tie_word_embeddings=shape["tied_embeddings"],
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      max_position=max(4096, 2 * shape.get("seq", 0)))
    return init_model(cfg, seed=0)


class SyntheticTeacher:
    """Teacher log-probs of the sampled tokens, drawn once per call (the engine interface)."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def score(self, ro):
        return -torch.rand(ro.sequences.shape, generator=self.generator) * 3 * ro.response_mask

    def sleep(self):
        pass

    def wake(self):
        pass


def rollouts(samples: int, prompt: int, response: int, vocab: int, seed: int):
    """A batch of `samples` sequences of `prompt` + `response` random tokens (every response whole)."""
    from geopd.engines.rollout import Rollouts

    g = torch.Generator().manual_seed(seed)
    length = prompt + response
    seq = torch.randint(0, vocab, (samples, length), generator=g)
    attn = torch.ones_like(seq)
    rmask = torch.zeros_like(seq)
    rmask[:, prompt:] = 1
    lp = -torch.rand(seq.shape, generator=g) * rmask
    ro = Rollouts(prompt_ids=[seq[i, :prompt].tolist() for i in range(samples)], sequences=seq, attention_mask=attn,
                  response_mask=rmask, response_logprobs=lp, texts=[""] * samples, prompt_index=list(range(samples)),
                  group_size=1, prompt_width=prompt, finished=torch.ones(samples, dtype=torch.bool))
    ro.check()
    return ro


def predicted(shape: cm.Shape, engine: Engine, micro: int, width: int, a: cm.Assumptions = cm.ASSUMPTIONS) -> dict:
    """The cost model's bytes for one process of world 1 (what `geopd plan` adds up per phase)."""
    step = cm.train_step(shape, engine, 1, micro, width=width, entropy=True)
    recompute = cm.trainer_state(shape, 1, grads=False)
    recompute.terms.update(cm.scoring_pass(shape, engine, 1, micro, width=width).terms)
    tensors = max(step.total, recompute.total)
    return {"train step": step.total, "recompute": recompute.total, "tensors": tensors,
            "with allocator slack": tensors * a.allocator_factor}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on CPU, in seconds (CI)")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of the Qwen3-8B shape (default 4)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--response", type=int, default=3584)
    parser.add_argument("--micro-batch-tokens", type=int, default=16384)
    parser.add_argument("--chunk", type=int, default=4096, help="logprob_chunk_tokens")
    parser.add_argument("--updates", type=int, default=3, help="OPD updates (the first warms up)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)

    from geopd.train.loop import Trainer
    from geopd.world.tokenizer import build_tokenizer

    cuda = torch.cuda.is_available() and not args.tiny
    if not args.tiny and not cuda:
        print("gpu_check: no CUDA GPU here; --tiny runs the same code on CPU", file=sys.stderr)
        return 2
    if args.tiny:
        shape_entry = dict(TINY)
        args.samples, args.prompt, args.response = 4, 16, 48
        args.micro_batch_tokens, args.chunk, args.updates = 128, 32, 2
        torch.set_num_threads(2)
    else:
        shape_entry = {**QWEN3_8B, "layers": args.layers}
    shape = cm.Shape.from_entry(shape_entry)
    engine = {"param_dtype": "bfloat16", "reduce_dtype": "float32", "activation_checkpointing": True,
              "micro_batch_tokens": args.micro_batch_tokens, "logprob_chunk_tokens": args.chunk}
    tokenizer = build_tokenizer()
    with tempfile.TemporaryDirectory(prefix="geopd-gpu-check-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        (data / "train.jsonl").write_text("".join(json.dumps({"prompt": f"What is {i}+1?"}) + "\n" for i in range(8)))
        spec = {"run": "gpu-check", "method": "opd", "seed": 0, "init": None, "device": "cuda" if cuda else "cpu",
                "data": {"name": "synthetic", "dir": str(data)}, "steps": 1, "checkpoints": [1],
                "state_dir": str(Path(tmp) / "state"),
                "optim": {"lr": 1e-6, "betas": [0.9, 0.98], "weight_decay": 0.1, "grad_clip": 1.0},
                "rollout": {"prompts_per_step": args.samples, "samples": 1, "temperature": 1.0,
                            "max_new_tokens": args.response, "global_batch_size": args.samples},
                "objective": {"coef": 1.0, "clip_low": 0.2, "clip_high": 0.28}, "engine": engine}
        model = build_model({**shape_entry, "seq": args.prompt + args.response}, tokenizer)
        params = sum(p.numel() for p in model.parameters())
        assert params == shape.params(), (params, shape.params())  # the cost model's shape is the model's
        trainer = Trainer(spec, model=model, tokenizer=tokenizer, progress=False)
        trainer.teacher = SyntheticTeacher(seed=1)
        before = {n: p.detach().float().clone() for n, p in trainer.model.named_parameters()}
        records = [{"prompt": ""}] * args.samples
        rows = []
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for update in range(args.updates):
            ro = rollouts(args.samples, args.prompt, args.response, shape.vocab, seed=update)
            t0 = time.perf_counter()
            out = trainer.train_on(ro, records, seed=update)
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            tokens = args.samples * (args.prompt + args.response)
            context = (args.prompt + args.response) / 2
            # model FLOPs: the recompute pass (1 forward) and the update (forward + backward = 3)
            flops = 4 * tokens * shape.forward_flops(context)
            mfu = flops / seconds / (cm.ASSUMPTIONS.peak_tflops * 1e12) if cuda else None
            rows.append({"update": update, "seconds": seconds, "tokens_per_s": tokens / seconds, "mfu": mfu,
                         "loss": out["loss"], "updates": out["updates"]})
        moved = max(float((p.detach().float() - before[n]).abs().max()) for n, p in trainer.model.named_parameters())
        width = args.prompt + args.response
        micro = cm.largest_micro_batch(Engine.from_dict(engine), "opd", args.samples, 1, width)
        model_bytes = predicted(shape, Engine.from_dict(engine), min(micro, args.samples * width), width)
    figures = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
               "shape": shape_entry, "params": params, "samples": args.samples, "tokens_per_update":
               args.samples * (args.prompt + args.response), "updates": rows, "weights_moved": moved,
               "predicted_gib": {k: v / cm.GiB for k, v in model_bytes.items()}}
    if cuda:
        figures["measured_gib"] = {"max allocated": torch.cuda.max_memory_allocated() / cm.GiB,
                                   "max reserved": torch.cuda.max_memory_reserved() / cm.GiB}
    print(f"gpu_check on {figures['device']} (torch {torch.__version__}): {shape.layers} layers of "
          f"hidden {shape.hidden}, vocabulary {shape.vocab:,}, {params / 1e9:.2f}B parameters; "
          f"{args.samples} x {args.prompt}+{args.response} tokens per update")
    for r in rows:
        mfu = "" if r["mfu"] is None else f", MFU {r['mfu']:.2f}"
        print(f"  update {r['update']}: {r['seconds']:.2f} s, {r['tokens_per_s']:,.0f} tokens/s{mfu}, "
              f"loss {r['loss']:.4g}" + (" (warm-up)" if r["update"] == 0 and len(rows) > 1 else ""))
    predicted_gib = figures["predicted_gib"]
    print(f"  cost model: train step {predicted_gib['train step']:.2f} GiB, recompute {predicted_gib['recompute']:.2f} "
          f"GiB; peak tensors {predicted_gib['tensors']:.2f} GiB, {predicted_gib['with allocator slack']:.2f} with slack")
    if cuda:
        m = figures["measured_gib"]
        print(f"  measured: max allocated {m['max allocated']:.2f} GiB (predicted / measured "
              f"{predicted_gib['tensors'] / m['max allocated']:.2f}), max reserved {m['max reserved']:.2f} GiB "
              f"(with slack / measured {predicted_gib['with allocator slack'] / m['max reserved']:.2f})")
    else:
        print("  measured peak: CUDA only (this is the --tiny run on CPU)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    ok = all(r["loss"] == r["loss"] and abs(r["loss"]) != float("inf") for r in rows) and moved > 0
    if not ok:
        print("gpu_check: FAILED (non-finite loss or unchanged weights)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
