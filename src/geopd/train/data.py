"""Training data: records read on demand from disk and deterministic, resumable batches.

Records: a prepared JSONL file is read through an index of line offsets (`JsonlRecords`), so a
process holds only the records it is working on, never the file (Dolci-Think: ~275k long
conversations). Every data-parallel rank draws the same global order (`RecordStream`) and
`shard` slices each batch lazily: a rank parses only its own share. Their tokenisation in the
chat format is geopd.engines.chat's.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from geopd.errors import UserError
from geopd.io.atomic import replacing
from geopd.io.jsonl import line_offsets, parse_line


# ---- records on disk ------------------------------------------------------------------------

def index_path(path: Path, cache_dir: Path) -> Path:
    """Where the offsets of `path` are cached: keyed by the file's absolute path, size and
    mtime, so a re-prepared file is never read through a stale index."""
    st = path.stat()
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    return cache_dir / f"{path.stem}.{key}.{st.st_size}.{st.st_mtime_ns}.offsets.npy"


def build_index(path: str | Path, cache_dir: str | Path) -> Path:
    """Scan `path` once and cache its line offsets under `cache_dir` (atomic; reused if there)."""
    import numpy as np

    path, cache_dir = Path(path), Path(cache_dir)
    if not path.is_file():
        raise UserError(f"data file not found: {path} (run the prepare_data rule first)")
    out = index_path(path, cache_dir)
    if out.is_file():
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    offsets = np.asarray(line_offsets(path), dtype=np.int64)
    with replacing(out, "wb") as fh:
        np.save(fh, offsets)
    return out


class JsonlRecords(Sequence):
    """The records of a JSONL file, parsed only when asked for (by position, in file order).

    Holds the offsets (8 bytes a record) and an open file; `records[i]` seeks and parses one
    line. Build the index first with `build_index` (one process; the others then open it).
    """

    def __init__(self, path: str | Path, cache_dir: str | Path):
        import numpy as np

        self.path = Path(path)
        self.offsets = np.load(build_index(self.path, cache_dir))  # checks the file; reuses a cached index
        self._fh = None

    def __len__(self) -> int:
        return len(self.offsets)

    def _read(self, i: int) -> dict:
        if self._fh is None:
            self._fh = open(self.path, "rb")
        offset = int(self.offsets[i])
        self._fh.seek(offset)
        return parse_line(self._fh.readline(), f"{self.path}: record {i} (byte {offset})")

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._read(k) for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._read(i)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class Batch(Sequence):
    """A batch by reference: positions into `records`, parsed only when indexed or sliced, so a
    rank that takes its `shard` reads only its own records."""

    def __init__(self, records: Sequence, indices: list[int]):
        self.records = records
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self.records[i] for i in self.indices[k]]
        return self.records[self.indices[k]]


# ---- batches ------------------------------------------------------------------------------

@dataclass
class Position:
    epoch: int = 0
    offset: int = 0


class RecordStream:
    """Yields global batches in a seeded order, epoch after epoch; the position resumes exactly.

    Every data-parallel rank builds the same stream and takes its own slice of each batch
    (`shard(stream.next(n), rank, world)`), so no rank ever needs another's position. A batch
    that reaches the end of an epoch is completed from the next epoch's order, so every record
    is seen exactly once per epoch.
    """

    def __init__(self, records: Sequence, seed: int, position: Position | None = None):
        self.records = records
        self.seed = seed
        self.position = position or Position()
        self._order = self._permutation(self.position.epoch)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.records)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next(self, n: int) -> Batch:
        idx: list[int] = []
        while len(idx) < n:
            if self.position.offset >= len(self._order):
                self.position = Position(self.position.epoch + 1, 0)
                self._order = self._permutation(self.position.epoch)
            take = min(n - len(idx), len(self._order) - self.position.offset)
            idx += self._order[self.position.offset:self.position.offset + take]
            self.position.offset += take
        return Batch(self.records, idx)

    @property
    def epochs(self) -> float:
        """Passes over the data so far (records drawn / records): 5.0 after exactly 5 epochs."""
        return (self.position.epoch * len(self.records) + self.position.offset) / len(self.records)

    def state(self) -> dict:
        return {"epoch": self.position.epoch, "offset": self.position.offset}


def shard(items: Sequence, rank: int, world: int) -> list:
    """This rank's contiguous slice; none dropped: the first len(items) % world ranks take one
    item more than the others (300 prompts on 16 ranks: 12 ranks of 19, 4 of 18)."""
    per, extra = divmod(len(items), world)
    start = rank * per + min(rank, extra)
    return list(items[start:start + per + (rank < extra)])


