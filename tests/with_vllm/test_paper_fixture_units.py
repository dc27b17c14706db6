"""Defects the paper grid on the fixture exposed, each on its own (issue 14): the paper path runs
in this venv's versions (vLLM 0.32 pins transformers < 5.20, as on the GPU nodes), and evaluation
of a student made from a Qwen3-*-Base model stops where its turns end."""
import json

import pytest
import torch

BASE = "Qwen/Qwen3-8B-Base"   # untied, eos <|endoftext|>; its chat template ends turns with <|im_end|>


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from geopd.fixture import write_repo

    return write_repo(tmp_path_factory.mktemp("mirror"), "models", BASE)


def test_activation_checkpointing_with_the_gpu_envs_transformers(base_dir):
    """shard_model enables activation checkpointing under transformers 5.19 (envs/vllm-base.txt, the
    GPU nodes' pin), where the method still has its old name, and a bf16 FSDP2 step runs."""
    from transformers import AutoModelForCausalLM

    from geopd.train.loop import Dist, EngineSettings, shard_model

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    engine = EngineSettings(param_dtype=torch.bfloat16, activation_checkpointing=True)
    model = shard_model(model, Dist.setup("cpu", group=True), engine)
    assert model.is_gradient_checkpointing
    ids = torch.randint(0, 1000, (2, 12))
    model(input_ids=ids).logits.float().sum().backward()
    assert all(p.grad is not None for p in model.parameters())
