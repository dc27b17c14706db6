"""One rank of tests/with_vllm/test_distributed.py (run by torchrun with 2 gloo processes).

Each rank: an FSDP2-sharded student, a colocated vLLM rollout engine and a vLLM teacher
(external_launcher, tensor_parallel argv[1]), different prompts per rank. Writes what it
measured to argv[2]/rank-<r>.json."""
import json
import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_CI_ENV", "1")

if __name__ == "__main__":
    import torch
    import torch.distributed as dist

    from geopd.engines.models import load_model, load_tokenizer
    from geopd.engines.chat import format_prompt
    from geopd.train.loop import Dist, shard_model
    from geopd.engines.rollout import make_rollout_engine, sequence_logprobs
    from geopd.engines.teacher import HFTeacher, make_teacher

    tp, out, student, teacher_path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    settings = {"kv_cache_gib": 0.0625, "max_model_len": 256, "tensor_parallel": tp}
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    tok = load_tokenizer(student)
    model = load_model(student)
    # The trainer's own sharding (FSDP2 per layer + root, chunked log-prob method attached).
    shard_model(model, Dist(rank, dist.get_world_size(), "cpu"))
    teacher = make_teacher("vllm", teacher_path, tok, vllm=settings)
    engine = make_rollout_engine("vllm", model=model, tokenizer=tok, settings=settings, seed=0)
    questions = [["What is 1+2?", "What is 33+4?"], ["What is 7+85?"]][rank]  # uneven on purpose
    prompts = [format_prompt(tok, q) for q in questions]

    def gap(ro):
        with torch.no_grad():
            mine = sequence_logprobs(model, ro.sequences, ro.attention_mask, ro.response_mask, temperature=1.0)
        return (ro.response_logprobs - mine).abs().max().item()

    kw = dict(temperature=1.0, top_p=1.0, max_new_tokens=10, seed=100 + rank)
    ro = engine.generate(prompts, 2, **kw)
    result = {"backend": engine.engine.llm.llm_engine.vllm_config.parallel_config.distributed_executor_backend,
              "sequences": ro.sequences.tolist(), "rollout_gap": gap(ro)}
    scores = teacher.score(ro)
    result["teacher_gap"] = (scores - HFTeacher(load_model(teacher_path)).score(ro)).abs().max().item()

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    logits = model(input_ids=ro.sequences, attention_mask=ro.attention_mask).logits
    (-torch.log_softmax(logits[:, :-1], -1).gather(-1, ro.sequences[:, 1:, None]).mean()).backward()
    optimizer.step()
    result["stale_gap"] = gap(engine.generate(prompts, 2, **kw))
    engine.sync_weights(model)  # every rank: one DTensor.full_tensor per parameter
    result["pushed_gap"] = gap(engine.generate(prompts, 2, **kw))
    with open(os.path.join(out, f"rank-{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()
