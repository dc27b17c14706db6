"""JSON Lines: one JSON value a line; blank lines are not records.

One reader (`iter_jsonl`, `read_jsonl`) and one writer (`write_jsonl`) for every JSONL file
geopd reads or writes (prepared data, samples, per-step metrics), and the byte offsets of the
records (`line_offsets`, `parse_line`) for reading one record at a time (geopd.train.data).
A corrupt line is a UserError that names the file and the line.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Iterator

from geopd.errors import UserError
from geopd.io.atomic import replacing


def write_jsonl(path: str | os.PathLike, records: Iterable[dict], *, default=None) -> int:
    """Each record as one line of JSON (keys sorted; `default` as json.dumps takes it), written
    atomically (geopd.io.atomic.replacing); returns the number written."""
    n = 0
    with replacing(path) as fh:
        for record in records:
            fh.write(json.dumps(record, sort_keys=True, default=default) + "\n")
            n += 1
    return n


def numbered_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """(line number, record) of every record of `path`, in file order, parsed one at a time."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{lineno}: corrupt JSONL line ({exc.msg})") from None


def iter_jsonl(path: str | os.PathLike) -> Iterator:
    """The records of `path` in file order."""
    return (record for _, record in numbered_jsonl(path))


def read_jsonl(path: str | os.PathLike) -> list:
    return list(iter_jsonl(path))


def line_offsets(path: str | os.PathLike) -> list[int]:
    """Byte offset of every record (non-blank line), as `iter_jsonl` counts them."""
    offsets, pos = [], 0
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                offsets.append(pos)
            pos += len(line)
    return offsets


def parse_line(line: bytes, where: str):
    """One record read at a known offset; `where` names it in the error ("FILE: record i (byte b)")."""
    try:
        return json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{where} is a corrupt JSONL line ({exc})") from None
