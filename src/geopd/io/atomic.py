"""Writing so that a reader never sees half a file or half a folder.

A file is written under a hidden temporary name beside its final one and renamed onto it
(`replacing`, `write_text`): the rename is atomic within one directory, so a reader finds the
old file or the new one, and a killed writer leaves only a hidden temp file. A folder is filled
under a hidden scratch name (`scratch_name`) and published with `publish_dir`: renamed onto its
final name, an existing folder swapped out with renameat2(RENAME_EXCHANGE) where the file
system allows, else moved aside first. geopd.io.publish adds manifests and the clean-up of
scratch folders that dead writers left behind.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import uuid
from pathlib import Path

from geopd.errors import UserError


@contextlib.contextmanager
def replacing(path: str | os.PathLike, mode: str = "w"):
    """An open file under a hidden temp name beside `path`, renamed onto `path` when the block
    ends without an error (removed when it raises). The parent folder is created. The file gets
    the permissions a plain open() would give it (the umask's)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """`text` into `path`, atomically (see `replacing`)."""
    with replacing(path) as fh:
        fh.write(text)


# ---- folders ---------------------------------------------------------------------------------

def scratch_name(final: Path, kind: str) -> Path:
    """A hidden sibling of `final` for a folder being written ("tmp") or replaced ("old"):
    ".{final}.geopd-{kind}-{host}-{pid}-{token}" (geopd.io.publish.SCRATCH parses it back)."""
    return final.parent / f".{final.name}.geopd-{kind}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def publish_dir(tmp: Path, final: Path) -> None:
    """Rename the finished folder `tmp` onto `final` (a sibling), replacing a folder there."""
    parent = final.parent
    if final.exists() or final.is_symlink():
        if not final.is_dir():
            raise UserError(f"{final}: exists and is not a checkpoint folder; refusing to replace it")
        if _exchange(tmp, final):
            fsync_path(parent)
            shutil.rmtree(tmp)  # now holds the old folder
            return
        old = scratch_name(final, "old")
        os.rename(final, old)
        os.rename(tmp, final)
        fsync_path(parent)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.rename(tmp, final)
    fsync_path(parent)
