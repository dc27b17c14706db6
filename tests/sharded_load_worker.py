"""Run under torchrun (gloo): load a checkpoint shard by shard and compare it with a plain load.

    python -m torch.distributed.run --standalone --nproc-per-node=2 tests/sharded_load_worker.py CKPT ENGINE.json OUT.json

Each rank measures how far its anonymous memory peaks above its level before the call while
`load_sharded_model` builds, shards and fills the model, then the same for a plain `load_model`
of the same checkpoint. Rank 0 gathers the sharded model's full state and compares
it, its buffers and a forward pass with the plain model's; OUT.json gets every rank's figures.
"""
import json
import re
import sys
import threading
import time
from pathlib import Path

import torch

torch.set_num_threads(1)


def peak_growth(fn):
    """(fn(), bytes by which the process's anonymous memory peaked above its level before fn).
    Sampled every millisecond from /proc/self/status (RssAnon): the mapped pages of the
    checkpoint file (page cache, shared, reclaimable) are not the model's memory, and VmHWM
    would count them; a transient tensor of a few MiB may slip between samples, a copy of the
    whole model does not."""
    status = Path("/proc/self/status")

    def anon() -> int:
        return int(re.search(r"RssAnon:\s+(\d+)", status.read_text()).group(1)) * 1024

    base, peak, done = anon(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], anon())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out = fn()
    finally:
        done.set()
        sampler.join()
    return out, max(peak[0], anon()) - base


def warm_up(path: str) -> None:
    """What the first load in a process imports and initialises once (transformers' model classes,
    accelerate, torch.distributed.checkpoint: ~80 MiB), done before measuring."""
    import torch.distributed.checkpoint  # noqa: F401
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    config.vocab_size, config.num_hidden_layers = 64, 1
    with init_empty_weights(include_buffers=False):
        AutoModelForCausalLM.from_config(config)


def main():
    import torch.distributed as dist

    from geopd.engines import models
    from geopd.engines.chat import position_ids
    from geopd.train.loop import Dist, EngineSettings, shard_model

    path, engine = sys.argv[1], EngineSettings.from_spec(json.loads(sys.argv[2]))
    d = Dist.setup("cpu", group=True)
    warm_up(path)
    sharded, grew = peak_growth(lambda: models.load_sharded_model(path, shard=lambda m: shard_model(m, d, engine),
                                                                device="cpu"))
    full = models.full_state_dict(sharded)  # collective: rank 0 gets the full state
    buffers = {n: b.clone() for n, b in sharded.named_buffers()}
    ids = torch.randint(3, 200, (3, 12), generator=torch.Generator().manual_seed(0))
    attn = torch.ones_like(ids)
    attn[0, :4] = 0
    with torch.no_grad():
        logits = sharded(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn)).logits.float()
    del sharded
    plain, plain_grew = peak_growth(lambda: models.load_model(path))
    out = {"rank": d.rank, "sharded_peak": grew, "plain_peak": plain_grew,
           "sharded_grads": engine.mixed_precision}
    if d.main:
        ref = plain.state_dict()
        out["missing"] = sorted(set(models._export_tensors(plain, ref, torch.float32)) - set(full))
        out["weights_max_diff"] = max(float((full[k].float() - ref[k].float()).abs().max()) for k in full)
        out["dtypes"] = sorted({str(v.dtype) for v in full.values()})
        out["buffers_equal"] = all(torch.equal(buffers[n], b) for n, b in plain.named_buffers())
        out["buffer_names"] = sorted(buffers)
        if not engine.mixed_precision:
            with torch.no_grad():
                ref_logits = plain(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn)).logits
            out["logits_max_diff"] = float((logits - ref_logits).abs().max())
        out["params"] = sum(p.numel() for p in plain.parameters())
    outs = [None] * d.world
    dist.all_gather_object(outs, out)
    if d.main:
        Path(sys.argv[3]).write_text(json.dumps(outs))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
