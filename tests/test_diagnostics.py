"""Parameter-space diagnostics: every metric against brute-force NumPy, known answers, the SVD
cache, sharded and fused checkpoints, Sim_K, and bad input."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
from safetensors.torch import save_file

from geopd.diagnostics import metrics as M
from geopd.io.tensors import Checkpoint
from geopd.diagnostics.run import Options, diagnose
from geopd.diagnostics.similarity import similarity_series, step_of
from geopd.errors import UserError

H, I, HEADS, KV, HD, VOCAB, LAYERS = 16, 24, 2, 1, 8, 40, 2
CONFIG = {"model_type": "qwen3", "hidden_size": H, "intermediate_size": I, "num_attention_heads": HEADS,
          "num_key_value_heads": KV, "head_dim": HD, "num_hidden_layers": LAYERS}


# ---- checkpoint helpers ----------------------------------------------------------------------

def write_ckpt(root, tensors, shards=1, config=CONFIG):
    root.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    (root / "config.json").write_text(json.dumps(config))
    if shards == 1:
        save_file(tensors, str(root / "model.safetensors"))
        return root
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(root / fname))
        weight_map.update({n: fname for n in part})
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return root


def toy_model(seed=0, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    t = {"model.embed_tokens.weight": torch.randn(VOCAB, H, generator=g) * 0.02,
         "model.norm.weight": torch.ones(H)}
    shapes = {"self_attn.q_proj": (HEADS * HD, H), "self_attn.k_proj": (KV * HD, H),
              "self_attn.v_proj": (KV * HD, H), "self_attn.o_proj": (H, HEADS * HD),
              "mlp.gate_proj": (I, H), "mlp.up_proj": (I, H), "mlp.down_proj": (H, I)}
    for layer in range(LAYERS):
        p = f"model.layers.{layer}."
        for mod, shape in shapes.items():
            t[f"{p}{mod}.weight"] = torch.randn(*shape, generator=g) * 0.05
        t[p + "self_attn.q_norm.weight"] = torch.ones(HD)
        t[p + "self_attn.k_norm.weight"] = torch.ones(HD)
        t[p + "input_layernorm.weight"] = torch.ones(H)
        t[p + "post_attention_layernorm.weight"] = torch.ones(H)
    return {k: v.to(dtype) for k, v in t.items()}


def tuned_from(base, seed=1, rank=2, scale=5e-3, sparse=0.3, dtype=None):
    """W0 + a low-rank update + a sparse one, computed in fp32."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in base.items():
        w = v.float()
        if w.dim() == 2:
            m, n = w.shape
            w = w + scale * torch.randn(m, rank, generator=g) @ torch.randn(rank, n, generator=g)
            w = w + 0.02 * torch.randn(m, n, generator=g) * (torch.rand(m, n, generator=g) < sparse)
        else:
            w = w + 0.01
        out[k] = w.to(dtype or v.dtype)
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    base = toy_model(0)
    tuned = tuned_from(base)
    return write_ckpt(root / "base", base), write_ckpt(root / "tuned", tuned), base, tuned


OPTS = Options(k=6, r=3, workers=1)


# ---- brute force -----------------------------------------------------------------------------

def bf16(x):
    return torch.from_numpy(np.asarray(x, dtype=np.float32)).to(torch.bfloat16).float().numpy().astype(np.float64)


def brute(w0, w1, k, r, alpha=0.5, eta=1e-3, hill_k=None):
    w0, w1 = np.asarray(w0, np.float64), np.asarray(w1, np.float64)
    b0, b1 = bf16(w0), bf16(w1)
    upd = np.abs(b1 - b0) > eta * np.maximum(np.abs(b0), np.abs(b1))
    n = w0.size
    U0, s0, V0 = np.linalg.svd(w0, full_matrices=False)
    U1, s1, V1 = np.linalg.svd(w1, full_matrices=False)
    k = min(k, *w0.shape)
    r = min(r, *w0.shape)
    au = np.degrees(scipy.linalg.subspace_angles(U0[:, :k], U1[:, :k]))
    av = np.degrees(scipy.linalg.subspace_angles(V0[:k].T, V1[:k].T))
    recon = U0[:, :r] @ np.diag(s0[:r]) @ V0[:r]
    m = int(round(alpha * n))
    princ = np.zeros(n, bool)
    princ[np.argsort(-np.abs(recon).ravel(), kind="stable")[:m]] = True
    low = np.zeros(n, bool)
    low[np.argsort(np.abs(w0).ravel(), kind="stable")[:m]] = True
    u = upd.ravel()
    dW = w1 - w0
    s = np.linalg.svd(dW, compute_uv=False)
    fro = np.linalg.norm(dW)
    p = s / s.sum()
    p = p[p > 0]
    kk = min(hill_k or k, np.linalg.matrix_rank(dW))
    top = math.ceil(0.01 * len(s))
    return {
        "bf16_sparsity": 1 - upd.mean(), "update_density": upd.mean(),
        "nss": np.linalg.norm(s1 - s0) / np.linalg.norm(s0),
        f"princ_overlap@{alpha:g}": (princ & u).sum() / u.sum(), f"low_overlap@{alpha:g}": (low & u).sum() / u.sum(),
        "frobenius": fro, "stable_rank": fro**2 / s[0] ** 2,
        "hill_alpha": 1 / np.mean(np.log(s[: kk - 1] / s[kk - 1])),
        "spectral_norm": s[0], "spectral_frobenius_ratio": s[0] / fro,
        "effective_rank": np.exp(-(p * np.log(p)).sum()),
        "top1pct_norm_ratio": np.linalg.norm(s[:top]) / fro,
        "angle_u_mean_deg": au.mean(), "angle_v_mean_deg": av.mean(),
        "angle_u_max_deg": au.max(), "angle_v_max_deg": av.max(),
    }


# ---- metrics against brute force -------------------------------------------------------------

@pytest.mark.parametrize("shape", [(24, 16), (16, 40)])
def test_every_metric_matches_brute_force(tmp_path, shape):
    g = torch.Generator().manual_seed(3)
    w0 = torch.randn(*shape, generator=g, dtype=torch.float64) * 0.05
    # a visible low-rank part plus entries moved by less than a bf16 step (invisible)
    w1 = (w0 + 4e-3 * torch.randn(shape[0], 3, generator=g, dtype=torch.float64)
          @ torch.randn(3, shape[1], generator=g, dtype=torch.float64)
          + 1e-6 * torch.randn(*shape, generator=g, dtype=torch.float64))
    name = "model.layers.0.mlp.up_proj.weight"
    b = write_ckpt(tmp_path / "b", {name: w0})
    t = write_ckpt(tmp_path / "t", {name: w1})
    row = diagnose(str(b), str(t), Options(k=5, r=4, hill_k=8)).table.iloc[0]
    ref = brute(w0.numpy(), w1.numpy(), k=5, r=4, hill_k=8)
    assert 0 < ref["bf16_sparsity"] < 1  # both kinds of entries present
    for key, want in ref.items():
        tol = 1e-7 if key.startswith("angle") else 1e-10
        assert row[key] == pytest.approx(want, rel=tol, abs=1e-12), key
    assert row["module"] == "up" and row["layer"] == 0 and row["shape"] == f"{shape[0]}x{shape[1]}"


def test_overlaps_at_every_mask_fraction_match_brute_force(tmp_path):
    """The paper's two readings of alpha (Fig. 3's 0.3, App. C.3's 0.5) in one diagnosis: each
    overlap and its count column equal the brute force at that alpha."""
    g = torch.Generator().manual_seed(7)
    w0 = torch.randn(20, 30, generator=g, dtype=torch.float64) * 0.05
    w1 = w0 + 3e-3 * torch.randn(20, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 30, generator=g, dtype=torch.float64)
    w1[:, :10] = w0[:, :10]  # a third of the entries unchanged: overlaps differ from alpha
    name = "model.layers.0.self_attn.q_proj.weight"
    b, t = write_ckpt(tmp_path / "b", {name: w0}), write_ckpt(tmp_path / "t", {name: w1})
    res = diagnose(str(b), str(t), Options(k=5, r=4, alphas=(0.3, 0.5)))
    row = res.table.iloc[0]
    for alpha in (0.3, 0.5):
        ref = brute(w0.numpy(), w1.numpy(), k=5, r=4, alpha=alpha)
        for kind in ("princ_overlap", "low_overlap"):
            assert row[f"{kind}@{alpha:g}"] == pytest.approx(ref[f"{kind}@{alpha:g}"], rel=1e-12), (kind, alpha)
        assert row[f"n_low_changed@{alpha:g}"] == round(row[f"low_overlap@{alpha:g}"] * row["n_changed"])
    assert row["princ_overlap@0.3"] != row["princ_overlap@0.5"]
    assert "princ_overlap" not in res.table.columns  # every overlap names its alpha
    s = res.summary
    assert s["random_overlap_baseline"] == [0.3, 0.5]
    assert s["overall"]["low_overlap_pooled@0.3"] == pytest.approx(row["low_overlap@0.3"])
    assert s["overall"]["mean"]["update_density"] == pytest.approx(row["update_density"])


def test_pipeline_matches_brute_force_on_bf16_model(pair):
    b, t, base, tuned = pair
    res = diagnose(str(b), str(t), OPTS)
    assert len(res.table) == LAYERS * 7
    assert list(res.table["module"][:7]) == ["q", "k", "v", "o", "gate", "up", "down"]
    for _, row in res.table.iterrows():
        ref = brute(base[row["name"]].float().numpy(), tuned[row["name"]].float().numpy(), k=6, r=3)
        for key in ("bf16_sparsity", "nss", "princ_overlap@0.5", "low_overlap@0.5", "stable_rank", "effective_rank",
                    "angle_u_max_deg", "angle_v_mean_deg", "hill_alpha"):
            assert row[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), (row["name"], key)
    # summary: parameter-count-weighted sparsity, module norms, layer norms
    tab, s = res.table, res.summary
    assert s["overall"]["bf16_sparsity"] == pytest.approx(
        1 - tab["n_changed"].sum() / tab["numel"].sum())
    assert s["overall"]["bf16_sparsity"] == pytest.approx(
        (tab["bf16_sparsity"] * tab["numel"]).sum() / tab["numel"].sum())
    assert set(s["by_module"]) == {"q", "k", "v", "o", "gate", "up", "down"}
    emb = (tuned["model.embed_tokens.weight"].double() - base["model.embed_tokens.weight"].double()).norm()
    assert s["module_norms"]["embedding"] == pytest.approx(float(emb))
    att = sum(float((tuned[n].double() - base[n].double()).pow(2).sum()) for n in base if ".self_attn." in n)
    assert s["module_norms"]["attention"] == pytest.approx(math.sqrt(att))
    lay1 = sum(float((tuned[n].double() - base[n].double()).pow(2).sum()) for n in base if ".layers.1." in n)
    assert s["layer_norms"][1]["layer"] == 1 and s["layer_norms"][1]["total"] == pytest.approx(math.sqrt(lay1))
    assert s["extra_tensors"]["embedding"]["numel"] == VOCAB * H
    e0, e1 = (x["model.embed_tokens.weight"].float().numpy() for x in (base, tuned))
    emb_changed = np.abs(e1 - e0) > 1e-3 * np.maximum(np.abs(e0), np.abs(e1))
    assert s["extra_tensors"]["embedding"]["bf16_sparsity"] == pytest.approx(1 - emb_changed.mean())
    assert s["extra_tensors"]["embedding"]["n_changed"] == int(emb_changed.sum())  # Table 1's column with embeddings
    assert s["timing"]["cache_misses"] == LAYERS * 7
    assert s["warnings"] == []


def test_attention_only_and_qkv_fused(tmp_path, pair):
    b, t, base, tuned = pair
    ref = diagnose(str(b), str(t), OPTS).table.set_index("name")

    def fuse(tensors):
        out = dict(tensors)
        for layer in range(LAYERS):
            p = f"model.layers.{layer}.self_attn."
            out[p + "qkv_proj.weight"] = torch.cat([out.pop(p + f"{x}_proj.weight") for x in "qkv"])
        return out

    fb = write_ckpt(tmp_path / "fb", fuse(base))
    ft = write_ckpt(tmp_path / "ft", fuse(tuned))
    att = diagnose(str(fb), str(ft), Options(k=6, r=3, matrices="attention")).table
    assert list(att["module"][:4]) == ["q", "k", "v", "o"] and len(att) == 4 * LAYERS
    for _, row in att.iterrows():
        name = row["name"]
        orig = name.replace("qkv_proj.weight[", "").replace("]", "_proj.weight") if "[" in name else name
        assert name.endswith(f"[{row['module']}]") or row["module"] == "o"
        for key in ("bf16_sparsity", "nss", "stable_rank", "angle_u_mean_deg", "low_overlap@0.5"):
            assert row[key] == pytest.approx(ref.loc[orig, key], rel=1e-9), (name, key)


# ---- known answers ---------------------------------------------------------------------------

def test_identical_checkpoints(tmp_path, pair):
    b, _, _, _ = pair
    res = diagnose(str(b), str(b), OPTS)
    tab = res.table
    assert (tab["bf16_sparsity"] == 1).all() and (tab["update_density"] == 0).all()
    for c in ("angle_u_max_deg", "angle_v_max_deg", "nss", "frobenius", "spectral_norm"):
        assert (tab[c].abs() < 1e-9).all(), c
    assert tab["princ_overlap@0.5"].isna().all() and tab["stable_rank"].isna().all()
    assert res.summary["overall"]["bf16_sparsity"] == 1.0
    assert res.summary["module_norms"]["total"] == 0.0


def test_rank_r_update_has_stable_rank_at_most_r(tmp_path):
    g = torch.Generator().manual_seed(5)
    w0 = torch.randn(30, 20, generator=g, dtype=torch.float64)
    name = "model.layers.3.self_attn.o_proj.weight"
    for r in (1, 3):
        w1 = w0 + torch.randn(30, r, generator=g, dtype=torch.float64) @ torch.randn(r, 20, generator=g, dtype=torch.float64)
        b, t = write_ckpt(tmp_path / f"b{r}", {name: w0}), write_ckpt(tmp_path / f"t{r}", {name: w1})
        row = diagnose(str(b), str(t), Options(k=8, r=4)).table.iloc[0]
        assert 1 <= row["stable_rank"] <= r + 1e-9
        assert row["layer"] == 3 and row["module"] == "o"
    assert M.stable_rank(torch.tensor([2.0, 2.0, 2.0])) == pytest.approx(3.0)


def _bf16_ulp(x):
    return torch.exp2(torch.floor(torch.log2(x.abs())) - 7)


def test_update_below_half_bf16_ulp_is_invisible(tmp_path):
    g = torch.Generator().manual_seed(7)
    w0 = (torch.randn(12, 10, generator=g) * 0.1).to(torch.bfloat16).float()  # bf16-exact, stored fp32
    name = "model.layers.0.mlp.down_proj.weight"
    b = write_ckpt(tmp_path / "b", {name: w0})
    small = write_ckpt(tmp_path / "small", {name: w0 + 0.4 * _bf16_ulp(w0) * torch.sign(w0)})
    big = write_ckpt(tmp_path / "big", {name: w0 + 0.6 * _bf16_ulp(w0) * torch.sign(w0)})
    row = diagnose(str(b), str(small), Options(k=4, r=2)).table.iloc[0]
    assert row["bf16_sparsity"] == 1.0 and row["update_density"] == 0.0
    assert row["frobenius"] > 0  # the fp32 values did move
    row = diagnose(str(b), str(big), Options(k=4, r=2)).table.iloc[0]
    assert row["bf16_sparsity"] == 0.0


def test_effective_rank_of_equal_singular_values():
    assert M.effective_rank(torch.tensor([3.0, 3.0, 3.0, 3.0, 0.0, 0.0], dtype=torch.float64)) == pytest.approx(4.0)
    q, _ = torch.linalg.qr(torch.randn(20, 20, dtype=torch.float64))
    dW = 0.7 * q[:, :5] @ torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64))[0][:5]
    s = torch.linalg.svdvals(dW)
    assert M.effective_rank(s) == pytest.approx(5.0, rel=1e-9)
    assert M.spectral_frobenius_ratio(s) == pytest.approx(1 / math.sqrt(5))
    assert M.top_fraction_norm_ratio(s, 0.01) == pytest.approx(1 / math.sqrt(5))  # ceil(1% of 12) = 1
    assert M.hill_alpha(s, 5, dW.shape) > 1e10  # flat spectrum: no tail (inf when exactly flat)
    assert M.hill_alpha(torch.ones(4, dtype=torch.float64), 4) == math.inf


def test_hill_on_power_law_spectrum():
    a, k = 1.7, 4000
    i = torch.arange(1, 6001, dtype=torch.float64)
    s = 3.0 * i ** (-1.0 / a)
    exact = a * (k - 1) / ((k - 1) * math.log(k) - math.lgamma(k))
    assert M.hill_alpha(s, k) == pytest.approx(exact, rel=1e-10)
    assert M.hill_alpha(s, k) == pytest.approx(a, rel=2e-3)
    assert math.isnan(M.hill_alpha(torch.tensor([1.0, 0.0], dtype=torch.float64), 2, (2, 2)))


def test_principal_angles_resolve_tiny_rotations():
    for eps in (1e-10, 1e-4, 0.3):
        c, s = math.cos(eps), math.sin(eps)
        A = torch.eye(6, dtype=torch.float64)[:, :2]
        B = torch.zeros(6, 2, dtype=torch.float64)
        B[0, 0], B[3, 0], B[1, 1] = c, s, 1.0
        theta = M.principal_angles(A, B)
        assert theta[0] == pytest.approx(0.0, abs=1e-15)
        assert theta[1] == pytest.approx(eps, rel=1e-8)


def test_elementwise_update_all_dtypes():
    g = torch.Generator().manual_seed(2)
    w0 = torch.randn(50, 40, generator=g, dtype=torch.float64) * 0.1
    w1 = w0 + 1e-3 * torch.randn(50, 40, generator=g, dtype=torch.float64)
    for dt in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        a, b = w0.to(dt), w1.to(dt)
        n, sq = M.elementwise_update(a, b, 1e-3)
        assert n == int(M.changed_mask(a, b, 1e-3).sum())
        assert sq == pytest.approx(float((b.double() - a.double()).pow(2).sum()), rel=1e-6)
    bad = w1.clone()
    bad[3, 4] = float("nan")
    assert math.isnan(M.elementwise_update(w0, bad)[1])


def test_masks_select_exact_counts_with_ties():
    v = torch.tensor([[3.0, 1.0, 1.0, 2.0], [1.0, 3.0, 0.0, 1.0]])
    flat = v.abs().reshape(-1).numpy()
    for alpha in (0.25, 0.5, 0.75):
        m = round(alpha * 8)
        top = np.zeros(8, bool)
        top[np.argsort(-flat, kind="stable")[:m]] = True
        low = np.zeros(8, bool)
        low[np.argsort(flat, kind="stable")[:m]] = True
        assert (M.top_fraction_mask(v, alpha).reshape(-1).numpy() == top).all()
        assert (M.bottom_fraction_mask(v, alpha).reshape(-1).numpy() == low).all()
    assert math.isnan(M.overlap(torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)))


# ---- cache, shards, workers, CLI -------------------------------------------------------------

def test_cache_hit_gives_identical_results(tmp_path, pair):
    b, t, _, _ = pair
    opts = Options(k=6, r=3, cache_dir=str(tmp_path / "cache"))
    cold = diagnose(str(b), str(t), opts)
    assert cold.summary["timing"]["cache_misses"] == 14
    # keyed by content: a copy of W0 in another folder, as 2 shards, still hits
    copy = write_ckpt(tmp_path / "copy", {n: v for n, v in pair[2].items()}, shards=2)
    warm = diagnose(str(copy), str(t), opts)
    assert warm.summary["timing"]["cache_hits"] == 14 and warm.summary["timing"]["cache_misses"] == 0
    pd.testing.assert_frame_equal(cold.table, warm.table)
    # a larger k than stored recomputes instead of silently truncating
    more = diagnose(str(b), str(t), Options(k=12, r=3, cache_dir=str(tmp_path / "cache")))
    assert more.summary["timing"]["cache_misses"] == 14


def test_cli_with_workers_and_hf_checkpoint(tmp_path, capsys):
    """A real save_pretrained checkpoint, 2 worker processes, parquet + JSON + spectra."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from geopd.cli import main

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=8, intermediate_size=32)
    model = Qwen3ForCausalLM(cfg)
    model.save_pretrained(tmp_path / "base")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-2 * torch.randn_like(p))
    model.to(torch.bfloat16).save_pretrained(tmp_path / "tuned")
    out, summary, spectra = tmp_path / "d" / "m.parquet", tmp_path / "d" / "s.json", tmp_path / "d" / "sp.npz"
    rc = main(["diagnose", "--base", str(tmp_path / "base"), "--tuned", str(tmp_path / "tuned"),
               "--out", str(out), "--summary", str(summary), "--spectra", str(spectra), "--k", "8",
               "--r", "4", "--workers", "2", "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    tab = pd.read_parquet(out)
    assert len(tab) == 14 and tab["bf16_sparsity"].between(0, 1).all()
    s = json.loads(summary.read_text())
    assert set(s["module_norms"]) >= {"embedding", "attention", "mlp", "other", "total"}
    assert s["overall"]["numel"] == int(tab["numel"].sum())
    assert "k=8 covers the full rank of 4/14 matrices" in s["warnings"][0]  # k_proj, v_proj are 8x16
    assert (tab.loc[tab["module"].isin(["k", "v"]), "angle_u_max_deg"] < 1e-6).all()
    assert "warning: k=8" in capsys.readouterr().err
    inproc = diagnose(str(tmp_path / "base"), str(tmp_path / "tuned"), Options(k=8, r=4)).table
    pd.testing.assert_frame_equal(tab, inproc, check_dtype=False)
    z = np.load(spectra)
    assert z["model.layers.0.self_attn.q_proj.weight|angles_u_deg"].shape == (8,)


# ---- bad input -------------------------------------------------------------------------------

def _err(tmp_path, base, tuned, match, **kw):
    b = write_ckpt(tmp_path / "eb", base) if isinstance(base, dict) else base
    t = write_ckpt(tmp_path / "et", tuned, **kw) if isinstance(tuned, dict) else tuned
    with pytest.raises(UserError, match=match):
        diagnose(str(b), str(t), OPTS)


def test_name_mismatch(tmp_path):
    base = toy_model()
    tuned = dict(base)
    tuned["model.layers.1.mlp.extra_proj.weight"] = tuned.pop("model.layers.1.mlp.up_proj.weight")
    _err(tmp_path, base, tuned, r"different tensors.*model\.layers\.1\.mlp\.up_proj\.weight")


def test_shape_mismatch(tmp_path):
    base = toy_model()
    tuned = dict(base)
    tuned["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(4, H, dtype=torch.bfloat16)
    _err(tmp_path, base, tuned, r"model\.layers\.0\.self_attn\.k_proj\.weight: shape \[8, 16\].*\[4, 16\]")


def test_missing_shard(tmp_path):
    base = toy_model()
    t = write_ckpt(tmp_path / "sharded", tuned_from(base), shards=2)
    (t / "model-00002-of-00002.safetensors").unlink()
    _err(tmp_path, base, t, r"shard model-00002-of-00002\.safetensors .*missing")
    (t / "model.safetensors.index.json").unlink()  # without the index the name still tells
    _err(tmp_path, base, t, r"model-00002-of-00002\.safetensors is missing")


def test_non_finite_weight(tmp_path, capsys):
    base = toy_model()
    tuned = tuned_from(base)
    tuned["model.layers.1.self_attn.v_proj.weight"][2, 3] = float("nan")
    _err(tmp_path, base, tuned, r"model\.layers\.1\.self_attn\.v_proj\.weight has a non-finite value \(nan\) at index \[2, 3\]")
    tuned = tuned_from(base)
    tuned["model.embed_tokens.weight"][5, 0] = float("inf")
    _err(tmp_path / "x", base, tuned, r"model\.embed_tokens\.weight has a non-finite value \(inf\)")
    from geopd.cli import main  # the CLI prints one line, no traceback
    rc = main(["diagnose", "--base", str(tmp_path / "x" / "eb"), "--tuned", str(tmp_path / "x" / "et"),
               "--out", str(tmp_path / "o.csv"), "--workers", "1"])
    assert rc == 2 and "embed_tokens" in capsys.readouterr().err


def test_unresolvable_sources(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="no such file or folder"):
        Checkpoint.open(str(tmp_path / "nope" / "deeper" / "x"))
    import huggingface_hub

    def unreachable(**kw):
        raise huggingface_hub.errors.LocalEntryNotFoundError("the hub cannot be reached")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(UserError, match="Qwen/Qwen3-8B-Base: not a local folder, and the hub id could not"):
        Checkpoint.open("Qwen/Qwen3-8B-Base")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline: only the local hub cache is asked
    with pytest.raises(UserError, match="Qwen/Qwen3-8B-Base: no such file or folder, nor a hub id in the local"):
        Checkpoint.open("Qwen/Qwen3-8B-Base")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no safetensors weights"):
        Checkpoint.open(str(empty))


# ---- Sim_K -----------------------------------------------------------------------------------

def test_similarity_series(tmp_path):
    g = torch.Generator().manual_seed(11)
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight"]
    init = {n: torch.randn(20, 12, generator=g, dtype=torch.float64) for n in names}
    direction = {n: torch.randn(20, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 12, generator=g, dtype=torch.float64)
                 for n in names}
    i0 = write_ckpt(tmp_path / "init", init)
    paths, ws = [], []
    for step, scale, noise in ((10, 0.0, 0.0), (20, 0.5, 0.3), (40, 1.0, 0.05)):
        w = {n: init[n] + scale * direction[n] + noise * torch.randn(20, 12, generator=g, dtype=torch.float64) for n in names}
        paths.append(str(write_ckpt(tmp_path / f"step-{step}", w)))
        ws.append(w)
    table, means = similarity_series(str(i0), paths, k=2, matrices="attention")
    assert set(table["name"]) == {names[0]}  # attention only
    assert list(table["step"]) == [10, 20, 40] and step_of("/x/step-7/") == 7

    def vk(w):
        return np.linalg.svd((w - init[names[0]]).numpy())[2][:2].T
    want = np.linalg.norm(vk(ws[1][names[0]]).T @ vk(ws[2][names[0]])) ** 2 / 2
    assert table["sim"][1] == pytest.approx(want, rel=1e-10)
    assert math.isnan(table["sim"][0])  # a zero update has no subspace
    assert table["sim"][2] == pytest.approx(1.0)
    assert means["mean_sim"].iloc[2] == pytest.approx(1.0) and means["n_defined"].iloc[0] == 0
    full, _ = similarity_series(str(i0), paths, k=2, matrices="all")
    assert len(full) == 6
    from geopd.cli import main
    out, summary = tmp_path / "sim" / "s.parquet", tmp_path / "sim" / "mean.json"
    assert main(["similarity", "--init", str(i0), "--checkpoints", *paths, "--out", str(out),
                 "--summary", str(summary), "--k", "2", "--workers", "1"]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out), table)
    assert [c["step"] for c in json.loads(summary.read_text())["checkpoints"]] == [10, 20, 40]
