"""Streaming, one-tensor-at-a-time access to Hugging Face safetensors checkpoints.

Only the JSON headers are parsed up front (names, dtypes, shapes, byte offsets); a tensor's
bytes are read from its file on demand, optionally just a block of rows, so analysing a pair of
checkpoints holds about two matrices in memory rather than two models. Reading raw bytes (not
through `safe_open`) also gives the exact stored bytes that the SVD cache hashes.

A checkpoint is a folder with `model.safetensors`, or shards with
`model.safetensors.index.json`, or a single `.safetensors` file; a hub id (`owner/name`,
optionally `@revision`) is fetched with `huggingface_hub.snapshot_download` (paper scale only).
"""
from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from geopd.errors import UserError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"

# safetensors dtype tag -> (torch dtype, bytes per element)
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "BF16": (torch.bfloat16, 2),
    "F16": (torch.float16, 2),
    "F32": (torch.float32, 4),
    "F64": (torch.float64, 8),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "I16": (torch.int16, 2),
    "I32": (torch.int32, 4),
    "I64": (torch.int64, 8),
    "BOOL": (torch.bool, 1),
}
FLOAT_DTYPES = frozenset({"BF16", "F16", "F32", "F64"})

_SHARD = re.compile(r"^(?P<prefix>.+)-(?P<i>\d+)-of-(?P<n>\d+)\.safetensors$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes live: `start`/`end` are absolute offsets in `file`."""
    name: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype][1] if self.dtype in DTYPES else 0

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


def read_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Tensor table of one .safetensors file, validated against the file's size."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{path}: not a safetensors file (shorter than 8 bytes; truncated?)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100 * 2**20:
                raise UserError(f"{path}: unreadable safetensors header (length {n} exceeds the file; truncated?)")
            raw = f.read(n)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable safetensors header ({exc})") from None
    base = 8 + n
    out: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = entry["dtype"], tuple(int(d) for d in entry["shape"])
            b, e = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: tensor {name}: malformed header entry {entry!r}") from None
        info = TensorInfo(name, str(path), dtype, shape, base + b, base + e)
        if info.itemsize and e - b != info.numel * info.itemsize:
            raise UserError(f"{path}: tensor {name}: {e - b} bytes for shape {list(shape)} {dtype}")
        if base + e > size:
            raise UserError(f"{path}: tensor {name} extends past the end of the file (truncated?)")
        out[name] = info
    return out


def hub_offline() -> bool:
    """HF_HUB_OFFLINE, read at call time: huggingface_hub reads it once, at import, so a value set
    later (a test, a launcher) would otherwise be ignored and every lookup would wait on network
    timeouts."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def resolve_source(source: str) -> Path:
    """A local folder or .safetensors file as is; otherwise a hub id downloaded (or found in the
    local hub cache) with huggingface_hub."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    repo_id, _, revision = source.partition("@")
    # A path, not a hub id: absolute or relative to here, or its folder exists here
    # (results/step-5 mistyped is no repo "results" on the hub).
    if source.startswith(("/", ".", "~")) or not _HUB_ID.match(source) or Path(repo_id).parent.is_dir():
        raise UserError(f"{source}: no such file or folder")
    offline = hub_offline()
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id=repo_id, revision=revision or None, local_files_only=offline,
                                  allow_patterns=["*.safetensors", "*.json"])
    except Exception as exc:  # offline, unknown repo, gated, network: all the user's to fix
        if offline:
            raise UserError(f"{source}: no such file or folder, nor a hub id in the local hub cache "
                            f"(HF_HUB_OFFLINE is set: the hub is not asked)") from None
        raise UserError(f"{source}: not a local folder, and the hub id could not be resolved "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    return Path(local)


class Checkpoint:
    """Tensor table of a checkpoint (all shards), plus its config.json when present."""

    def __init__(self, source: str, root: Path, tensors: dict[str, TensorInfo], config: dict):
        self.source = source
        self.root = root
        self.tensors = tensors
        self.config = config

    @classmethod
    def open(cls, source: str | os.PathLike) -> "Checkpoint":
        source = str(source)
        root = resolve_source(source)
        if root.is_file():
            if root.suffix != ".safetensors":
                raise UserError(f"{source}: expected a folder or a .safetensors file")
            return cls(source, root.parent, read_header(root), {})
        config = {}
        if (root / "config.json").is_file():
            try:
                config = json.loads((root / "config.json").read_text())
            except json.JSONDecodeError as exc:
                raise UserError(f"{root / 'config.json'}: not valid JSON ({exc})") from None
        return cls(source, root, _tensor_table(root), config)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise UserError(f"{self.source}: no tensor {name}") from None


def _tensor_table(root: Path) -> dict[str, TensorInfo]:
    index = root / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{index}: not a safetensors index ({exc})") from None
        headers: dict[str, dict[str, TensorInfo]] = {}
        for shard in sorted(set(weight_map.values())):
            if not (root / shard).is_file():
                raise UserError(f"{root}: shard {shard} listed in {INDEX} is missing")
            headers[shard] = read_header(root / shard)
        out = {}
        for name, shard in weight_map.items():
            if name not in headers[shard]:
                raise UserError(f"{root / shard}: tensor {name} listed in {INDEX} is not in the shard")
            out[name] = headers[shard][name]
        return out
    if (root / SINGLE).is_file():
        return read_header(root / SINGLE)
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise UserError(f"{root}: no safetensors weights (expected {SINGLE} or {INDEX})")
    _check_shard_series(root, files)
    out = {}
    for file in files:
        for name, info in read_header(file).items():
            if name in out:
                raise UserError(f"{root}: tensor {name} is in both {Path(out[name].file).name} and {file.name}")
            out[name] = info
    return out


def _check_shard_series(root: Path, files: list[Path]) -> None:
    """Without an index, `x-0000i-of-0000n.safetensors` names still tell a missing shard."""
    series: dict[tuple[str, str], set[int]] = {}
    width: dict[tuple[str, str], int] = {}
    for f in files:
        m = _SHARD.match(f.name)
        if m:
            key = (m["prefix"], m["n"])
            series.setdefault(key, set()).add(int(m["i"]))
            width[key] = len(m["i"])
    for (prefix, n), have in series.items():
        missing = sorted(set(range(1, int(n) + 1)) - have)
        if missing:
            w = width[(prefix, n)]
            raise UserError(f"{root}: shard {prefix}-{missing[0]:0{w}d}-of-{n}.safetensors is missing")


def read_raw(info: TensorInfo, rows: tuple[int, int] | None = None) -> bytearray:
    """The stored bytes of a tensor, or of rows [a, b) of its first dimension."""
    start, end = info.start, info.end
    if rows is not None:
        row_bytes = (info.end - info.start) // max(info.shape[0], 1)
        start, end = info.start + rows[0] * row_bytes, info.start + rows[1] * row_bytes
    buf = bytearray(end - start)
    try:
        with open(info.file, "rb", buffering=0) as f:
            f.seek(start)
            view, got = memoryview(buf), 0
            while got < len(buf):
                n = f.readinto(view[got:])
                if not n:
                    raise UserError(f"{info.file}: tensor {info.name}: file ends early (truncated?)")
                got += n
    except FileNotFoundError:
        raise UserError(f"{info.file}: file not found (tensor {info.name})") from None
    return buf


def to_tensor(buf: bytearray, info: TensorInfo, rows: tuple[int, int] | None = None) -> torch.Tensor:
    if info.dtype not in DTYPES:
        raise UserError(f"{info.file}: tensor {info.name}: unsupported dtype {info.dtype}")
    shape = info.shape if rows is None else (rows[1] - rows[0], *info.shape[1:])
    if not buf:
        return torch.empty(shape, dtype=DTYPES[info.dtype][0])
    return torch.frombuffer(buf, dtype=DTYPES[info.dtype][0]).view(shape)


def check_finite(t: torch.Tensor, info: TensorInfo, row_offset: int = 0) -> None:
    if not t.is_floating_point():
        return
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        idx = (~finite).nonzero()[0].tolist()
        value = t[tuple(idx)].item()
        bad = [idx[0] + row_offset, *idx[1:]] if idx else idx
        raise UserError(f"{info.file}: tensor {info.name} has a non-finite value ({value}) at index {bad}")


def read_tensor(info: TensorInfo, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Read (rows of) one tensor in its stored dtype; non-finite values are a UserError."""
    t = to_tensor(read_raw(info, rows), info, rows)
    check_finite(t, info, rows[0] if rows else 0)
    return t


def check_same_layout(a: Checkpoint, b: Checkpoint) -> None:
    """Both checkpoints must hold the same tensor names with the same shapes."""
    only_a = sorted(set(a.tensors) - set(b.tensors))
    only_b = sorted(set(b.tensors) - set(a.tensors))
    if only_a or only_b:
        parts = []
        if only_a:
            parts.append(f"{len(only_a)} only in {a.source} (e.g. {only_a[0]})")
        if only_b:
            parts.append(f"{len(only_b)} only in {b.source} (e.g. {only_b[0]})")
        raise UserError("checkpoints hold different tensors: " + "; ".join(parts))
    for name, ia in a.tensors.items():
        ib = b.tensors[name]
        if ia.shape != ib.shape:
            raise UserError(f"tensor {name}: shape {list(ia.shape)} in {a.source} "
                            f"but {list(ib.shape)} in {b.source}")
