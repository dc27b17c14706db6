"""The checkpoint format: round trips, damage detection, atomic replacement, exact resume."""
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from geopd.engines import models
from geopd.errors import UserError
from geopd.io import atomic, publish
from geopd.io.tensors import INDEX, SINGLE, read_header
from geopd.train import checkpoint as ck

torch.set_num_threads(1)


def make_tokenizer(extra: list[str] | None = None):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for c in "0123456789+-=?{}\\ abcdefghijklmnopqrstuvwxyz<>/.,:;!()[]_'*":
        vocab.setdefault(c, len(vocab))
    for t in extra or []:
        vocab.setdefault(t, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                   padding_side="left")


def make_model(seed=0, tie=True):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=16, intermediate_size=64, tie_word_embeddings=tie,
                      pad_token_id=0, eos_token_id=1)
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(cfg)


def bf16_copy(model):
    ref = make_model(tie=model.config.tie_word_embeddings)
    ref.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()})
    return ref.eval()


TOKENS = torch.randint(3, 64, (3, 9), generator=torch.Generator().manual_seed(1))


def flip_byte(path: Path, offset_from_end: int = 3):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.fixture
def saved(tmp_path):
    model = make_model()
    out = models.save_model(model, make_tokenizer(), tmp_path / "ckpt", metadata={"step": 7, "run": "t"})
    return model, out


# ---- export, verification and loading ---------------------------------------------------------------

@pytest.mark.parametrize("tie", [True, False])
def test_round_trip_gives_bf16_logits(tmp_path, tie):
    model = make_model(tie=tie)
    out = models.save_model(model, make_tokenizer(), tmp_path / "ckpt", metadata={"step": 7})
    names = sorted(p.name for p in out.iterdir())
    assert {"config.json", "model.safetensors", "manifest.json", "tokenizer.json"} <= set(names)
    manifest = publish.verify_checkpoint(out, deep=True)
    assert manifest["dtype"] == "bfloat16" and manifest["step"] == 7 and manifest["kind"] == "model"
    assert set(manifest["files"]) == set(names) - {"manifest.json"}
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in keys)
    assert ("lm_head.weight" in keys) == (not tie)  # a tied head is stored once, as in HF
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"

    loaded = models.load_model(out)
    assert loaded.dtype == torch.float32
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tie
    with torch.no_grad():
        assert torch.equal(loaded(TOKENS).logits, bf16_copy(model)(TOKENS).logits)
    tok = models.load_tokenizer(out)
    assert tok.get_vocab() == make_tokenizer().get_vocab() and tok.padding_side == "left"


def test_fp32_export_is_exact_and_sharded_export_loads(tmp_path):
    model = make_model(tie=False)
    out = models.save_model(model, make_tokenizer(), tmp_path / "fp32", dtype=torch.float32, max_shard_bytes=8000)
    index = json.loads((out / INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (out / SINGLE).exists()
    assert set(shards) <= set(publish.verify_checkpoint(out, deep=True)["files"])
    loaded = models.load_model(out)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    (out / shards[1]).unlink()
    with pytest.raises(UserError, match=shards[1]):
        publish.verify_checkpoint(out)


def test_truncated_file_is_detected(saved):
    _, out = saved
    st = out / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[:-100])
    with pytest.raises(UserError, match=r"model\.safetensors.*truncated"):
        publish.verify_checkpoint(out)
    with pytest.raises(UserError, match="model.safetensors"):
        models.load_model(out)
    st.write_bytes(data[:20])  # cut inside the header: same size check fires first ...
    with pytest.raises(UserError, match="model.safetensors"):
        publish.verify_checkpoint(out)
    with pytest.raises(UserError, match="unreadable safetensors header"):  # ... and the header parse itself
        read_header(st)


def test_flipped_byte_is_found_by_deep_verify_only(saved):
    _, out = saved
    flip_byte(out / "model.safetensors")
    publish.verify_checkpoint(out)  # same sizes, readable header: the cheap check cannot see it
    with pytest.raises(UserError, match=r"model\.safetensors is corrupt"):
        publish.verify_checkpoint(out, deep=True)


def test_missing_manifest_means_incomplete_unless_foreign(saved, tmp_path):
    model, out = saved
    (out / "manifest.json").unlink()
    with pytest.raises(UserError, match="incomplete"):
        publish.verify_checkpoint(out)
    assert publish.verify_checkpoint(out, allow_foreign=True) == {}
    # a plain save_pretrained folder (no manifest) loads, and its headers are still checked
    plain = tmp_path / "plain"
    model.save_pretrained(plain)
    make_tokenizer().save_pretrained(plain)
    with pytest.raises(UserError, match="incomplete"):
        models.load_model(plain, allow_foreign=False)
    with torch.no_grad():
        assert torch.equal(models.load_model(plain)(TOKENS).logits, model.eval()(TOKENS).logits)
    st = plain / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-8])
    with pytest.raises(UserError, match="truncated"):
        publish.verify_checkpoint(plain, allow_foreign=True)


def test_missing_sources_give_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="not found"):
        models.load_model(tmp_path / "nope")
    with pytest.raises(UserError, match="not found"):
        publish.verify_checkpoint(tmp_path / "nope")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="geopd-test/no-such-model not found locally and the hub is unreachable"):
        models.load_model("geopd-test/no-such-model")
    with pytest.raises(UserError, match="not found locally"):
        models.load_tokenizer("geopd-test/no-such-model")


def test_tokenizer_mismatch_names_both():
    models.check_same_tokenizer(make_tokenizer(), make_tokenizer(), "student", "teacher")
    with pytest.raises(UserError, match=r"student and teacher have different vocabularies.*<extra>"):
        models.check_same_tokenizer(make_tokenizer(), make_tokenizer(["<extra>"]), "student", "teacher")
    other = make_tokenizer()
    other.add_special_tokens({"pad_token": "?"})  # same vocabulary, "?" now a special token
    with pytest.raises(UserError, match=r"student and teacher differ in their added/special tokens.*'\?'"):
        models.check_same_tokenizer(make_tokenizer(), other, "student", "teacher")


def test_tokenizers_differing_only_in_eos_are_compatible():
    # A Base model ends text with one token, its post-trained sibling a turn with another, over
    # the same vocabulary (Qwen3: <|endoftext|> vs <|im_end|>): the same token log-probs.
    other = make_tokenizer()
    other.eos_token = "<pad>"
    assert other.eos_token_id != make_tokenizer().eos_token_id
    models.check_same_tokenizer(make_tokenizer(), other, "student", "teacher")


# ---- atomicity ------------------------------------------------------------------------------------------

def test_failed_overwrite_keeps_the_old_checkpoint(saved, monkeypatch):
    model, out = saved
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(tensors, tmp, max_shard_bytes):
        (tmp / "model.safetensors").write_bytes(b"\0" * 100)  # half-written, then the crash
        raise RuntimeError("disk full")

    monkeypatch.setattr(models, "_write_safetensors", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        models.save_model(make_model(seed=5), make_tokenizer(), out, metadata={"step": 8})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert publish.verify_checkpoint(out, deep=True)["step"] == 7
    assert [p.name for p in out.parent.iterdir()] == ["ckpt"]  # no temp folder left behind
    monkeypatch.undo()
    new = make_model(seed=5)
    models.save_model(new, make_tokenizer(), out, metadata={"step": 8})
    assert publish.verify_checkpoint(out, deep=True)["step"] == 8
    assert [p.name for p in out.parent.iterdir()] == ["ckpt"]
    with torch.no_grad():
        assert torch.equal(models.load_model(out)(TOKENS).logits, bf16_copy(new)(TOKENS).logits)


KILLED_WRITER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    from test_checkpoint import make_model, make_tokenizer
    from geopd.engines import models
    from geopd.io import publish
    def die(*args):  # killed after the weights, before the manifest
        os._exit(9)
    publish._write_manifest = die
    models.save_model(make_model(seed=3), make_tokenizer(), {target!r}, metadata={{"step": 9}})
""")


def test_killed_writer_leaves_only_an_incomplete_temp_folder(saved):
    _, out = saved
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    script = KILLED_WRITER.format(tests=str(Path(__file__).parent), target=str(out))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr[-2000:]
    temps = [p for p in out.parent.iterdir() if p.name != "ckpt"]
    assert len(temps) == 1 and temps[0].name.startswith(".ckpt.geopd-tmp-")
    assert (temps[0] / "model.safetensors").exists() and not (temps[0] / "manifest.json").exists()
    with pytest.raises(UserError, match="incomplete"):
        publish.verify_checkpoint(temps[0], allow_foreign=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old one is untouched
    models.save_model(make_model(seed=4), make_tokenizer(), out.parent / "other", metadata={"step": 1})
    assert sorted(p.name for p in out.parent.iterdir()) == ["ckpt", "other"]  # cleaned by the next save


def test_interrupted_nonatomic_replace_is_rolled_back(saved, monkeypatch):
    """Where RENAME_EXCHANGE is unavailable the old folder is moved aside first; a crash between
    the two renames is repaired by the next save into the same parent."""
    _, out = saved
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def crash_on_second(src, dst):
        if Path(dst) == out:
            raise KeyboardInterrupt  # killed between "final -> old" and "tmp -> final"
        real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        models.save_model(make_model(seed=6), make_tokenizer(), out, metadata={"step": 8})
    monkeypatch.setattr(atomic.os, "rename", real_rename)
    assert not out.exists()
    aside = [p for p in out.parent.iterdir() if ".geopd-old-" in p.name]
    assert len(aside) == 1
    # as if the dead writer had another pid
    dead = aside[0].with_name(aside[0].name.replace(f"-{os.getpid()}-", "-999999999-"))
    os.rename(aside[0], dead)
    publish.clean_stale(out.parent)
    assert publish.verify_checkpoint(out, deep=True)["step"] == 7


# ---- training state -------------------------------------------------------------------------------------

def _train_steps(model, optimizer, scheduler, steps):
    for _ in range(steps):
        x = torch.randint(3, 64, (4, 6))  # from the global RNG: a wrong RNG restore shows up
        noise = float(np.random.rand()) + random.random()
        loss = model(x, labels=x).loss * (1 + 0.01 * noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()


def _optim(kind, model):
    if kind == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=1e-1, momentum=0.9, foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return opt, sched


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_state_resume_is_bitwise(tmp_path, kind):
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    model = make_model(seed=1)
    opt, sched = _optim(kind, model)
    _train_steps(model, opt, sched, 3)
    ck.save_state(tmp_path / "state-00000003", model=model, optimizer=opt, scheduler=sched, step=3,
                  rng=ck.capture_rng(), data_position={"epoch": 1, "offset": 5}, extra={"run": "r"})
    lr_at_save = opt.param_groups[0]["lr"]
    _train_steps(model, opt, sched, 3)  # the uninterrupted run
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(123), np.random.seed(123), random.seed(123)  # a fresh process, elsewhere in its streams
    fresh = make_model(seed=2)
    opt2, sched2 = _optim(kind, fresh)
    state = ck.load_state(ck.latest_state(tmp_path), fresh, opt2, sched2)
    assert state["step"] == 3 and state["data_position"] == {"epoch": 1, "offset": 5} and state["extra"] == {"run": "r"}
    ck.restore_rng(state["rng"])
    assert sched2.last_epoch == 3 and opt2.param_groups[0]["lr"] == lr_at_save
    _train_steps(fresh, opt2, sched2, 3)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, reference[k]), k
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight


def test_rng_capture_restore_covers_all_generators():
    state = ck.capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(2))
    ck.restore_rng(state)
    b = (random.random(), np.random.rand(), torch.rand(2))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def _fake_state(root: Path, step: int):
    model = make_model()
    opt, sched = _optim("sgd", model)
    return ck.save_state(root / f"state-{step:08d}", model=model, optimizer=opt, scheduler=sched, step=step,
                         rng=ck.capture_rng(), data_position={}, extra={})


def test_latest_state_skips_damaged_and_prune_keeps_newest(tmp_path):
    assert ck.latest_state(tmp_path / "absent") is None
    for s in (2, 4, 6):
        _fake_state(tmp_path, s)
    (tmp_path / "exports").mkdir()  # other things beside the states are left alone
    (tmp_path / "state-00000008").mkdir()  # e.g. a copy without manifest
    flip_byte(tmp_path / "state-00000006" / "optimizer.pt", 30)
    with pytest.warns(UserWarning) as warned:
        assert ck.latest_state(tmp_path) == tmp_path / "state-00000004"
    text = " ".join(str(w.message) for w in warned)
    assert "state-00000008" in text and "incomplete" in text and "optimizer.pt is corrupt" in text
    ck.prune_states(tmp_path, keep=1)
    # prune uses the cheap check: state-6 (sizes intact) is the newest complete one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports", "state-00000006"]


def test_load_state_refuses_a_model_export(saved):
    model, out = saved
    opt, sched = _optim("sgd", model)
    with pytest.raises(UserError, match="not a training state"):
        ck.load_state(out, model, opt, sched)


# ---- FSDP2 ------------------------------------------------------------------------------------------------

FSDP_WORKER = textwrap.dedent("""
    import os, sys, json
    import torch, torch.distributed as dist
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    from test_checkpoint import make_model, make_tokenizer, _optim, _train_steps
    from geopd.engines import models
    from geopd.train import checkpoint as ck
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    out = {out!r}
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))

    def sharded(seed):
        m = make_model(seed=seed)
        for layer in m.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(m, mesh=mesh)
        return m

    torch.manual_seed(0)
    model = sharded(1)
    opt, sched = _optim("adamw", model)
    _train_steps(model, opt, sched, 2)
    models.save_model(model, make_tokenizer(), out + "/export", metadata={{"step": 2}})
    ck.save_state(out + "/state-00000002", model=model, optimizer=opt, scheduler=sched, step=2,
                  rng=ck.capture_rng(), data_position={{}}, extra={{}})
    _train_steps(model, opt, sched, 2)
    ref = models.full_state_dict(model)

    fresh = sharded(2)
    opt2, sched2 = _optim("adamw", fresh)
    st = ck.load_state(ck.latest_state(out), fresh, opt2, sched2)
    ck.restore_rng(st["rng"])
    _train_steps(fresh, opt2, sched2, 2)
    got = models.full_state_dict(fresh)
    if dist.get_rank() == 0:
        assert ref.keys() == got.keys()
        bad = [k for k in ref if not torch.equal(ref[k], got[k])]
        print("MISMATCH", bad)
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_fsdp2_two_processes_save_and_resume(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(FSDP_WORKER.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "MISMATCH []" in proc.stdout, proc.stdout[-2000:]
    # rank 0 wrote one export, readable without any process group
    publish.verify_checkpoint(tmp_path / "export", deep=True)
    assert models.load_model(tmp_path / "export").lm_head.weight.shape == (64, 32)
    assert sorted(p.name for p in (tmp_path / "state-00000002").iterdir() if p.name.startswith("rng")) == \
        ["rng-00000.pt", "rng-00001.pt"]
