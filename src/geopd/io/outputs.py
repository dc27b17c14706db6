"""A command's output paths checked before it does any work: none may equal or lie inside one of
its inputs (it would overwrite what it reads: `geopd diagnose --summary <the checkpoint>`), two
outputs may not be one file, and each must be writable (a folder it can be created in, not a
folder itself), so that hours of work never end in a traceback at the write.
"""
from __future__ import annotations

import os
from pathlib import Path

from geopd.errors import UserError


def _unwritable(path: Path) -> str | None:
    """Why `path` cannot be written as a file, or None."""
    if path.is_dir():
        return "is a folder, not a file"
    if path.exists():
        return None if os.access(path, os.W_OK) else "is not writable"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be created: {parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: {parent} is not writable"
    return None


def check_outputs(outputs: dict[str, str | os.PathLike | None], inputs: dict[str, object]) -> None:
    """`outputs` and `inputs` map an option's name (--out) to its path (None: not given; inputs
    may also be lists of paths; paths that do not exist, such as hub ids, are not compared)."""
    given = {flag: Path(p) for flag, p in outputs.items() if p is not None}
    seen: dict[Path, str] = {}
    for flag, path in given.items():
        resolved = path.resolve()
        if resolved in seen:
            raise UserError(f"{flag} {path} is also {seen[resolved]}: two outputs cannot be one file")
        seen[resolved] = flag
    for in_flag, value in inputs.items():
        for source in (value if isinstance(value, (list, tuple)) else [value]):
            if source is None or not Path(source).exists():
                continue
            read = Path(source).resolve()
            for flag, path in given.items():
                out = path.resolve()
                if out == read:
                    raise UserError(f"{flag} {path} is the input {in_flag} {source}: it would be overwritten")
                if read in out.parents:
                    raise UserError(f"{flag} {path} lies inside the input {in_flag} {source}: writing it would "
                                    f"change what is read")
    for flag, path in given.items():
        why = _unwritable(path)
        if why:
            raise UserError(f"{flag} {path} {why}")
