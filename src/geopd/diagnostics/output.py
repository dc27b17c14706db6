"""What `geopd diagnose` and `geopd similarity` write: per-matrix tables (parquet or CSV by the
extension) and JSON summaries in which undefined values (NaN, inf) are null."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from geopd.errors import UserError


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def check_table_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix not in (".parquet", ".csv"):
        raise UserError(f"{path}: output must end in .parquet or .csv")
    return path


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    path = check_table_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)


def _plain(x):
    """JSON has no NaN/inf: undefined values become null."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def write_json(obj: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(obj), indent=2) + "\n")
