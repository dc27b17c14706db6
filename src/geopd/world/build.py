"""The miniature models (`geopd make-model`), made by the same trainer as every run.

stage "pretrain": a fresh tiny Qwen3 (or Qwen3-MoE) model and the local tokenizer, trained as a
language model on the world corpus (loss on every token);
stage "finetune": SFT of an existing model on clean demonstrations (how teachers are made).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from geopd.io.atomic import publish_dir
from geopd.train.loop import train
from geopd.world.models import init_model, tiny_config
from geopd.world.tokenizer import build_tokenizer


def trainer_spec(spec: dict, out: Path) -> dict:
    s = spec["settings"]
    optim = {k: s[k] for k in ("lr", "warmup", "schedule", "min_lr_ratio", "weight_decay", "betas") if k in s}
    optim["grad_clip"] = 1.0
    return {
        "run": spec["name"],
        "method": "sft",
        "loss_on": "all" if spec["stage"] == "pretrain" else "response",
        "seed": spec["seed"],
        "device": spec.get("device", "cpu"),
        "init": spec.get("from"),
        "data": {"name": Path(spec["data_dir"]).name, "dir": spec["data_dir"]},
        "steps": s["steps"],
        "start_step": 0,
        "checkpoints": [s["steps"]],
        "batch_size": s["batch_size"],
        "max_length": s.get("max_length", 64),
        "optim": optim,
        "state_dir": str(out.parent / f".{out.name}.state"),
    }


def make_model(spec: dict, out: str | Path, threads: int | None = None) -> None:
    out = Path(out)
    tspec = trainer_spec(spec, out)
    model = tokenizer = None
    if spec["stage"] == "pretrain":
        tokenizer = build_tokenizer()
        size = dict(spec["size"])
        arch = size.pop("arch")
        config = tiny_config(arch, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, **size)
        torch.manual_seed(spec["seed"])
        model = init_model(config, seed=spec["seed"])
    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    train(tspec, staging, staging.with_suffix(".metrics.jsonl"), threads=threads, model=model, tokenizer=tokenizer)
    final = staging / f"step-{tspec['steps']}"
    shutil.move(str(staging.with_suffix(".metrics.jsonl")), final / "train_metrics.jsonl")
    publish_dir(final, out)
    shutil.rmtree(staging, ignore_errors=True)
