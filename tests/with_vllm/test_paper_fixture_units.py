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

    from geopd.spec import Engine
    from geopd.train.distributed import Dist, shard_model

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    engine = Engine(param_dtype="bfloat16", activation_checkpointing=True)
    model = shard_model(model, Dist.setup("cpu", group=True), engine)
    assert model.is_gradient_checkpointing
    ids = torch.randint(0, 1000, (2, 12))
    model(input_ids=ids).logits.float().sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def _chain_model(base_dir, out, tokenizer, prompt_last: int, chain: list[int]):
    """The base model rewired so that greedy decoding after `prompt_last` emits `chain`, then
    repeats its last token: every layer's output projections are zero (the residual stream is
    the input embedding), and lm_head row t points along the embedding of the token before t."""
    import shutil

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.get_input_embeddings().weight
        unit = lambda t: emb[t] / emb[t].norm()  # noqa: E731
        head = model.lm_head.weight
        head.zero_()
        previous = [prompt_last] + chain[:-1]
        for prev, tok in zip(previous, chain):
            head[tok] += 10 * unit(prev)
        head[chain[-1]] += 10 * unit(chain[-1])  # and then itself, forever
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "generation_config.json"):
        shutil.copy(base_dir / name, out / name)
    return out


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_evaluation_stops_at_the_end_of_turn_of_a_base_derived_student(base_dir, tmp_path, backend):
    """A Base-derived student answers "7<|im_end|>xxxx...": its tokenizer's eos is <|endoftext|>,
    yet its response must end at <|im_end|>, as the trainer's rollouts do (eos_ids), through
    lm-eval on HF and on vLLM alike."""
    from geopd.evaluate.run import evaluate
    from geopd.engines.models import load_tokenizer
    from geopd.engines.chat import end_of_turn_id, format_prompt
    from geopd.engines.rollout import eos_ids

    tok = load_tokenizer(base_dir)
    im_end = end_of_turn_id(tok)
    assert tok.eos_token == "<|endoftext|>" and im_end == tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in eos_ids(tok)
    question = "What is 3+4?"
    prompt_last = tok(format_prompt(tok, question), add_special_tokens=False)["input_ids"][-1]
    (seven,), (x,) = (tok(t, add_special_tokens=False)["input_ids"] for t in ("7", "x"))
    model = _chain_model(base_dir, tmp_path / "student", tok, prompt_last, [seven, im_end, x])
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.jsonl").write_text(json.dumps({"id": "p0", "prompt": question, "answer": "7"}) + "\n")
    spec = {"name": "stop", "kind": "math", "data_dir": str(data), "samples": 1, "temperature": 0.0,
            "max_new_tokens": 8, "backend": backend, "dtype": "float32", "kv_cache_gib": 0.0625,
            "max_model_len": 256}
    evaluate(spec, str(model), seed=0, out=tmp_path / "r.json", samples_file=tmp_path / "s.jsonl")
    sample = json.loads((tmp_path / "s.jsonl").read_text())
    assert sample["response"] == "7", sample


def test_lm_eval_vllm_engine_runs_in_process_on_cpu(base_dir, monkeypatch):
    """Evaluation's lm-eval vLLM engine on CPU runs in-process, as geopd's own standalone engines
    do: with vLLM's default engine-core process it took ~65 s to start per evaluation job (the
    paper grid on the fixture has 206 of them)."""
    from geopd.evaluate import harness

    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    spec = {"name": "inproc", "dtype": "float32", "kv_cache_gib": 0.0625, "max_model_len": 256}
    lm = harness.make_lm("vllm", str(base_dir), spec=spec, seed=0, batch_size=1, device="cpu")
    assert type(lm.model.llm_engine.engine_core).__name__ == "InprocClient"


def test_code_sandbox_isolates_in_the_paper_paths_env():
    """The paper path (LiveCodeBench evaluation, DeepCoder rewards) runs in this env, as on the GPU
    nodes (envs/vllm-base.txt): its code sandbox must isolate programs there, not fall back to the
    audit hook alone for want of libseccomp's Python bindings."""
    from geopd.sandbox import summary

    assert summary()["isolated"], summary()


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_rollout_text_keeps_think_and_earns_the_deepscaler_reward(base_dir, tmp_path, backend):
    """A Base-derived student that answers "<think>x</think>\\boxed{7}<|im_end|>": the rollout
    engine's text keeps Qwen3's </think> (an added, non-special token) and drops <|im_end|>, so the
    paper's RLVR reward (objective.reward: deepscaler, the answer after the last </think>) is 1."""
    from geopd.engines.chat import end_of_turn_id, format_prompt
    from geopd.engines.models import load_model, load_tokenizer
    from geopd.engines.rollout import HFRollout, VLLMRollout
    from geopd.train.rewards import reward

    tok = load_tokenizer(base_dir)
    prompt = format_prompt(tok, "What is 3+4?")
    prompt_last = tok(prompt, add_special_tokens=False)["input_ids"][-1]
    answer = tok("\\boxed{7}", add_special_tokens=False)["input_ids"]
    think, close = (tok.convert_tokens_to_ids(t) for t in ("<think>", "</think>"))
    (x,) = tok("x", add_special_tokens=False)["input_ids"]
    chain = [think, x, close, *answer, end_of_turn_id(tok)]
    assert len(set(chain)) == len(chain) and prompt_last not in chain
    model = _chain_model(base_dir, tmp_path / "student", tok, prompt_last, chain)
    if backend == "hf":
        engine = HFRollout(load_model(model), tok)
    else:
        engine = VLLMRollout(model, tokenizer=tok, settings={"dtype": "float32", "kv_cache_gib": 0.0625,
                                                             "max_model_len": 256})
    ro = engine.generate([prompt], 2, temperature=0.05, top_p=1.0, max_new_tokens=12, seed=0)
    assert ro.texts == ["<think>x</think>\\boxed{7}"] * 2, ro.texts
    assert [reward({"id": "p", "answer": "7"}, t, "deepscaler") for t in ro.texts] == [1.0, 1.0]
    assert reward({"id": "p", "answer": "7"}, "<think>\\boxed{7}</think>", "deepscaler") == 0.0
