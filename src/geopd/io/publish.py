"""Checkpoint folders published whole: written under a scratch name, fsynced, given a manifest,
renamed onto their final name; and checked before anything reads them.

The manifest (`manifest.json`) lists the byte size and sha256 of every file and is written
last, after every file is fsynced; only then is the folder published (geopd.io.atomic.
publish_dir). A folder under the final name therefore always has a manifest; a killed writer
leaves only a scratch folder without one, which the next save into the same parent removes
(`clean_stale`). The exported models of geopd.engines.models and the training states of
geopd.train.checkpoint are written this way.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Callable

from geopd.errors import UserError
from geopd.io.atomic import fsync_path, publish_dir, scratch_name
from geopd.io.tensors import INDEX, read_header

MANIFEST = "manifest.json"
FORMAT = "geopd-checkpoint"
VERSION = 1

# geopd.io.atomic.scratch_name's names: ".{final}.geopd-tmp-{host}-{pid}-{token}" (being
# written) and ".{final}.geopd-old-{host}-{pid}-{token}" (a replaced folder on its way out).
SCRATCH = re.compile(r"^\.(?P<final>.+)\.geopd-(?P<kind>tmp|old)-(?P<host>.+)-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})$")
# A scratch folder of another host is only presumed dead after this long (its pid means nothing here).
_FOREIGN_HOST_STALE_S = 6 * 3600


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
        m = SCRATCH.match(entry.name)
        if not m or not entry.is_dir() or not _is_stale(entry, m):
            continue
        final = parent / m["final"]
        if m["kind"] == "old" and not final.exists() and is_complete(entry):
            os.rename(entry, final)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _write_manifest(tmp: Path, fields: dict, writer: dict) -> None:
    files = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        fsync_path(path)
        files[path.relative_to(tmp).as_posix()] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {"format": FORMAT, "version": VERSION, **fields,
                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "writer": {**writer, "host": socket.gethostname()},
                "files": files}
    path = tmp / MANIFEST
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    for d in sorted({p.parent for p in tmp.rglob("*")} | {tmp}, key=lambda p: -len(p.parts)):
        fsync_path(d)


def write_atomically(directory: str | os.PathLike, write: Callable[[Path], None], fields: dict,
                     writer: dict) -> Path:
    """Call `write(tmp)` to fill a temp folder, add the manifest (`fields`, and `writer`: what
    wrote it, besides the host), rename onto `directory`."""
    final = Path(directory).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final.parent)
    tmp = scratch_name(final, "tmp")
    tmp.mkdir()
    try:
        write(tmp)
        _write_manifest(tmp, fields, writer)
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# ---- verification ----------------------------------------------------------------------------

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
            read_header(directory / name)
    if INDEX in names or (directory / INDEX).is_file():
        path = directory / INDEX
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: unreadable shard index ({exc})") from None
        for shard in sorted(set(weight_map.values())):
            if not (directory / shard).is_file():
                raise UserError(f"{directory / shard}: shard named in {INDEX} is missing")


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
        if SCRATCH.match(directory.name):
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


def is_complete(directory: Path) -> bool:
    """Whether `directory` passes the cheap `verify_checkpoint` (sizes and headers)."""
    try:
        verify_checkpoint(directory)
        return True
    except UserError:
        return False
