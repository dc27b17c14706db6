"""The project's one checkpoint format: exported models and resumable training state.

Exported model (`save_model`): a Hugging Face folder (config.json, generation_config.json,
model.safetensors or shards + model.safetensors.index.json, tokenizer files) that
`from_pretrained`, vLLM and the diagnostics read as is, plus a `manifest.json` with the byte size
and sha256 of every file. Training state (`save_state`): fp32 master weights, optimizer,
scheduler, per-rank RNG and data position as torch files, with the same manifest.

Both are written atomically: everything goes into a hidden sibling temp folder, every file is
fsynced, the manifest is written last, and only then is the folder renamed onto its final name
(an existing folder is swapped out with renameat2(RENAME_EXCHANGE) where the file system allows,
else moved aside first). A folder under the final name therefore always has a manifest; a killed
writer leaves only a temp folder without one, which the next save into the same parent removes.

Under torch.distributed (FSDP2 `fully_shard`) every rank must call the save/load functions:
the full state is gathered to rank 0 (CPU), only rank 0 writes, and an error on rank 0 is
re-raised on every rank instead of leaving the others at a barrier.
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import hashlib
import json
import os
import random
import re
import shutil
import socket
import time
import uuid
import warnings
from pathlib import Path
from typing import Callable

import torch

from geopd.errors import UserError

MANIFEST = "manifest.json"
FORMAT = "geopd-checkpoint"
VERSION = 1
SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30
STATE_PATTERN = re.compile(r"^state-(\d{8})$")

# Hidden sibling names: ".{final}.geopd-tmp-{host}-{pid}-{token}" (being written) and
# ".{final}.geopd-old-{host}-{pid}-{token}" (a replaced folder on its way out).
_SCRATCH = re.compile(r"^\.(?P<final>.+)\.geopd-(?P<kind>tmp|old)-(?P<host>.+)-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})$")
# A scratch folder of another host is only presumed dead after this long (its pid means nothing here).
_FOREIGN_HOST_STALE_S = 6 * 3600



# ---- distributed helpers -------------------------------------------------------------------

def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def _rank() -> int:
    d = _dist()
    return d.get_rank() if d else 0


def _world() -> int:
    d = _dist()
    return d.get_world_size() if d else 1


def _on_rank0(fn: Callable[[], object]):
    """Run `fn` on rank 0 only; every rank returns when it is done and raises if it failed."""
    d = _dist()
    if d is None:
        return fn()
    result, error = None, None
    if d.get_rank() == 0:
        try:
            result = fn()
        except BaseException as exc:  # re-raised below, after the others are told
            error = exc
    box = [None if error is None else f"{type(error).__name__}: {error}"]
    d.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[0] is not None:
        raise UserError(f"rank 0 failed: {box[0]}")
    return result


# ---- atomic folders --------------------------------------------------------------------------

def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 * 2**20), b""):
            h.update(block)
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _scratch_name(final: Path, kind: str) -> Path:
    return final.parent / f".{final.name}.geopd-{kind}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _is_stale(entry: Path, m: re.Match) -> bool:
    if m["host"] == socket.gethostname():
        return int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"]))
    try:
        return time.time() - entry.stat().st_mtime > _FOREIGN_HOST_STALE_S
    except FileNotFoundError:
        return False


def clean_stale(parent: str | os.PathLike) -> list[Path]:
    """Remove temp folders of dead writers in `parent`. If a crash hit between the two renames
    of a non-atomic replace (the final name is gone, the old folder is still aside), the old
    folder is put back. Returns the folders removed."""
    parent = Path(parent)
    removed = []
    if not parent.is_dir():
        return removed
    for entry in sorted(parent.iterdir()):
        m = _SCRATCH.match(entry.name)
        if not m or not entry.is_dir() or not _is_stale(entry, m):
            continue
        final = parent / m["final"]
        if m["kind"] == "old" and not final.exists() and _complete(entry):
            os.rename(entry, final)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    rc = renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    return rc == 0


def _publish(tmp: Path, final: Path) -> None:
    parent = final.parent
    if final.exists() or final.is_symlink():
        if not final.is_dir():
            raise UserError(f"{final}: exists and is not a checkpoint folder; refusing to replace it")
        if _exchange(tmp, final):
            _fsync_path(parent)
            shutil.rmtree(tmp)  # now holds the old checkpoint
            return
        old = _scratch_name(final, "old")
        os.rename(final, old)
        os.rename(tmp, final)
        _fsync_path(parent)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.rename(tmp, final)
    _fsync_path(parent)


def _write_manifest(tmp: Path, fields: dict) -> None:
    files = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        _fsync_path(path)
        files[path.relative_to(tmp).as_posix()] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {"format": FORMAT, "version": VERSION, **fields,
                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "writer": {"torch": torch.__version__, "host": socket.gethostname(), "world_size": _world()},
                "files": files}
    path = tmp / MANIFEST
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    for d in sorted({p.parent for p in tmp.rglob("*")} | {tmp}, key=lambda p: -len(p.parts)):
        _fsync_path(d)


def write_atomically(directory: str | os.PathLike, write: Callable[[Path], None], fields: dict) -> Path:
    """Call `write(tmp)` to fill a temp folder, add the manifest, rename onto `directory`."""
    final = Path(directory).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final.parent)
    tmp = _scratch_name(final, "tmp")
    tmp.mkdir()
    try:
        write(tmp)
        _write_manifest(tmp, fields)
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# ---- verification ----------------------------------------------------------------------------

def read_safetensors_header(path: Path) -> dict:
    """Parse one safetensors header and check every tensor's byte range against the file size.

    One parser serves the checkpoint format and the diagnostics reader."""
    from geopd.io.tensors import read_header

    return read_header(path)


def _read_manifest(directory: Path) -> dict | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable manifest ({exc})") from None
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise UserError(f"{path}: not a {FORMAT} manifest")
    return manifest


def _check_weights(directory: Path, names: list[str]) -> None:
    """Headers of every safetensors file, and the shard index against the files it names."""
    for name in names:
        if name.endswith(".safetensors"):
            read_safetensors_header(directory / name)
    if SAFE_INDEX in names or (directory / SAFE_INDEX).is_file():
        path = directory / SAFE_INDEX
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: unreadable shard index ({exc})") from None
        for shard in sorted(set(weight_map.values())):
            if not (directory / shard).is_file():
                raise UserError(f"{directory / shard}: shard named in {SAFE_INDEX} is missing")


def verify_checkpoint(directory: str | os.PathLike, *, deep: bool = False, allow_foreign: bool = False) -> dict:
    """Check a checkpoint folder before anything reads it; returns its manifest ({} if foreign).

    With a manifest: every listed file exists with its recorded size, safetensors headers parse
    and fit their files, and (deep) every sha256 matches. Without one the folder is incomplete,
    unless `allow_foreign` (a hub snapshot or a plain save_pretrained folder): then config.json
    and the safetensors headers and byte ranges are checked.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"checkpoint {directory}: not found (no such directory)")
    manifest = _read_manifest(directory)
    if manifest is None:
        if _SCRATCH.match(directory.name):
            raise UserError(f"checkpoint {directory}: incomplete (a temp folder of an interrupted save)")
        weights = sorted(p.name for p in directory.glob("*.safetensors"))
        if not allow_foreign or not (directory / "config.json").is_file() or not weights:
            raise UserError(f"checkpoint {directory}: incomplete, {MANIFEST} is missing"
                            + ("" if allow_foreign else " (a checkpoint not written by geopd needs allow_foreign)"))
        try:
            json.loads((directory / "config.json").read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise UserError(f"{directory / 'config.json'}: unreadable ({exc})") from None
        _check_weights(directory, weights)
        return {}
    for name, entry in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            raise UserError(f"checkpoint {directory}: {name} is listed in {MANIFEST} but missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise UserError(f"checkpoint {directory}: {name} has {size} bytes, {entry['bytes']} expected (truncated?)")
    _check_weights(directory, list(manifest["files"]))
    if deep:
        for name, entry in manifest["files"].items():
            if _sha256(directory / name) != entry["sha256"]:
                raise UserError(f"checkpoint {directory}: {name} is corrupt (sha256 differs from {MANIFEST})")
    return manifest


def _complete(directory: Path) -> bool:
    try:
        verify_checkpoint(directory)
        return True
    except UserError:
        return False


# ---- models ----------------------------------------------------------------------------------

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
        save_file(shards[0], str(tmp / SAFE_SINGLE), metadata={"format": "pt"})
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(tmp / fname), metadata={"format": "pt"})
        for name, t in shard.items():
            weight_map[name] = fname
            total += t.numel() * t.element_size()
    (tmp / SAFE_INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
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
    path = _on_rank0(lambda: write_atomically(directory, write, fields))
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


def _offline() -> bool:
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE once, at import, so a value set
    # later (a test, a launcher) would otherwise be ignored and every lookup would wait on
    # network timeouts.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


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
            model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, local_files_only=_offline())
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
        stored.update({k: f for k in read_safetensors_header(f) if k != "__metadata__"})
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
                                      local_files_only=_offline()))
    except Exception as exc:  # network, missing repo, no local copy offline
        raise _hub_unreachable(repo_id, exc) from None


def load_tokenizer(source: str | os.PathLike, *, verify: bool = True, allow_foreign: bool = True):
    from transformers import AutoTokenizer

    where, local = _resolve(source, "tokenizer of", verify, allow_foreign)
    try:
        return AutoTokenizer.from_pretrained(where, local_files_only=_offline())
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


# ---- random number generators -----------------------------------------------------------------

def capture_rng() -> dict:
    """Python, numpy, torch CPU and CUDA generator states, as plain values and tensors (so the
    state file loads with torch.load(weights_only=True))."""
    import numpy as np

    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": {"version": version, "state": list(state), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict) -> None:
    import numpy as np

    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            warnings.warn(f"CUDA RNG state of {len(state['cuda'])} devices not restored on "
                          f"{torch.cuda.device_count()} devices")


# ---- resumable training state --------------------------------------------------------------------

def _gather_objects(obj) -> list:
    d = _dist()
    if d is None:
        return [obj]
    out = [None] * d.get_world_size()
    d.all_gather_object(out, obj)
    return out


def _stage_rank_files(final: Path, rank_extra: dict) -> list[Path]:
    """Each rank writes its `rank_extra` into a scratch folder of its own beside `final` (the
    shared file system every rank resumes from); returns every rank's folder, in rank order.
    Large per-rank state (an FSDP shard) never travels between processes this way."""
    stage, error = None, None
    try:
        stage = _scratch_name(final, "tmp")
        stage.mkdir(parents=True)
        with open(stage / "extra.pt", "wb") as f:
            torch.save(rank_extra, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:  # told to every rank below instead of leaving them in the gather
        error = f"rank {_rank()}: {type(exc).__name__}: {exc}"
    stages = _gather_objects(None if error else str(stage))
    errors = _gather_objects(error)
    if any(errors):
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        raise UserError(f"{final}: cannot write per-rank state ({'; '.join(e for e in errors if e)})")
    return [Path(p) for p in stages]


def save_state(directory: str | os.PathLike, *, model, optimizer, scheduler, step: int, rng: dict,
               data_position: dict, extra: dict, rank_extra: dict | None = None) -> Path:
    """Everything a run needs to continue bitwise: fp32 weights, optimizer and scheduler state,
    every rank's RNG, the data position, `extra` (rank 0's, shared by all) and `rank_extra`
    (each rank's own, e.g. state held per FSDP shard: `extra-{rank}.pt`). Every rank calls
    this; rank 0 writes the folder."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    rngs = _gather_objects(rng)
    stages = _stage_rank_files(Path(directory).absolute(), rank_extra) if rank_extra is not None else []

    def write(tmp: Path) -> None:
        torch.save(model_sd, tmp / "model.pt")
        torch.save(optim_sd, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict() if scheduler is not None else None, tmp / "scheduler.pt")
        for r, g in enumerate(rngs):
            torch.save(g, tmp / f"rng-{r:05d}.pt")
        for r, stage in enumerate(stages):
            os.rename(stage / "extra.pt", tmp / f"extra-{r:05d}.pt")
            shutil.rmtree(stage, ignore_errors=True)
        torch.save({"step": int(step), "data_position": data_position, "extra": extra, "world_size": len(rngs),
                    "rank_extra": bool(stages)}, tmp / "trainer.pt")

    fields = {"kind": "state", "step": int(step), "metadata": {"world_size": len(rngs)}}
    try:
        path = _on_rank0(lambda: write_atomically(directory, write, fields))
    finally:
        for stage in stages:  # left behind only if rank 0 failed before moving them
            if stage.exists() and _rank() == 0:
                shutil.rmtree(stage, ignore_errors=True)
    return Path(directory).absolute() if path is None else path


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a zip or pickle error: the file is damaged in a way sizes miss
        raise UserError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None


def load_state(directory: str | os.PathLike, model, optimizer, scheduler, *, deep: bool = False) -> dict:
    """Restore model, optimizer and scheduler in place (every rank calls this); returns
    {"step", "rng" (this rank's), "data_position", "extra", "rank_extra" (this rank's, or None
    when the state has none)}."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict, set_state_dict)

    directory = Path(directory)
    manifest = verify_checkpoint(directory, deep=deep)
    if manifest.get("kind") != "state":
        raise UserError(f"{directory}: not a training state folder (kind {manifest.get('kind')!r})")
    meta = _torch_load(directory / "trainer.pt")
    if _dist() is None:
        set_state_dict(model, optimizer, model_state_dict=_torch_load(directory / "model.pt"),
                       optim_state_dict=_torch_load(directory / "optimizer.pt"),
                       options=StateDictOptions(full_state_dict=True))
    else:
        # Rank 0 reads, the others receive their shards: one copy of the full state in memory.
        # Two calls, optimizer first as set_state_dict does: set_state_dict given an empty model
        # dict on ranks > 0 treats the call as optimizer-only there and rank 0's broadcast hangs.
        main = _rank() == 0
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_optimizer_state_dict(model, optimizer, _torch_load(directory / "optimizer.pt") if main else {},
                                 options=options)
        set_model_state_dict(model, _torch_load(directory / "model.pt") if main else {}, options=options)
    sched = _torch_load(directory / "scheduler.pt")
    if scheduler is not None and sched is not None:
        scheduler.load_state_dict(sched)
    rank_file = directory / f"rng-{_rank():05d}.pt"
    if meta["world_size"] != _world() or not rank_file.is_file():
        warnings.warn(f"{directory}: saved with {meta['world_size']} processes, resumed with {_world()}; "
                      "RNG streams are not continued exactly")
        rank_file = directory / "rng-00000.pt"
    rank_extra = None
    if meta.get("rank_extra"):
        if meta["world_size"] != _world():
            raise UserError(f"{directory}: holds per-rank state of {meta['world_size']} processes (FSDP shards); "
                            f"resume it with {meta['world_size']} processes, not {_world()}")
        rank_extra = _torch_load(directory / f"extra-{_rank():05d}.pt")
    return {"step": meta["step"], "rng": _torch_load(rank_file), "data_position": meta["data_position"],
            "extra": meta["extra"], "rank_extra": rank_extra}


def state_extra(directory: str | os.PathLike) -> dict:
    """The `extra` a training state was saved with (rank 0's), without loading the rest."""
    return _torch_load(Path(directory) / "trainer.pt")["extra"]


def _state_dirs(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STATE_PATTERN.match(p.name))]
    return sorted(found, reverse=True)


def latest_state(root: str | os.PathLike, *, deep: bool = True) -> Path | None:
    """The newest complete, uncorrupted `state-{step:08d}` folder under `root`, or None.
    Damaged ones are skipped with a warning (deep: sha256 of every file is checked)."""
    for step, path in _state_dirs(Path(root)):
        try:
            manifest = verify_checkpoint(path, deep=deep)
        except UserError as exc:
            warnings.warn(f"skipping training state {path}: {exc}")
            continue
        if manifest.get("kind") == "state":
            return path
        warnings.warn(f"skipping {path}: not a training state folder")
    return None


def prune_states(root: str | os.PathLike, keep: int = 1) -> list[Path]:
    """Keep the newest `keep` complete state folders; remove older and damaged ones and stale
    temp folders. Returns what was removed."""
    root = Path(root)
    removed = clean_stale(root)
    kept = 0
    for _, path in _state_dirs(root):
        if kept < keep and _complete(path):
            kept += 1
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
