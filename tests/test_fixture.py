"""The paper-shaped fixture and the hub mirror: what the fixture writes is what the paper config
reads (repo ids, layouts, one vocabulary, Base vs post-trained eos), the grid resolves hub ids to
the mirror, the prefetch rule is wired into the DAG, and the fixture is deterministic."""
import filecmp
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from geopd import mirror
from geopd.errors import UserError
from geopd.fixture import missing_from, write_repo
from geopd.fixture import models as fmodels
from geopd.fixture import tokenizer as ftok
from geopd.grid import Grid, merged_config

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
PAPER = [REPO / "config/paper.yaml", REPO / "tests/configs/paper-fixture.yaml"]


def test_fixture_covers_every_hub_repo_of_the_paper_config(paper_mirror):
    grid = Grid.from_file(REPO / "config/paper.yaml")
    assert missing_from(grid.config) == []
    for kind, repo in grid.hub_repos():
        info = json.loads(mirror.marker(paper_mirror, kind, repo).read_text())
        assert info["repo"] == repo and info["source"] == "geopd-fixture" and info["files"]
    assert missing_from({"models": {"x": {"hub": "Qwen/Qwen9-1B"}}}) == ["models/Qwen/Qwen9-1B"]


def _tokenizer(paper_mirror, repo):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(mirror.repo_dir(paper_mirror, "models", repo))


def test_models_load_offline_with_one_vocabulary_and_hub_eos(paper_mirror):
    from transformers import AutoConfig, GenerationConfig

    vocab = None
    for repo, m in fmodels.MODELS.items():
        path = mirror.repo_dir(paper_mirror, "models", repo)
        tok, cfg, gen = _tokenizer(paper_mirror, repo), AutoConfig.from_pretrained(path), GenerationConfig.from_pretrained(path)
        assert type(tok).__name__ == "Qwen2Tokenizer" and tok.bos_token is None
        vocab = vocab or tok.get_vocab()
        assert tok.get_vocab() == vocab, repo                   # one vocabulary for every model
        eos = "<|im_end|>" if m.post_trained else "<|endoftext|>"
        assert tok.eos_token == eos and cfg.eos_token_id == tok.convert_tokens_to_ids(eos), repo
        assert tok.pad_token == "<|endoftext|>" and cfg.bos_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
        assert gen.eos_token_id == ([tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id] if m.post_trained
                                    else tok.pad_token_id)
        assert cfg.head_dim >= 32 and cfg.vocab_size > len(tok) and cfg.vocab_size % 64 == 0
        assert cfg.architectures == (["Qwen3MoeForCausalLM"] if repo.endswith("A3B") else ["Qwen3ForCausalLM"])
        assert cfg.tie_word_embeddings == (m.size == "4b")
    added = {t: (i, s.special) for i, s in tok.added_tokens_decoder.items() for t in [s.content]}
    assert [t for t, _ in sorted(added.items(), key=lambda kv: kv[1][0])] == [t for t, _ in ftok.ADDED_TOKENS]
    assert not added["<think>"][1] and added["<|im_end|>"][1]   # as in Qwen3: <think> kept when decoding
    assert 1000 <= len(vocab) <= 2048


def test_sharded_and_moe_models_run(paper_mirror):
    from transformers import AutoModelForCausalLM

    path = mirror.repo_dir(paper_mirror, "models", "Qwen/Qwen3-30B-A3B")
    assert (path / "model.safetensors.index.json").is_file() and len(list(path.glob("model-*.safetensors"))) > 1
    tok = _tokenizer(paper_mirror, "Qwen/Qwen3-30B-A3B")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = tok("What is 2+3?", return_tensors="pt").input_ids
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size) and torch.isfinite(logits).all()


def test_qwen3_chat_template(paper_mirror):
    tok = _tokenizer(paper_mirror, "Qwen/Qwen3-8B")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": "<think>\nadd\n</think>\n\n2"}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "<think>\nadd again\n</think>\n\n4"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    # Reasoning of earlier turns is dropped, the last turn keeps it; every turn ends with <|im_end|>.
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n"
                    "<|im_start|>assistant\n2<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\nadd again\n</think>\n\n4<|im_end|>\n")
    prompt = tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n")
    off = tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text and tok.convert_tokens_to_ids("<|im_end|>") in ids


def test_base_student_and_post_trained_teacher_share_a_vocabulary(paper_mirror):
    from geopd.engines.models import check_same_tokenizer, load_tokenizer

    base = mirror.repo_dir(paper_mirror, "models", "Qwen/Qwen3-8B-Base")
    teacher = mirror.repo_dir(paper_mirror, "models", "Qwen/Qwen3-32B")
    student_tok, teacher_tok = load_tokenizer(base), load_tokenizer(teacher)
    assert student_tok.eos_token_id != teacher_tok.eos_token_id
    check_same_tokenizer(student_tok, teacher_tok, f"the student {base}", f"the teacher {teacher}")
    # A teacher whose vocabulary differs (one more token) is refused, naming both models.
    other = load_tokenizer(teacher)
    other.add_tokens(["<|extra|>"])
    with pytest.raises(UserError, match=re.escape(f"the student {base} and the teacher {teacher} have different "
                                                  "vocabularies") + r".*<\|extra\|>"):
        check_same_tokenizer(student_tok, other, f"the student {base}", f"the teacher {teacher}")


def test_tuned_models_are_their_base_plus_a_sparse_change(paper_mirror):
    from safetensors.torch import load_file

    def weights(repo):
        return load_file(mirror.repo_dir(paper_mirror, "models", repo) / "model.safetensors")

    base, sft = weights("Qwen/Qwen3-8B-Base"), weights("Kwai-Klear/Klear-Reasoner-8B-SFT")
    rl = weights("Kwai-Klear/Klear-Reasoner-8B")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert base[name].dtype == torch.bfloat16
    changed = (base[name] != sft[name]).float().mean().item()
    assert 0.3 < changed < 0.55                   # ~half the entries (a few perturbations round away in bf16)
    assert not torch.equal(sft[name], rl[name])   # the RL model starts from the SFT one, not from Base
    assert (base[name] != rl[name]).float().mean() > changed


def test_deepcoder_configs_and_splits_are_the_hub_s(paper_mirror):
    """As on the hub: codeforces holds only a test split (DeepCoder's held-out evaluation), lcbv5
    train and test, primeintellect and taco train; `datasets` resolves them from the card."""
    import datasets

    root = mirror.repo_dir(paper_mirror, "datasets", "agentica-org/DeepCoder-Preview-Dataset")
    splits = {c: sorted(datasets.load_dataset_builder(str(root), c).config.data_files)
              for c in ("codeforces", "lcbv5", "primeintellect", "taco")}
    assert splits == {"codeforces": ["test"], "lcbv5": ["test", "train"], "primeintellect": ["train"],
                      "taco": ["train"]}


def test_rollout_text_keeps_think_for_the_deepscaler_reward(paper_mirror):
    """Qwen3's </think> is an added token that is not special: a rollout decoded with
    skip_special_tokens (geopd.engines.rollout.assemble, both engines) keeps it and drops the
    end-of-turn token, so the deepscaler reward finds the answer after the thinking."""
    from geopd.engines.rollout import assemble, eos_ids
    from geopd.train.rewards import deepscaler

    tok = _tokenizer(paper_mirror, "Qwen/Qwen3-8B-Base")
    close = tok.convert_tokens_to_ids("</think>")
    assert tok.convert_ids_to_tokens(close) == "</think>" and not tok.added_tokens_decoder[close].special
    body = tok("<think>\n3 + 4, maybe \\boxed{8}", add_special_tokens=False)["input_ids"]
    answer = tok("\n\nSo the answer is \\boxed{7}.", add_special_tokens=False)["input_ids"]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    prompt = tok("What is 3+4?", add_special_tokens=False)["input_ids"]
    ro = assemble(tok, [prompt], 2, [body + [close] + answer + [im_end, 5, 6], body + answer + [im_end]], None,
                  eos_ids(tok))
    assert ro.texts[0] == "<think>\n3 + 4, maybe \\boxed{8}</think>\n\nSo the answer is \\boxed{7}."
    assert [deepscaler(t, "7") for t in ro.texts] == [1.0, 0.0]  # no </think>: no solution part, 0
    assert deepscaler(ro.texts[0], "8") == 0.0                  # the answer inside the thinking earns 0


def test_fixture_is_deterministic(paper_mirror, tmp_path):
    ftok.backend_json.cache_clear()               # retrain the vocabulary too
    repos = [("models", "Qwen/Qwen3-8B"), ("models", "Qwen/Qwen3-30B-A3B"),
             ("datasets", "BytedTsinghua-SIA/DAPO-Math-17k"), ("datasets", "agentica-org/DeepCoder-Preview-Dataset"),
             ("datasets", "livecodebench/code_generation_lite")]
    for kind, repo in repos:
        again = write_repo(tmp_path, kind, repo)
        first = mirror.repo_dir(paper_mirror, kind, repo)
        names = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
        assert names == sorted(p.relative_to(again).as_posix() for p in again.rglob("*") if p.is_file())
        for name in names:
            if name == mirror.MARKER:
                strip = lambda p: {k: v for k, v in json.loads(p.read_text()).items() if k != "created_utc"}
                assert strip(first / name) == strip(again / name)
            else:
                assert filecmp.cmp(first / name, again / name, shallow=False), f"{repo}/{name}"


# ---- the grid and the mirror --------------------------------------------------------------------------

def test_grid_resolves_hub_ids_to_the_mirror():
    grid = Grid.from_files(PAPER)
    m = "results/paper-fixture/mirror"
    assert str(grid.mirror) == m
    assert grid.model_source("qwen3-32b") == f"{m}/models/Qwen/Qwen3-32B"
    assert grid.model_inputs("qwen3-32b") == [f"{m}/models/Qwen/Qwen3-32B/{mirror.MARKER}"]
    assert grid.run_spec("opd-8b-t32b").teacher == f"{m}/models/Qwen/Qwen3-32B"
    assert grid.run_spec("sft-8b").init == f"{m}/models/Qwen/Qwen3-8B-Base"
    assert grid.data_spec("aime24")["path"] == f"{m}/datasets/HuggingFaceH4/aime_2024"
    assert grid.data_inputs("aime24") == [f"{m}/datasets/HuggingFaceH4/aime_2024/{mirror.MARKER}"]
    assert f"{m}/models/Kwai-Klear/Klear-Reasoner-8B/{mirror.MARKER}" in grid.model_inputs("klear-reasoner-8b")
    # No mirror: hub ids as they are (and nothing to prefetch); the miniature grid is unchanged.
    config = merged_config(PAPER)
    del config["hub_mirror"]
    bare = Grid(config)
    assert bare.model_source("qwen3-32b") == "Qwen/Qwen3-32B" and bare.model_inputs("qwen3-32b") == []
    assert "path" not in bare.data_spec("aime24") and bare.data_inputs("aime24") == []
    mini = Grid.from_file(REPO / "config/config.yaml")
    assert mini.mirror is None and mini.model_source("qwen3-32b") == "results/models/qwen3-32b"
    assert "path" not in mini.data_spec("math") and mini.data_inputs("math") == []


def test_prefetch_specs():
    grid = Grid.from_files(PAPER)
    assert len(grid.hub_repos()) == 13 + 9
    assert grid.prefetch_spec("models", "Qwen/Qwen3-8B") == {"kind": "models", "repo": "Qwen/Qwen3-8B",
                                                            "mirror": "results/paper-fixture/mirror"}
    lcb = grid.prefetch_spec("datasets", "livecodebench/code_generation_lite")
    assert lcb["allow_patterns"] == ["README.md", "test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl",
                                     "test5.jsonl"]
    with pytest.raises(UserError, match="no model with hub id 'Qwen/Qwen9'"):
        grid.prefetch_spec("models", "Qwen/Qwen9")
    with pytest.raises(UserError, match="not a hub repo id"):
        mirror.repo_dir("m", "models", "../etc")


def test_prefetch_without_network_names_the_repo_and_writes_no_marker(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="cannot download model Qwen/Qwen3-8B into"):
        mirror.download("models", "Qwen/Qwen3-8B", tmp_path)
    assert not mirror.is_complete(mirror.repo_dir(tmp_path, "models", "Qwen/Qwen3-8B"))
    with pytest.raises(UserError, match="no complete copy in the hub mirror.*run the `prefetch` rule"):
        mirror.require(mirror.repo_dir(tmp_path, "models", "Qwen/Qwen3-8B"), "model Qwen/Qwen3-8B")


def _job_counts(out: str) -> dict[str, int]:
    table = out.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for line in table.splitlines()
            if (m := re.match(r"^(\w+)\s+(\d+)$", line.strip())) and m.group(1) not in ("total", "all")}


@pytest.mark.slow
def test_dry_run_of_the_overlay_lists_every_rule_and_prefetch_only_without_the_fixture(paper_mirror, tmp_path):
    from geopd.plan import build_jobs, summarize

    def dry_run():
        proc = subprocess.run([SNAKEMAKE, "-n", "--quiet", "rules", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                               "--configfile", *map(str, PAPER)], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return _job_counts(proc.stdout + proc.stderr)

    # The overlay groups evaluation and diagnostics per run (job_grouping), so a run's checkpoints
    # are one evaluate_run and one diagnose_run job (similarity included) instead of one job each.
    every = {"prefetch", "prepare_data", "train", "diagnose_run", "diagnose_reference", "evaluate_run",
             "evaluate_model", "run_curves", "aggregate_diagnostics", "aggregate_eval", "grid_spec", "tables",
             "figures", "claims"}
    counts = dry_run()
    assert set(counts) == every                       # (no model is built: pretrain/finetune are miniature-only)
    assert counts == {r: row["jobs"] for r, row in summarize(build_jobs(Grid.from_files(PAPER)))["per_rule"].items()}
    # 13 hub models + 9 data sets fetched (Fig. 8's five benchmarks included), each data set prepared once.
    assert counts["prefetch"] == 22 and counts["prepare_data"] == 9 and counts["train"] == 26
    # With the fixture where the overlay's hub_mirror points, nothing is downloaded, and the
    # prepare_data rule of every data set runs (offline) through the real loaders.
    shutil.copytree(paper_mirror, tmp_path / "results/paper-fixture/mirror")
    assert dry_run() == {r: n for r, n in counts.items() if r != "prefetch"}
    grid = Grid.from_files(PAPER)
    targets = [grid.data_dir(d) for d in grid.datasets]
    proc = subprocess.run([SNAKEMAKE, *targets, "--cores", "2", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                           "--configfile", *map(str, PAPER)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rule prefetch:" not in proc.stdout + proc.stderr and "rule prepare_data:" in proc.stdout + proc.stderr
    for name, data in grid.datasets.items():
        info = json.loads((tmp_path / grid.data_dir(name) / "info.json").read_text())
        assert info["counts"][data.get("as_split", "train")] > 0, name
