"""Run under torchrun (1 or 2 processes, gloo): scenarios for the FSDP2 tests, results as JSON.

    python -m torch.distributed.run --standalone --nproc-per-node=2 tests/fsdp_worker.py SCENARIOS.json OUT.json

Scenarios (a JSON list, run in order in one process group):
- {"kind": "head", "engine": {...}, "tie": bool}: a tiny Qwen3 sharded by shard_model; each
  rank scores its own rows with logprobs.token_stats and backpropagates a weighted sum. Rank 0
  also computes the same on an unsharded copy with full logits (in bf16 when the engine's
  param_dtype is bf16, as FSDP casts). Reports the largest differences of the log-probs and of
  every parameter's gradient.
- {"kind": "sft"|"rl", "spec": {...}, "shares": [..], "steps": k}: a Trainer on `spec`; each
  step takes the step's records (prompts) from the stream, gives rank r the r-th slice of sizes
  `shares` (uneven on purpose), and runs Trainer.sft_update / Trainer.train_on on it. RL
  rollouts come from one unsharded copy of the initial model with a fixed seed, identical on
  every rank, so 1 and 2 processes see the same data. Reports the metrics rows and the final
  fp32 weights (a torch file).
"""
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)


def rank_rows(n: int, shares: list[int], rank: int) -> list[int]:
    start = sum(shares[:rank])
    return list(range(start, start + shares[rank]))


def head(sc: dict, dist) -> dict:
    import copy

    import torch.nn.functional as F

    from geopd.engines import logprobs as lp
    from geopd.engines.chat import position_ids
    from geopd.spec import Engine
    from geopd.train.distributed import shard_model
    from test_checkpoint import make_model

    engine = Engine.from_dict(sc["engine"])
    model = make_model(seed=21, tie=sc["tie"]).train()
    g = torch.Generator().manual_seed(22)
    ids = torch.randint(3, 64, (5, 10), generator=g)
    attn = torch.ones_like(ids)
    attn[1, :4] = 0
    attn[3, 8:] = 0
    mask = torch.zeros_like(ids)
    mask[:, 3:] = 1
    mask *= attn
    w = torch.randn(ids.shape, generator=g)
    reference = copy.deepcopy(model).to(getattr(torch, engine.param_dtype))
    shard_model(model, dist, engine)
    mine = torch.arange(dist.rank, ids.shape[0], dist.world)
    logp, _ = lp.token_stats(model, ids[mine], attn[mine], mask[mine], temperature=0.9, chunk_tokens=3)
    (logp * w[mine]).sum().backward()
    grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).float()
             for n, p in model.named_parameters()}
    all_logp = [None] * dist.world
    if dist.world > 1:
        torch.distributed.all_gather_object(all_logp, (mine, logp.detach()))
    else:
        all_logp = [(mine, logp.detach())]
    if not dist.main:
        return {}
    got = torch.zeros(ids.shape)
    for rows, values in all_logp:
        got[rows] = values.float()
    logits = reference(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn)).logits.float() / 0.9
    ref = F.pad(torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1), (1, 0)) * mask
    ((ref * w).sum() / dist.world).backward()  # FSDP averages the ranks' gradients
    ref_grads = dict(reference.named_parameters())
    return {"logp": float((got - ref.detach()).abs().max()),
            "grad": {n: float((grads[n] - ref_grads[n].grad.float()).abs().max()) for n in grads},
            "grad_scale": {n: float(ref_grads[n].grad.float().abs().max()) for n in grads},
            "sharded": hasattr(next(model.parameters()), "full_tensor")}


def train(sc: dict, dist, out_dir: Path) -> dict:
    from geopd.engines.models import full_state_dict, load_model
    from geopd.engines.chat import format_prompt
    from geopd.train.loop import Trainer
    from geopd.engines.rollout import HFRollout, select_groups

    trainer = Trainer(sc["spec"], threads=1, progress=False)
    shares = sc["shares"] if dist.world > 1 else [sum(sc["shares"])]
    sampler = None
    if sc["kind"] == "rl":
        sampler = HFRollout(load_model(sc["spec"]["init"]), trainer.tokenizer)
    rows = []
    for step in range(sc["steps"]):
        if sc["kind"] == "sft":
            records = trainer.stream.next(sum(shares))
            row = trainer.sft_update([records[i] for i in rank_rows(len(records), shares, dist.rank)])
        else:
            r = sc["spec"]["rollout"]
            records = trainer.stream.next(sum(shares))
            ro = sampler.generate([format_prompt(trainer.tokenizer, rec["prompt"]) for rec in records], r["samples"],
                                  temperature=r["temperature"], top_p=1.0, max_new_tokens=r["max_new_tokens"],
                                  seed=1000 + step)
            mine = rank_rows(len(records), shares, dist.rank)
            row = trainer.train_on(select_groups(ro, mine), [records[i] for i in mine], seed=step)
        trainer.scheduler.step()
        trainer.step += 1
        rows.append(row)
    state = full_state_dict(trainer.model)
    if dist.main:
        path = out_dir / f"{sc['name']}-w{dist.world}.pt"
        torch.save({k: v.float() for k, v in state.items()}, path)
        return {"rows": rows, "weights": str(path)}
    return {}


def main():
    from geopd.train.distributed import Dist

    scenarios = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    dist = Dist.setup("cpu", group=True)
    results = {}
    for sc in scenarios:
        results[sc["name"]] = head(sc, dist) if sc["kind"] == "head" else train(sc, dist, out.parent)
    if dist.main:
        out.write_text(json.dumps(results))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
