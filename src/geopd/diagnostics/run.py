"""Diagnostics of one checkpoint pair: plan the matrices, analyse each (in a process pool), summarise.

Per matrix the SVD work is: the full float64 SVD of W0 (from the disk cache when W0 was seen
before), the full SVD of W+ (angles need its vectors, NSS all its values; skipped when W+ is
bit-identical to W0), and the singular values only of dW = W+ - W0 (stable rank, Hill,
spectral norm and ratio, effective rank, top-1% ratio). Everything else is elementwise.

Matrix set: the attention (q, k, v, o) and MLP (gate, up, down) weight matrices of every
layer, fused qkv_proj / gate_up_proj split (SPEC: "all standard weight matrices, QKV split if
fused"); `attention` keeps q, k, v, o only. Embeddings, lm_head and norm weights are never in
the per-matrix table (an SVD of a 151936 x 4096 embedding is costly and no figure uses it);
with `all` they get elementwise figures (sparsity, update norm) in the summary, which also
holds the module-wise (embedding / attention / MLP) and layer-wise update norms of EffOPD.

Averaging (summary): bf16 sparsity is parameter-count weighted (SPEC; App. C.3 "overall
sparsity is parameter-count weighted"); every other metric, the update density included (App.
C.3: "Metrics are first computed per matrix and then averaged across matrices"), is an
unweighted mean over matrices of its finite values, so a NaN overlap (nothing changed) or an
infinite Hill estimate (flat spectrum) is left out; overlaps are also given pooled over entries,
each at every mask fraction of `Options.alphas`. Overall, per module type (q..down) and per
group (attention, mlp); the extra tensors' changed counts, so that a sparsity over all weights
(embeddings and lm_head too) can be formed.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np
import pandas as pd
import torch

from geopd.diagnostics import metrics as M
from geopd.diagnostics.cache import SvdCache, compute_svd, content_key
from geopd.diagnostics.columns import ATTENTION, METRICS, MODULES, OVERLAPS, at_alpha
from geopd.errors import UserError
from geopd.io.progress import Progress
from geopd.io.tensors import Checkpoint, TensorInfo, check_finite, check_same_layout, read_raw, to_tensor

PROJ = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
        "gate_proj": "gate", "up_proj": "up", "down_proj": "down"}
FUSED = ("qkv_proj", "gate_up_proj")
GROUPS = ("embedding", "attention", "mlp", "other")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_CHUNK_BYTES = 16 * 2**20  # stored bytes per block; float64 copies are up to 4x that


@dataclass(frozen=True)
class Options:
    matrices: str = "all"          # all | attention
    k: int = 512                   # principal-angle subspace size (clamped to min(shape))
    r: int = 64                    # rank of the W0 reconstruction for M_princ
    alphas: tuple[float, ...] = (0.5,)  # mask fractions; overlaps are computed at each
    eta: float = 1e-3              # bf16 relative tolerance
    hill_k: int | None = None      # top-k for the Hill estimate (default: k)
    workers: int = 1               # processes; each runs single-threaded
    cache_dir: str | None = None   # SVD cache of W0; None: no disk cache
    spectra: bool = False          # keep angle vectors and spectra per matrix


@dataclass(frozen=True)
class MatrixJob:
    name: str                      # row label: tensor name, "[q]" etc. appended for a fused split
    tensor: str
    layer: int
    module: str
    group: str
    rows: tuple[int, int] | None   # row block of a fused tensor
    base: TensorInfo
    tuned: TensorInfo

    @property
    def shape(self) -> tuple[int, int]:
        m = self.base.shape[0] if self.rows is None else self.rows[1] - self.rows[0]
        return (m, self.base.shape[1])


@dataclass
class Diagnosis:
    table: pd.DataFrame
    summary: dict
    spectra: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


# ---- planning --------------------------------------------------------------------------------

def group_of(name: str) -> str:
    if "embed_tokens" in name or name.split(".")[0] == "lm_head" or ".lm_head." in name:
        return "embedding"
    if ".self_attn." in name:
        return "attention"
    if ".mlp." in name:
        return "mlp"
    return "other"


def layer_of(name: str) -> int | None:
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def _fused_rows(name: str, proj: str, rows: int, config: dict) -> list[tuple[str, tuple[int, int]]]:
    if proj == "gate_up_proj":
        half = rows // 2
        return [("gate", (0, half)), ("up", (half, rows))]
    try:
        heads = int(config["num_attention_heads"])
        kv = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    except (KeyError, TypeError, ValueError):
        raise UserError(f"tensor {name}: a fused QKV matrix needs num_attention_heads (and "
                        f"num_key_value_heads, head_dim) in config.json to be split") from None
    q, k = heads * head_dim, kv * head_dim
    if q + 2 * k != rows:
        raise UserError(f"tensor {name}: {rows} rows, but config.json gives q {q} + k {k} + v {k}")
    return [("q", (0, q)), ("k", (q, q + k)), ("v", (q + k, q + 2 * k))]


def plan(base: Checkpoint, tuned: Checkpoint, matrices: str = "all") -> tuple[list[MatrixJob], list[str]]:
    """Matrices to analyse, and the other float tensors that get elementwise figures only."""
    if matrices not in ("all", "attention"):
        raise UserError(f"--matrices must be 'all' or 'attention', not {matrices!r}")
    jobs: list[MatrixJob] = []
    extras: list[str] = []
    for name, info in base.tensors.items():
        if not info.is_float:
            continue
        parts = name.split(".")
        proj = parts[-2] if len(parts) >= 2 and parts[-1] == "weight" else None
        layer = layer_of(name)
        is_matrix = len(info.shape) == 2 and layer is not None and (proj in PROJ or proj in FUSED)
        group = group_of(name)
        if not is_matrix:
            if matrices == "all" or group == "attention":
                extras.append(name)
            continue
        splits = ([(PROJ[proj], None)] if proj in PROJ
                  else _fused_rows(name, proj, info.shape[0], base.config or tuned.config))
        for module, rows in splits:
            if matrices == "attention" and module not in ATTENTION:
                continue
            label = name if rows is None else f"{name}[{module}]"
            jobs.append(MatrixJob(label, name, layer, module,
                                  "attention" if module in ATTENTION else "mlp",
                                  rows, info, tuned.info(name)))
    return jobs, extras


# ---- one matrix ------------------------------------------------------------------------------

def _init_worker() -> None:
    torch.set_num_threads(1)


def _degrees(theta: torch.Tensor) -> tuple[float, float]:
    if theta.numel() == 0:
        return float("nan"), float("nan")
    d = torch.rad2deg(theta)
    return float(d.mean()), float(d.max())


def analyse(job: MatrixJob, opts: Options) -> tuple[dict, dict, dict]:
    """Row of metrics, optional spectra, and timings (read, svd, other seconds) of one matrix."""
    clock = time.perf_counter
    t0 = clock()
    raw0 = read_raw(job.base, job.rows)
    raw1 = read_raw(job.tuned, job.rows)
    w0 = to_tensor(raw0, job.base, job.rows)
    w1 = to_tensor(raw1, job.tuned, job.rows)
    offset = job.rows[0] if job.rows else 0
    check_finite(w0, job.base, offset)
    check_finite(w1, job.tuned, offset)
    key = content_key(raw0, job.base.dtype, job.shape)
    identical = job.base.dtype == job.tuned.dtype and raw0 == raw1
    del raw1
    t_read = clock() - t0

    m, n = job.shape
    p = min(m, n)
    k, r = min(opts.k, p), min(opts.r, p)
    cache = SvdCache(opts.cache_dir)
    t0 = clock()
    svd0 = cache.get(key, max(k, r))
    hit = svd0 is not None
    if svd0 is None:
        svd0 = compute_svd(w0, max(k, r))
        cache.put(key, svd0)
    svd1 = svd0 if identical else compute_svd(w1, k)
    dW = w1.to(torch.float64) - w0.to(torch.float64)
    frobenius = float(torch.linalg.matrix_norm(dW))
    s_upd = torch.zeros(p, dtype=torch.float64) if identical else M.svdvals(dW)
    del dW
    theta_u = M.principal_angles(svd0.U[:, :k], svd1.U[:, :k])
    theta_v = M.principal_angles(svd0.Vh[:k].T, svd1.Vh[:k].T)
    t_svd = clock() - t0

    t0 = clock()
    upd = M.changed_mask(w0, w1, opts.eta)
    del w1
    n_changed = int(upd.sum())
    recon = M.low_rank(svd0.U, svd0.s, svd0.Vh, r)
    # |W0| ranks the same in fp32 for 16/32-bit weights (exact), at half the memory of fp64
    magnitude = w0 if w0.dtype == torch.float64 else w0.to(torch.float32)
    masks = {}
    for alpha in opts.alphas:
        n_princ = int((M.top_fraction_mask(recon, alpha) & upd).sum())
        n_low = int((M.bottom_fraction_mask(magnitude, alpha) & upd).sum())
        for column, hits in (("princ_overlap", n_princ), ("low_overlap", n_low)):
            masks[at_alpha(OVERLAPS[column], alpha)] = hits
            masks[at_alpha(column, alpha)] = hits / n_changed if n_changed else float("nan")
    del recon, magnitude, upd
    numel = m * n
    u_mean, u_max = _degrees(theta_u)
    v_mean, v_max = _degrees(theta_v)
    row = {
        "name": job.name, "tensor": job.tensor, "layer": job.layer, "module": job.module,
        "group": job.group, "shape": f"{m}x{n}", "rows": m, "cols": n, "numel": numel, "k": k,
        "n_changed": n_changed,
        "bf16_sparsity": 1.0 - n_changed / numel,
        "update_density": n_changed / numel,
        "nss": M.nss(svd0.s, svd1.s),
        "frobenius": frobenius,
        **M.update_spectrum_metrics(s_upd, (m, n), opts.hill_k or opts.k),
        "angle_u_mean_deg": u_mean, "angle_v_mean_deg": v_mean,
        "angle_u_max_deg": u_max, "angle_v_max_deg": v_max,
        **masks,
    }
    spectra = {}
    if opts.spectra:
        spectra = {"angles_u_deg": torch.rad2deg(theta_u).numpy(),
                   "angles_v_deg": torch.rad2deg(theta_v).numpy(),
                   "s_base": svd0.s.numpy(), "s_tuned": svd1.s.numpy(), "s_update": s_upd.numpy()}
    timing = {"read_s": t_read, "svd_s": t_svd, "other_s": clock() - t0, "cache_hit": hit}
    return row, spectra, timing


def elementwise(name: str, a: TensorInfo, b: TensorInfo, eta: float) -> dict:
    """Sparsity and update norm of a tensor outside the matrix set, read in row blocks."""
    rows = a.shape[0] if a.shape else 0
    step = max(1, _CHUNK_BYTES // max(1, (a.end - a.start) // max(rows, 1))) if rows else 0
    blocks = [(i, min(i + step, rows)) for i in range(0, rows, step)] if rows else [None]
    n_changed, sumsq, t_read = 0, 0.0, 0.0
    for blk in blocks:
        t0 = time.perf_counter()
        w0 = to_tensor(read_raw(a, blk), a, blk)
        w1 = to_tensor(read_raw(b, blk), b, blk)
        t_read += time.perf_counter() - t0
        changed, sq = M.elementwise_update(w0, w1, eta)
        if not math.isfinite(sq):  # only then pay for locating the bad entry
            off = blk[0] if blk else 0
            check_finite(w0, a, off)
            check_finite(w1, b, off)
        n_changed += changed
        sumsq += sq
    return {"name": name, "group": group_of(name), "layer": layer_of(name), "numel": a.numel,
            "n_changed": n_changed, "sumsq": sumsq, "read_s": t_read}


# ---- whole pair ------------------------------------------------------------------------------

def parallel_map(fn, items: list, workers: int, side_work=lambda: None,
                 progress: Progress | None = None) -> tuple[list, object]:
    """[fn(item) for item in items] over a pool of single-threaded worker processes (in this
    process when workers <= 1); `side_work()` runs here meanwhile. The first error (a
    UserError naming the tensor) stops the other workers and is raised here. `progress`
    counts the items done."""
    progress = progress or Progress("", len(items), enabled=False)
    progress.begin()
    if workers <= 1 or len(items) <= 1:
        out = []
        for item in items:
            out.append(fn(item))
            progress.advance()
        return out, side_work()
    ctx = mp.get_context("spawn")  # fork after torch/OpenMP start-up is unsafe
    pool = ProcessPoolExecutor(min(workers, len(items)), mp_context=ctx, initializer=_init_worker)
    ok = False
    try:
        futures = [pool.submit(fn, item) for item in items]
        side = side_work()
        for f in as_completed(futures):
            if f.exception() is not None:
                raise f.exception()
            progress.advance()
        ok = True
        return [f.result() for f in futures], side
    finally:
        if not ok:
            # Do not wait for the other workers' (possibly minutes-long) SVDs; the interpreter
            # would join them at exit, so stop them (these are our own worker processes).
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()
        pool.shutdown(wait=ok, cancel_futures=not ok)


def cost(job: MatrixJob) -> int:
    """Relative SVD cost, to start the largest matrices first (better packing on the pool)."""
    m, n = job.shape
    return m * n * min(m, n)


def diagnose(base: str, tuned: str, opts: Options = Options()) -> Diagnosis:
    if opts.workers < 1:
        raise UserError("--workers must be at least 1")
    t_start = time.perf_counter()
    b, t = Checkpoint.open(base), Checkpoint.open(tuned)
    check_same_layout(b, t)
    jobs, extra_names = plan(b, t, opts.matrices)
    if not jobs:
        raise UserError(f"{base}: no attention/MLP weight matrices (expected names like "
                        f"model.layers.0.self_attn.q_proj.weight)")

    side_clock = {}

    def side_work():
        t0 = time.perf_counter()
        out = [elementwise(name, b.info(name), t.info(name), opts.eta) for name in extra_names]
        side_clock["s"] = time.perf_counter() - t0
        return out

    order = sorted(jobs, key=cost, reverse=True)
    results, extras = parallel_map(partial(analyse, opts=opts), order, opts.workers, side_work,
                                   Progress(f"geopd diagnose {tuned}", len(order), unit="matrices"))
    rows = [r for r, _, _ in results]
    table = pd.DataFrame(rows)
    table["_order"] = table["module"].map({m: i for i, m in enumerate(MODULES)})
    table = table.sort_values(["layer", "_order", "name"]).drop(columns="_order").reset_index(drop=True)
    timing = {
        "wall_s": time.perf_counter() - t_start,
        "read_s": sum(tm["read_s"] for _, _, tm in results),
        "svd_s": sum(tm["svd_s"] for _, _, tm in results),
        "other_s": sum(tm["other_s"] for _, _, tm in results),
        # the main process's elementwise pass over the non-matrix tensors (embeddings, norms)
        "extras_s": side_clock.get("s", 0.0),
        "extras_read_s": sum(e["read_s"] for e in extras),
        "cache_hits": sum(bool(tm["cache_hit"]) for _, _, tm in results),
        "cache_misses": sum(not tm["cache_hit"] for _, _, tm in results),
        "workers": opts.workers,
    }
    summary = summarize(table, extras, opts)
    summary = {"base": base, "tuned": tuned, "options": asdict(opts), **summary,
               "warnings": degenerate_settings(table, opts), "timing": timing}
    spectra = {r["name"]: s for r, s, _ in results if s}
    return Diagnosis(table, summary, spectra)


# ---- summary ---------------------------------------------------------------------------------

def degenerate_settings(table: pd.DataFrame, opts: Options) -> list[str]:
    """k or r that reach a matrix's full rank make a metric trivial (small miniature models)."""
    p = table[["rows", "cols"]].min(axis=1)
    out = []
    n_k = int((table["k"] >= p).sum())
    if n_k:
        out.append(f"k={opts.k} covers the full rank of {n_k}/{len(table)} matrices: there the top-k "
                   f"subspace on the shorter side is the whole space and its principal angles are 0 "
                   f"by construction (choose k well below min(shape), e.g. 1/8 of the hidden size)")
    n_r = int((p <= opts.r).sum())
    if n_r:
        out.append(f"r={opts.r} covers the full rank of {n_r}/{len(table)} matrices: there the rank-r "
                   f"reconstruction is W0 itself and M_princ is just the top-alpha of |W0|")
    return out


def _finite_mean(x: pd.Series) -> float | None:
    v = pd.to_numeric(x, errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


def _block(df: pd.DataFrame, alphas: tuple[float, ...]) -> dict:
    numel, changed = int(df["numel"].sum()), int(df["n_changed"].sum())
    out = {
        "n_matrices": int(len(df)),
        "numel": numel,
        "n_changed": changed,
        "bf16_sparsity": 1.0 - changed / numel if numel else None,   # parameter-count weighted
        "mean": {m: _finite_mean(df[m]) for m in METRICS},             # unweighted over matrices
    }
    for alpha in alphas:
        for column, count in OVERLAPS.items():
            out["mean"][at_alpha(column, alpha)] = _finite_mean(df[at_alpha(column, alpha)])
            # pooled over entries: |M* & M_upd| summed / |M_upd| summed
            out[at_alpha(f"{column}_pooled", alpha)] = (int(df[at_alpha(count, alpha)].sum()) / changed
                                                        if changed else None)
    return out


def summarize(table: pd.DataFrame, extras: list[dict], opts: Options) -> dict:
    """Overall, per module type and per group figures; module- and layer-wise update norms."""
    a = opts.alphas
    out = {"random_overlap_baseline": list(a), "overall": _block(table, a)}
    out["by_module"] = {m: _block(table[table["module"] == m], a) for m in MODULES if (table["module"] == m).any()}
    out["by_group"] = {g: _block(table[table["group"] == g], a) for g in ("attention", "mlp")
                       if (table["group"] == g).any()}

    # Update norms: matrices (Frobenius^2 per row) + every other tensor of the chosen set.
    items = [(g, lay, f * f) for g, lay, f in zip(table["group"], table["layer"], table["frobenius"])]
    items += [(e["group"], e["layer"], e["sumsq"]) for e in extras]
    groups: dict[str, float] = {}
    layers: dict[int, dict[str, float]] = {}
    for g, lay, sq in items:
        groups[g] = groups.get(g, 0.0) + sq
        if lay is not None and not (isinstance(lay, float) and math.isnan(lay)):
            d = layers.setdefault(int(lay), {})
            d[g] = d.get(g, 0.0) + sq
    out["module_norms"] = {g: math.sqrt(groups[g]) for g in GROUPS if g in groups}
    out["module_norms"]["total"] = math.sqrt(sum(groups.values()))
    out["layer_norms"] = [{"layer": lay, **{g: math.sqrt(v[g]) for g in GROUPS if g in v},
                           "total": math.sqrt(sum(v.values()))} for lay, v in sorted(layers.items())]

    out["extra_tensors"] = {}
    for g in GROUPS:
        es = [e for e in extras if e["group"] == g]
        if not es:
            continue
        numel, changed = sum(e["numel"] for e in es), sum(e["n_changed"] for e in es)
        out["extra_tensors"][g] = {
            "n_tensors": len(es), "numel": numel, "n_changed": changed,
            "bf16_sparsity": 1.0 - changed / numel if numel else None,
            "frobenius": math.sqrt(sum(e["sumsq"] for e in es)),
            "tensors": {e["name"]: {"numel": e["numel"],
                                    "bf16_sparsity": 1.0 - e["n_changed"] / e["numel"] if e["numel"] else None,
                                    "frobenius": math.sqrt(e["sumsq"])} for e in es},
        }
    return out
