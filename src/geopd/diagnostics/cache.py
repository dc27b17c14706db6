"""On-disk cache of the float64 SVD of W0 matrices, keyed by the stored bytes of the matrix.

Why a content hash (BLAKE2b of the tensor's stored bytes, dtype and shape) rather than the
cheaper file path + tensor name + header offsets: W0 (an SFT anchor, a base model) is shared
by many runs and reached through different paths (hub snapshot, local copy, a re-exported
checkpoint after a Snakemake rerun); a path key would miss those or, worse, hit a stale entry
after a rewrite. The bytes of W0 are read anyway for the elementwise metrics, so hashing them
costs ~0.1 s for the largest 8B matrix, against 10-70 s for its SVD.

An entry holds all singular values and the top `keep` left/right singular vectors; a request
for more vectors than stored recomputes and replaces it. Writes are atomic (temp file +
rename), so concurrent jobs can share one directory; at worst two compute the same entry.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geopd.diagnostics.metrics import svd
from geopd.io.atomic import replacing

VERSION = 1


@dataclass
class Svd:
    s: torch.Tensor   # all singular values, descending, float64
    U: torch.Tensor   # m x keep
    Vh: torch.Tensor  # keep x n

    @property
    def keep(self) -> int:
        return self.U.shape[1]


def content_key(raw: bytes | bytearray | memoryview, dtype: str, shape: tuple[int, ...]) -> str:
    h = hashlib.blake2b(digest_size=20)
    h.update(f"geopd-svd-v{VERSION}|{dtype}|{'x'.join(map(str, shape))}|".encode())
    h.update(raw)
    return h.hexdigest()


def compute_svd(w: torch.Tensor, keep: int) -> Svd:
    """Exact float64 SVD (LAPACK gesdd), keeping the top `keep` singular vectors."""
    U, s, Vh = svd(w)
    keep = min(keep, s.numel())
    return Svd(s, U[:, :keep].contiguous(), Vh[:keep].contiguous())


class SvdCache:
    """`directory=None` disables the disk (every lookup misses, nothing is written)."""

    def __init__(self, directory: str | os.PathLike | None):
        self.directory = Path(directory) if directory else None

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / key[:2] / f"{key}.npz"

    def get(self, key: str, keep: int) -> Svd | None:
        if self.directory is None:
            return None
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                svd = Svd(torch.from_numpy(z["s"]), torch.from_numpy(z["U"]), torch.from_numpy(z["Vh"]))
        except Exception as exc:  # a torn or foreign file: recompute rather than fail the run
            warnings.warn(f"ignoring unreadable SVD cache entry {path}: {exc}")
            return None
        if svd.keep < min(keep, svd.s.numel()):
            return None
        return svd

    def put(self, key: str, svd: Svd) -> None:
        if self.directory is None:
            return
        path = self._path(key)
        with replacing(path, "wb") as f:
            np.savez(f, s=svd.s.numpy(), U=svd.U.numpy(), Vh=svd.Vh.numpy())
