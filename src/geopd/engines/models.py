"""Models and tokenizers: loaded from a checkpoint folder or a hub id, exported as one.

An exported model (`save_model`) is a Hugging Face folder (config.json,
generation_config.json, model.safetensors or shards + model.safetensors.index.json, tokenizer
files) that `from_pretrained`, vLLM and the diagnostics read as is, published whole with a
manifest (geopd.io.publish). Local folders are verified before they are loaded; folders
without a manifest (hub snapshots, save_pretrained output) are accepted where `allow_foreign`.

Under torch.distributed (FSDP2 `fully_shard`) every rank calls `save_model`: the full state is
gathered to rank 0 (CPU), only rank 0 writes, and an error on rank 0 is re-raised on every rank
(geopd.engines.ranks).
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import re
from pathlib import Path
from typing import Callable

import torch

from geopd.engines.ranks import on_rank0, writer
from geopd.errors import UserError
from geopd.io.publish import verify_checkpoint, write_atomically
from geopd.io.tensors import INDEX, SINGLE, hub_offline, read_header

DEFAULT_MAX_SHARD_BYTES = 5 * 2**30


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The whole model's state on CPU: gathered on rank 0 under FSDP2 (collective; {} elsewhere)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _tied_duplicates(model) -> set[str]:
    """State-dict names that alias an earlier parameter (lm_head tied to the embedding)."""
    seen, dup = set(), set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            dup.add(name)
        seen.add(id(p))
    return dup


def _export_tensors(model, state: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    # Drop aliases only where the config re-ties them on load; otherwise store real copies.
    tied = getattr(_text_config(model.config), "tie_word_embeddings", False)
    drop = _tied_duplicates(model) if tied else set()
    out, ptrs = {}, set()
    for name, t in state.items():
        if name in drop:
            continue
        t = t.detach()
        t = t.to(dtype) if t.is_floating_point() else t
        t = t.to("cpu").contiguous()
        if t.untyped_storage().data_ptr() in ptrs:  # safetensors refuses shared storage
            t = t.clone()
        ptrs.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def _write_safetensors(tensors: dict[str, torch.Tensor], tmp: Path, max_shard_bytes: int) -> None:
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(tmp / SINGLE), metadata={"format": "pt"})
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(tmp / fname), metadata={"format": "pt"})
        for name, t in shard.items():
            weight_map[name] = fname
            total += t.numel() * t.element_size()
    (tmp / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                             indent=2, sort_keys=True))


def _architecture(model) -> str:
    """The transformers class name of `model`, also under FSDP2 (whose `fully_shard` swaps in
    a subclass named FSDP<Class>)."""
    from torch.distributed.fsdp import FSDPModule
    from transformers import PreTrainedModel

    for cls in type(model).__mro__:
        if issubclass(cls, PreTrainedModel) and not issubclass(cls, FSDPModule):
            return cls.__name__
    return type(model).__name__


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def write_config(model, tokenizer, directory: str | os.PathLike, *, dtype: torch.dtype) -> None:
    """Everything of an exported model folder but its weights: config.json (with `dtype` and
    `architectures`), generation_config.json and the tokenizer files."""
    config = copy.deepcopy(model.config)
    config.dtype = dtype
    # vLLM picks the model class from `architectures`; without it a Qwen3 folder loads as a
    # pooling model that refuses to generate. save_pretrained sets it, config.save_pretrained
    # does not.
    config.architectures = [_architecture(model)]
    config.save_pretrained(directory)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def save_model(model, tokenizer, directory: str | os.PathLike, *, dtype: torch.dtype = torch.bfloat16,
               metadata: dict | None = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
    """Export `model` (plain or FSDP2-sharded; every rank calls this) as a Hugging Face folder
    with tensors in `dtype`, atomically. `metadata` (JSON) goes into the manifest; its "step"
    is also recorded as the manifest's step."""
    metadata = dict(metadata or {})
    state = full_state_dict(model)

    def write(tmp: Path) -> None:
        _write_safetensors(_export_tensors(model, state, dtype), tmp, max_shard_bytes)
        write_config(model, tokenizer, tmp, dtype=dtype)

    fields = {"kind": "model", "dtype": _dtype_name(dtype), "step": metadata.get("step"), "metadata": metadata}
    path = on_rank0(lambda: write_atomically(directory, write, fields, writer()))
    return Path(directory).absolute() if path is None else path


@contextlib.contextmanager
def _quiet_loading():
    """No per-tensor "Loading weights" bar from transformers in the training logs."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _resolve(source: str | os.PathLike, what: str, verify: bool, allow_foreign: bool) -> tuple[str, bool]:
    """(path or hub id, is_local); local folders are verified, missing paths are named."""
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        if verify:
            verify_checkpoint(path, allow_foreign=allow_foreign)
        elif not path.is_dir():
            raise UserError(f"{what} {path}: not a checkpoint folder")
        return str(path), True
    if text.startswith(("/", ".", "~")) or not _HUB_ID.match(text):
        raise UserError(f"{what} {text}: not found (no such directory)")
    return text, False


def _hub_unreachable(source: str, exc: Exception) -> UserError:
    return UserError(f"model {source} not found locally and the hub is unreachable "
                     f"(or has no such model): {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def load_model(source: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               verify: bool = True, allow_foreign: bool = True):
    """A causal LM from a local folder (verified first) or a hub id. Folders without a manifest
    (hub snapshots, save_pretrained output) are accepted unless `allow_foreign=False`."""
    from transformers import AutoModelForCausalLM

    where, local = _resolve(source, "model", verify, allow_foreign)
    try:
        with _quiet_loading():
            model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, local_files_only=hub_offline())
    except (OSError, ValueError) as exc:
        if local:
            raise UserError(f"model {where}: cannot be loaded ({type(exc).__name__}: {exc})") from None
        raise _hub_unreachable(where, exc) from None
    return model.to(device)


def load_sharded_model(source: str | os.PathLike, *, shard: Callable, device: str | torch.device,
                       dtype: torch.dtype = torch.float32, verify: bool = True, allow_foreign: bool = True):
    """The model at `source`, sharded before any of its weights exist, then filled shard by shard
    (every rank of the process group calls this): no rank ever holds the whole model.

    The model is built from its config with its parameters on the meta device (accelerate's
    init_empty_weights; buffers stay real, so non-persistent ones such as RoPE's inv_freq are
    computed by the model's own code, as in a plain load) and handed to `shard` (FSDP2
    `fully_shard`, e.g. geopd.train.loop.shard_model), which returns it sharded. Its shards are
    then allocated on `device` in `dtype` (the fp32 master weights) and read from the checkpoint's
    safetensors with torch.distributed.checkpoint's HuggingFaceStorageReader, each rank reading
    only the slices of the tensors its shards hold (the way torchtitan loads a hub checkpoint).
    Values equal those of `load_model(source, dtype=dtype)`."""
    import torch.distributed.checkpoint as dcp
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    where, local = _resolve(source, "model", verify, allow_foreign)
    folder = Path(where) if local else _hub_snapshot(where)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"model {where}: no *.safetensors files (a sharded load reads safetensors only)")
    stored = {}
    for f in files:
        stored.update({k: f for k in read_header(f)})
    # fork_rng: initialising meta parameters must not move the caller's random stream
    with _quiet_loading(), init_empty_weights(include_buffers=False), torch.random.fork_rng(devices=[]):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=dtype)
    model.tie_weights()  # init_empty_weights re-creates each parameter on meta, which unties them
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    # Each parameter under a name the checkpoint holds (a tied lm_head is stored once, under
    # either of its names).
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    missing = [ns[0] for ns in names.values() if not any(n in stored for n in ns)]
    if missing:
        raise UserError(f"model {where}: the checkpoint lacks {missing[:5]} ({len(missing)} parameters) under the "
                        f"names {type(model).__name__} uses; it cannot be loaded shard by shard")
    model = shard(model)
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    model.to_empty(device=device)
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    state = {}
    for name, p in model.named_parameters():  # the sharded parameters (DTensors), read in place
        key = name if name in stored else next(n for n in names[id(p)] if n in stored)
        state[key] = p.data
    for name, b in model.named_buffers():  # persistent buffers the checkpoint holds, as from_pretrained
        parent, _, leaf = name.rpartition(".")
        if name in stored and leaf not in model.get_submodule(parent)._non_persistent_buffers_set:
            state[name] = b
    dcp.load(state, storage_reader=dcp.HuggingFaceStorageReader(str(folder)))
    return model.eval()


def _hub_snapshot(repo_id: str) -> Path:
    """The local folder of a hub model's files (downloaded unless offline), as from_pretrained finds it."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"],
                                      local_files_only=hub_offline()))
    except Exception as exc:  # network, missing repo, no local copy offline
        raise _hub_unreachable(repo_id, exc) from None


def load_tokenizer(source: str | os.PathLike, *, verify: bool = True, allow_foreign: bool = True):
    from transformers import AutoTokenizer

    where, local = _resolve(source, "tokenizer of", verify, allow_foreign)
    try:
        return AutoTokenizer.from_pretrained(where, local_files_only=hub_offline())
    except (OSError, ValueError) as exc:
        if local:
            raise UserError(f"tokenizer of {where}: cannot be loaded ({type(exc).__name__}: {exc})") from None
        raise _hub_unreachable(where, exc) from None


def _added_tokens(tok) -> dict[str, tuple[int, bool]]:
    """Added tokens (Qwen3: <|endoftext|>, <|im_start|>, <|im_end|>, <think>, ...) as
    content -> (id, special flag)."""
    return {t.content: (i, bool(t.special)) for i, t in (getattr(tok, "added_tokens_decoder", None) or {}).items()}


def check_same_tokenizer(tok_a, tok_b, name_a: str, name_b: str) -> None:
    """Raise UserError unless both tokenizers have the same vocabulary: every token, added and
    special tokens included, with the same id, and the same tokens marked special. Token-level
    log-probs of two models are comparable exactly then.

    Which token a tokenizer *designates* as eos/bos/pad is not compared: a Qwen3-*-Base model
    ends text with <|endoftext|> while the post-trained Qwen3 models end a turn with <|im_end|>,
    over one and the same vocabulary (a Base student and a post-trained teacher are compatible).
    """
    va, vb = tok_a.get_vocab(), tok_b.get_vocab()
    if va != vb:
        only_a = sorted(set(va) - set(vb))[:5]
        only_b = sorted(set(vb) - set(va))[:5]
        moved = sorted(t for t in set(va) & set(vb) if va[t] != vb[t])[:5]
        raise UserError(f"{name_a} and {name_b} have different vocabularies, so their token log-probs cannot be "
                        f"compared: vocab sizes {len(va)} vs {len(vb)}; only in {name_a}: {only_a}; "
                        f"only in {name_b}: {only_b}; different ids: {moved}")
    aa, ab = _added_tokens(tok_a), _added_tokens(tok_b)
    if aa != ab:
        diff = {t: (aa.get(t), ab.get(t)) for t in sorted(set(aa) | set(ab)) if aa.get(t) != ab.get(t)}
        raise UserError(f"{name_a} and {name_b} differ in their added/special tokens "
                        f"(token: ((id, special) in {name_a}, (id, special) in {name_b})): {dict(list(diff.items())[:5])}")

