"""Sim_K of each checkpoint's update to the final one's (geometry paper Fig. 5; `geopd similarity`).

Sim_K(t) = ||V_K(t)^T V_K(t_end)||_F^2 / K, with V_K(t) the top-K right singular vectors of
dW_t = W_t - W_init (exact float64 SVD) and t_end the last checkpoint given. K is clamped to
min(shape); a zero update has no singular subspace, so its Sim_K is NaN. Each worker handles
one matrix across all checkpoints, holding W_init, one W_t and the K x n bases.

Output: tidy rows (checkpoint, step, name, layer, module, k, sim); step comes from a
`step-N` folder name. The mean per checkpoint goes to --summary (.json or .csv) and stderr.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from geopd.diagnostics import metrics as M
from geopd.diagnostics.run import MatrixJob, cost, parallel_map, plan
from geopd.errors import UserError
from geopd.io.progress import Progress
from geopd.io.tensors import Checkpoint, TensorInfo, check_same_layout, read_tensor

_STEP = re.compile(r"step[-_]?(\d+)$")


def step_of(path: str) -> int | None:
    m = _STEP.search(Path(path.rstrip("/")).name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class SeriesJob:
    matrix: MatrixJob            # base = the init's tensor
    checkpoints: tuple[TensorInfo, ...]


def top_right_vectors(dW: torch.Tensor, k: int) -> torch.Tensor | None:
    """n x k orthonormal top right singular vectors of dW, None for a zero update."""
    if not bool(dW.any()):
        return None
    _, _, Vh = M.svd(dW)
    return Vh[:k].T.contiguous()


def _series(job: SeriesJob, k: int) -> list[float]:
    rows = job.matrix.rows
    w0 = read_tensor(job.matrix.base, rows).to(torch.float64)
    kk = min(k, *job.matrix.shape)

    def basis(info: TensorInfo):
        return top_right_vectors(read_tensor(info, rows).to(torch.float64) - w0, kk)

    v_end = basis(job.checkpoints[-1])
    sims = []
    for info in job.checkpoints[:-1]:
        v = basis(info)
        sims.append(float("nan") if v is None or v_end is None else M.subspace_similarity(v, v_end))
    sims.append(float("nan") if v_end is None else M.subspace_similarity(v_end, v_end))
    return sims


def similarity_series(init: str, checkpoints: list[str], k: int = 16, matrices: str = "attention",
                      workers: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tidy Sim_K rows and the per-checkpoint means."""
    if not checkpoints:
        raise UserError("similarity needs at least one checkpoint")
    base = Checkpoint.open(init)
    cks = [Checkpoint.open(c) for c in checkpoints]
    for ck in cks:
        check_same_layout(base, ck)
    jobs, _ = plan(base, cks[-1], matrices)
    if not jobs:
        raise UserError(f"{init}: no attention/MLP weight matrices to compare")
    series = [SeriesJob(j, tuple(ck.info(j.tensor) for ck in cks)) for j in sorted(jobs, key=cost, reverse=True)]
    sims, _ = parallel_map(partial(_series, k=k), series, workers,
                           progress=Progress(f"geopd similarity {init} -> {len(checkpoints)} checkpoints", len(series),
                                             unit="matrices"))
    rows = []
    for job, values in zip(series, sims):
        m = job.matrix
        for path, sim in zip(checkpoints, values):
            rows.append({"checkpoint": path, "step": step_of(path), "name": m.name, "layer": m.layer,
                         "module": m.module, "k": min(k, *m.shape), "sim": sim})
    table = pd.DataFrame(rows)
    table["step"] = table["step"].astype("Int64")
    order = {c: i for i, c in enumerate(checkpoints)}
    table = (table.assign(_c=table["checkpoint"].map(order))
             .sort_values(["_c", "layer", "name"]).drop(columns="_c").reset_index(drop=True))
    means = (table.groupby("checkpoint", sort=False)
             .agg(step=("step", "first"), mean_sim=("sim", "mean"), n_matrices=("sim", "size"),
                  n_defined=("sim", "count"))
             .reset_index())
    return table, means
