#!/usr/bin/env python
"""Benchmark `geopd diagnose` against a plain per-metric implementation.

Builds a checkpoint pair shaped like Qwen3-0.6B (hidden 1024, intermediate 3072, 16 q heads /
8 kv heads of dim 128, tied 151936 x 1024 embedding; --layers of the 28) with random bf16
weights and a structured update (rank-16 part + 5% sparse part, computed in fp32), the tuned
one as 2 shards with an index. Then, each in its own subprocess (for a clean peak-RSS figure):

- plain: both whole models loaded with safetensors.load_file; each metric a self-contained
  function that takes its own full float64 SVD (torch.linalg.svd, all vectors): 2+2 for the U
  and V angles, 2 for NSS, 1 for the principal mask, 1 each for stable rank, Hill, spectral
  norm, spectral/Frobenius, effective rank and top-1% (13 per matrix). torch uses all cores.
- geopd, 1 worker, cold cache; geopd, N workers, cold cache; geopd, N workers, warm cache.

Prints wall time, speed ratio against plain, peak RSS (main process, and the largest pool
worker), the split between reading and SVD, and the largest disagreement between the two
implementations per metric.

    .venv/bin/python scripts/bench_diagnostics.py --layers 2
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from geopd.diagnostics.columns import METRICS, overlap_columns

HIDDEN, INTER, HEADS, KV, HEAD_DIM, VOCAB = 1024, 3072, 16, 8, 128, 151936


# ---- the checkpoint pair ---------------------------------------------------------------------

def shapes(layers: int, vocab: int) -> dict[str, tuple[int, ...]]:
    out = {"model.embed_tokens.weight": (vocab, HIDDEN), "model.norm.weight": (HIDDEN,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out.update({
            p + "self_attn.q_proj.weight": (HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.k_proj.weight": (KV * HEAD_DIM, HIDDEN),
            p + "self_attn.v_proj.weight": (KV * HEAD_DIM, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HEADS * HEAD_DIM),
            p + "self_attn.q_norm.weight": (HEAD_DIM,),
            p + "self_attn.k_norm.weight": (HEAD_DIM,),
            p + "mlp.gate_proj.weight": (INTER, HIDDEN),
            p + "mlp.up_proj.weight": (INTER, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, INTER),
            p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,),
        })
    return out


def make_pair(root: Path, layers: int, vocab: int, seed: int = 0) -> tuple[Path, Path]:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    base, tuned = {}, {}
    for name, shape in shapes(layers, vocab).items():
        if len(shape) == 1:
            w0 = 1.0 + 0.1 * torch.randn(shape, generator=g)
            w1 = w0 + 1e-3 * torch.randn(shape, generator=g)
        else:
            m, n = shape
            w0 = 0.02 * torch.randn(m, n, generator=g)
            if "embed" in name:  # embeddings: sparse rows move (tokens seen in training)
                w1 = w0 + 2e-3 * torch.randn(m, n, generator=g) * (torch.rand(m, 1, generator=g) < 0.1)
            else:  # low-rank drift, mostly below half a bf16 step, plus a visible sparse part
                low = torch.randn(m, 16, generator=g) @ torch.randn(16, n, generator=g)
                w1 = w0 + 1.5e-5 * low + 1e-3 * torch.randn(m, n, generator=g) * (torch.rand(m, n, generator=g) < 0.05)
        base[name] = w0.to(torch.bfloat16)
        tuned[name] = w1.to(torch.bfloat16)
    config = {"model_type": "qwen3", "hidden_size": HIDDEN, "intermediate_size": INTER,
              "num_attention_heads": HEADS, "num_key_value_heads": KV, "head_dim": HEAD_DIM,
              "num_hidden_layers": layers, "vocab_size": vocab, "tie_word_embeddings": True}
    b, t = root / "base", root / "tuned"
    for d in (b, t):
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(config))
    save_file(base, str(b / "model.safetensors"))
    names = sorted(tuned)
    halves = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, part in enumerate(halves):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: tuned[n] for n in part}, str(t / fname))
        weight_map.update({n: fname for n in part})
    (t / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return b, t


# ---- the plain implementation ----------------------------------------------------------------

class Clock:
    svd = 0.0
    count = 0


def full_svd(x):
    import torch
    t = time.perf_counter()
    out = torch.linalg.svd(x, full_matrices=False)
    Clock.svd += time.perf_counter() - t
    Clock.count += 1
    return out


def load_model(folder: Path) -> dict:
    from safetensors.torch import load_file
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    out = {}
    for f in files:
        out.update(load_file(str(folder / f)))
    return out


def plain_metrics(a, b, k, r, alpha, eta) -> dict:
    """One matrix, every metric computing its own SVDs (a, b: float64)."""
    import numpy as np
    import torch

    def changed():
        x, y = a.to(torch.bfloat16).float(), b.to(torch.bfloat16).float()
        return (y - x).abs() > eta * torch.maximum(x.abs(), y.abs())

    def angles(side):
        ua, _, va = full_svd(a)
        ub, _, vb = full_svd(b)
        A, B = (ua[:, :k], ub[:, :k]) if side == "u" else (va[:k].T, vb[:k].T)
        cos = torch.linalg.svdvals(A.T @ B).clamp(0, 1)
        sin = torch.linalg.svdvals(B - A @ (A.T @ B)).clamp(0, 1).flip(0)
        return torch.rad2deg(torch.where(cos * cos >= 0.5, torch.arcsin(sin), torch.arccos(cos)))

    def nss():
        sa, sb = full_svd(a)[1], full_svd(b)[1]
        return float((sb - sa).norm() / sa.norm())

    def pick(values, largest):
        flat = values.abs().reshape(-1).numpy()
        m = int(round(alpha * flat.size))
        order = np.argsort(-flat if largest else flat, kind="stable")[:m]
        mask = np.zeros(flat.size, bool)
        mask[order] = True
        return torch.from_numpy(mask).view(values.shape)

    def princ_overlap():
        u, s, vh = full_svd(a)
        upd = changed()
        return int((pick((u[:, :r] * s[:r]) @ vh[:r], True) & upd).sum()) / int(upd.sum())

    def low_overlap():
        upd = changed()
        return int((pick(a, False) & upd).sum()) / int(upd.sum())

    def dsv():
        return full_svd(b - a)[1]

    def stable_rank():
        s = dsv()
        return float(s.pow(2).sum() / s[0] ** 2)

    def hill():
        s = dsv()
        tol = s[0] * max(a.shape) * torch.finfo(s.dtype).eps
        kk = min(k, int((s > tol).sum()))
        return float(1 / torch.log(s[: kk - 1] / s[kk - 1]).mean())

    def eff_rank():
        s = dsv()
        p = s[s > 0] / s.sum()
        return math.exp(float(-(p * p.log()).sum()))

    def top1():
        s = dsv()
        return float(s[: math.ceil(0.01 * s.numel())].norm() / s.norm())

    au, av = angles("u"), angles("v")
    density = int(changed().sum()) / a.numel()
    return {
        "bf16_sparsity": 1 - density, "update_density": density, "nss": nss(),
        f"princ_overlap@{alpha:g}": princ_overlap(), f"low_overlap@{alpha:g}": low_overlap(),
        "frobenius": float((b - a).norm()),
        "stable_rank": stable_rank(), "hill_alpha": hill(), "spectral_norm": float(dsv()[0]),
        "spectral_frobenius_ratio": float(dsv()[0] / (b - a).norm()),
        "effective_rank": eff_rank(), "top1pct_norm_ratio": top1(),
        "angle_u_mean_deg": float(au.mean()), "angle_v_mean_deg": float(av.mean()),
        "angle_u_max_deg": float(au.max()), "angle_v_max_deg": float(av.max()),
    }


def run_plain(base: Path, tuned: Path, out: Path, k: int, r: int) -> dict:
    import pandas as pd
    import torch

    from geopd.diagnostics.run import PROJ, layer_of

    t0 = time.perf_counter()
    W0, W1 = load_model(base), load_model(tuned)
    read_s = time.perf_counter() - t0
    rows = []
    for name in W0:
        parts = name.split(".")
        if len(W0[name].shape) != 2 or layer_of(name) is None or parts[-2] not in PROJ:
            continue
        a, b = W0[name].to(torch.float64), W1[name].to(torch.float64)
        kk, rr = min(k, *a.shape), min(r, *a.shape)
        rows.append({"name": name, **plain_metrics(a, b, kk, rr, 0.5, 1e-3)})
    wall = time.perf_counter() - t0
    pd.DataFrame(rows).to_csv(out, index=False)
    return {"wall_s": wall, "read_s": read_s, "svd_s": Clock.svd, "svd_calls": Clock.count,
            "other_s": wall - read_s - Clock.svd, "threads": torch.get_num_threads()}


def run_geopd(base: Path, tuned: Path, out: Path, k: int, r: int, workers: int, cache: Path) -> dict:
    import torch

    from geopd.diagnostics.run import Options, diagnose

    torch.set_num_threads(1)
    res = diagnose(str(base), str(tuned), Options(k=k, r=r, workers=workers, cache_dir=str(cache)))
    res.table.to_csv(out, index=False)
    tm = res.summary["timing"]
    return {**tm, "read_s": tm["read_s"] + tm["extras_read_s"],
            "other_s": tm["other_s"] + tm["extras_s"] - tm["extras_read_s"], "svd_calls": f"{2 * len(res.table) - tm['cache_hits']} full + {len(res.table)} values-only"}


def child(args) -> None:
    d = Path(args.dir)
    if args.child == "plain":
        info = run_plain(d / "base", d / "tuned", Path(args.table), args.k, args.r)
    else:
        info = run_geopd(d / "base", d / "tuned", Path(args.table), args.k, args.r, args.workers, d / "cache")
    with open("/proc/self/status") as f:  # VmHWM: this process's own peak, reset at exec
        hwm = next(int(x.split()[1]) for x in f if x.startswith("VmHWM:"))
    info["peak_rss_main_mib"] = hwm / 1024
    print("RESULT " + json.dumps(info))


# ---- driver ----------------------------------------------------------------------------------

def _rss_tree(root: int) -> dict[int, int]:
    """Resident bytes of `root` and all its descendants, from /proc."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier += kids
    page = os.sysconf("SC_PAGE_SIZE")
    out = {}
    for p in tree:
        try:
            with open(f"/proc/{p}/statm") as f:
                out[p] = int(f.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
    return out


def spawn(mode: str, d: Path, args, workers: int, table: Path) -> dict:
    """Run one approach in a subprocess, sampling the RSS of its process tree every 50 ms
    (ru_maxrss would count pages the fork inherited from this driver)."""
    cmd = [sys.executable, __file__, "--child", mode, "--dir", str(d), "--table", str(table),
           "--k", str(args.k), "--r", str(args.r), "--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_total, peak_proc = 0, {}
    while proc.poll() is None:
        rss = _rss_tree(proc.pid)
        peak_total = max(peak_total, sum(rss.values()))
        for p, v in rss.items():
            peak_proc[p] = max(peak_proc.get(p, 0), v)
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    if proc.returncode:
        sys.exit(f"{mode} failed:\n{stderr[-4000:]}")
    info = json.loads([x for x in stdout.splitlines() if x.startswith("RESULT ")][-1][len("RESULT "):])
    others = [v for p, v in peak_proc.items() if p != proc.pid]
    info["peak_rss_tree_mib"] = peak_total / 2**20
    info["peak_rss_worker_mib"] = max(others) / 2**20 if others else 0.0
    return info


def compare(a: Path, b: Path) -> dict[str, float]:
    import numpy as np
    import pandas as pd
    x = pd.read_csv(a).set_index("name")
    y = pd.read_csv(b).set_index("name").loc[x.index]
    out = {}
    for m in (*METRICS, *(c for c in overlap_columns(x.columns) if c in y.columns)):
        u, v = x[m].to_numpy(float), y[m].to_numpy(float)
        out[m] = float(np.nanmax(np.abs(u - v) / np.maximum(np.abs(u), 1e-12)))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=2, help="decoder layers of the 28 (default 2)")
    p.add_argument("--vocab", type=int, default=VOCAB, help="embedding rows (default Qwen3's 151936)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--k", type=int, default=512)
    p.add_argument("--r", type=int, default=64)
    p.add_argument("--skip-plain", action="store_true")
    p.add_argument("--json", help="write the figures here too")
    p.add_argument("--child", choices=["plain", "geopd"], help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    p.add_argument("--table", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-diag-") as tmp:
        d = Path(tmp)
        t = time.perf_counter()
        make_pair(d, args.layers, args.vocab)
        size = sum(f.stat().st_size for f in d.rglob("*.safetensors")) / 2**20
        print(f"pair: {args.layers} layers x 7 matrices, vocab {args.vocab}, {size:.0f} MiB on disk, "
              f"built in {time.perf_counter() - t:.1f} s; k={args.k} r={args.r}; {args.workers} cores", flush=True)
        runs = {}
        if not args.skip_plain:
            runs["plain"] = spawn("plain", d, args, args.workers, d / "plain.csv")
            print("plain done", flush=True)
        runs["geopd 1 worker, cold"] = spawn("geopd", d, args, 1, d / "g1.csv")
        (d / "cache").rename(d / "cache-1")  # keep the next run cold
        runs[f"geopd {args.workers} workers, cold"] = spawn("geopd", d, args, args.workers, d / "gn.csv")
        runs[f"geopd {args.workers} workers, warm"] = spawn("geopd", d, args, args.workers, d / "gw.csv")
        diffs = compare(d / "plain.csv", d / "gn.csv") if "plain" in runs else {}
        same = compare(d / "gn.csv", d / "gw.csv")

    ref = runs.get("plain", {}).get("wall_s")
    print("\n| run | wall s | speed-up vs plain | read s | SVD s | other s | SVD calls "
          "| peak RSS MiB: main / largest worker / whole tree |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        ratio = f"{ref / r['wall_s']:.1f}x" if ref else "-"
        print(f"| {name} | {r['wall_s']:.1f} | {ratio} | {r['read_s']:.1f} | {r['svd_s']:.1f} | {r['other_s']:.1f} "
              f"| {r['svd_calls']} | {r['peak_rss_main_mib']:.0f} / {r['peak_rss_worker_mib']:.0f} "
              f"/ {r['peak_rss_tree_mib']:.0f} |")
    print("\n(geopd read/SVD/other are seconds summed over workers, plus the main process's "
          "elementwise pass over embeddings and norms in 'other'; plain uses "
          f"{runs['plain']['threads'] if 'plain' in runs else '-'} torch threads and reads through "
          "safetensors' mmap, so its reading shows up inside the metrics; the page cache is warm "
          "for every run, the files having just been written; the tree's RSS sum counts shared "
          "library pages once per process)")
    if diffs:
        print("largest relative difference plain vs geopd per metric: "
              + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    print(f"warm vs cold identical: {all(v == 0 for v in same.values())}")
    if args.json:
        Path(args.json).write_text(json.dumps({"layers": args.layers, "vocab": args.vocab, "workers": args.workers,
                                               "runs": runs, "max_rel_diff": diffs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
