"""The miniature world: character tokenizer, synthetic tasks and corpus, tiny Qwen3 models."""
from __future__ import annotations

import io
import random
import re
import subprocess
import sys
from contextlib import redirect_stdout
from unittest import mock

import pytest

from geopd.errors import UserError
from geopd.world import tasks
from geopd.world.tokenizer import CHARACTERS, PIECES, build_tokenizer, save_tokenizer, vocabulary

# ---- tokenizer ---------------------------------------------------------------------------------

CODE = ("def f(x):\n    if x > 0:\n\treturn x  # tab\n    return -x\n\n\n"
        "print(f(int(input())))  \n  ")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _ids(tokenizer, s):
    return tokenizer(s, add_special_tokens=False)["input_ids"]


def test_one_token_per_character_and_exact_round_trip(tok):
    rng = random.Random(0)
    alphabet = "".join(CHARACTERS)
    strings = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(300)]
    strings += [CODE, " ", "  \n\n\t", "\\boxed{82}", "What is 1+2?"]
    for s in strings:
        ids = _ids(tok, s)
        if not any(t in s for t in ("<think>", "</think>", *PIECES)):
            assert len(ids) == len(s)
        assert tok.decode(ids) == s
        assert tok.decode(ids, skip_special_tokens=True) == s
    # Every character is its own token, distinct from the others and from the special tokens.
    single = {c: _ids(tok, c) for c in CHARACTERS}
    assert all(len(v) == 1 for v in single.values())
    assert len({v[0] for v in single.values()}) == len(CHARACTERS)


def test_think_markers_and_special_tokens(tok):
    s = "<think>\n</think>\n\\boxed{7}"
    ids = _ids(tok, s)
    assert tok.convert_ids_to_tokens(ids) == ["<think>", "\n", "</think>", "\n", "\\boxed{", "7", "}"]
    # Not special: the rollout decodes with skip_special_tokens=True and must keep them.
    assert tok.decode(ids, skip_special_tokens=True) == s
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert tok.eos_token_id != tok.pad_token_id
    assert tok.decode(_ids(tok, "ab") + [tok.eos_token_id], skip_special_tokens=True) == "ab"
    assert tok.padding_side == "left"
    assert tok.convert_ids_to_tokens(_ids(tok, "é")) == ["<|unk|>"]
    assert len(tok) == len(vocabulary()) == 3 + 2 + len(CHARACTERS) + len(PIECES)


def test_chat_pieces_are_whole_tokens_and_round_trip(tok):
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 68+53?"}], add_generation_prompt=True,
                                     tokenize=False)
    s = prompt + "<think>\n</think>\n\\boxed{121}"
    ids = _ids(tok, s)
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[0] == "User: " and pieces[16] == "Assistant: " and pieces[-5:] == ["\\boxed{", "1", "2", "1", "}"]
    assert len(ids) == 26 and tok.decode(ids) == s == tok.decode(ids, skip_special_tokens=True)
    # A piece inside other text is still the piece; the characters alone still encode each one.
    assert tok.convert_ids_to_tokens(_ids(tok, "xUser: y")) == ["x", "User: ", "y"]
    assert tok.decode(_ids(tok, "User:")) == "User:" and len(_ids(tok, "User:")) == 5
    # Every earlier id is where it was before the pieces were added.
    assert [vocabulary()[c] for c in CHARACTERS] == list(range(5, 5 + len(CHARACTERS)))


def test_chat_template(tok):
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2+3?"}],
                                     add_generation_prompt=True, tokenize=False)
    assert prompt == "User: What is 2+3?\nAssistant: "
    convo = tok.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                                     {"role": "assistant", "content": "A"}], tokenize=False)
    assert convo == "System: S\nUser: Q\nAssistant: A<|endoftext|>\n"


def test_save_and_reload_with_auto_tokenizer(tok, tmp_path):
    from transformers import AutoTokenizer

    save_tokenizer(tok, tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert again.padding_side == "left"
    assert (again.eos_token_id, again.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    for s in [CODE, "<think>\n</think>\n\\boxed{12}", "x" * 50]:
        assert _ids(again, s) == _ids(tok, s)
        assert again.decode(_ids(again, s)) == s
    batch = again(["ab", "abcd"], padding=True, add_special_tokens=False)
    assert batch["input_ids"][0][:2] == [again.pad_token_id] * 2
    assert batch["attention_mask"][0] == [0, 0, 1, 1]
    messages = [{"role": "user", "content": "q"}]
    assert again.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == \
        tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


# ---- math task ---------------------------------------------------------------------------------

_Q = re.compile(r"What is (\d+)\+(\d+)\?")


def _operands(p):
    a, b = _Q.fullmatch(p["prompt"]).groups()
    return int(a), int(b)


def test_math_problems_are_correct_mixed_and_deterministic():
    probs = tasks.math_problems(600, 0, "train")
    assert probs == tasks.math_problems(600, 0, "train")
    assert probs[:100] == tasks.math_problems(100, 0, "train")           # prefix-stable
    assert probs != tasks.math_problems(600, 1, "train")
    lengths = set()
    for p in probs:
        a, b = _operands(p)
        assert p["answer"] == str(a + b) and p["task"] == "math"
        lengths |= {len(str(a)), len(str(b))}
    assert lengths == {1, 2, 3}
    assert len({p["id"] for p in probs}) == len(probs)


def test_math_max_digits_bounds_operands_and_keeps_the_default():
    three = tasks.math_problems(300, 0, "train")
    assert three == tasks.math_problems(300, 0, "train", max_digits=3)  # the default, draw for draw
    two = tasks.math_problems(600, 0, "train", max_digits=2)
    assert {len(str(x)) for p in two for x in _operands(p)} == {1, 2}
    assert all(p["answer"] == str(sum(_operands(p))) for p in two)
    n = tasks.test_pairs(2)  # ordered pairs of the test split: ~1/10 of 10,000
    assert n == sum(tasks.split_of(tasks.math_key(a, b)) == "test" for a in range(100) for b in range(100))
    assert 800 < n < 1200
    test = tasks.math_problems(n, 0, "test", max_digits=2)  # every test pair, none twice
    assert len({_operands(p) for p in test}) == n
    train = {tuple(sorted(_operands(p))) for p in two}
    assert not train & {tuple(sorted(_operands(p))) for p in test}
    with pytest.raises(UserError, match=f"only {n} distinct"):
        tasks.math_problems(n + 1, 0, "test", max_digits=2)
    with pytest.raises(UserError, match="max_digits"):
        tasks.math_problems(3, 0, "train", max_digits=0)
    facts = [f for d in tasks.pretrain_corpus(2000, 0, max_digits=2) if "=" in d and "map" not in d
             for f in d.split("\n")]
    assert facts and all(max(map(len, re.fullmatch(r"(\d+)\+(\d+)=\d+", f).groups())) <= 2 for f in facts)
    assert tasks.pretrain_corpus(500, 0) == tasks.pretrain_corpus(500, 0, max_digits=3)
    # The data sets of a config pass it on: problems, demonstrations and corpus.
    from geopd.data import synthetic

    spec = {"name": "m", "seed": 0, "n_train": 300, "n_test": 50, "max_digits": 2}
    math = synthetic({**spec, "kind": "synthetic-math"})
    demos = synthetic({**spec, "kind": "synthetic-demos", "tasks": ["math"]})["train"]
    corpus = synthetic({**spec, "kind": "synthetic-corpus"})["train"]
    assert math["train"] == tasks.math_problems(300, 0, "train", 2) and math["test"] == test[:50]
    assert len(demos) == 300 and all(len(str(x)) <= 2 for d in demos for x in _operands(d))
    assert [d["text"] for d in corpus] == tasks.pretrain_corpus(300, 0, 2)


@pytest.mark.parametrize("seed_train,seed_test", [(0, 0), (0, 1), (7, 3)])
def test_math_splits_are_disjoint_for_any_seeds(seed_train, seed_test):
    train = {tuple(sorted(_operands(p))) for p in tasks.math_problems(3000, seed_train, "train")}
    test_probs = tasks.math_problems(300, seed_test, "test")
    test = {tuple(sorted(_operands(p))) for p in test_probs}
    assert not train & test                       # also a+b vs b+a
    assert len({_operands(p) for p in test_probs}) == len(test_probs)   # test problems distinct


def test_math_response_and_demos():
    from geopd.grading.math import grade_math

    assert tasks.math_response("82") == "<think>\n</think>\n\\boxed{82}"
    probs = tasks.math_problems(400, 3, "train")
    clean = [tasks.math_demo(p, random.Random(5), 0.0) for p in probs]
    assert all(d == tasks.math_response(p["answer"]) for d, p in zip(clean, probs))
    rng = random.Random(5)
    noisy = [tasks.math_demo(p, rng, 1.0) for p in probs]
    for d, p in zip(noisy, probs):
        wrong = d.split("\\boxed{")[1][:-1]
        assert len(wrong) == len(p["answer"])
        assert sum(x != y for x, y in zip(wrong, p["answer"])) == 1
        assert len(wrong) == 1 or wrong[0] != "0"
        assert not grade_math(d, p["answer"])
    rng = random.Random(9)
    many = tasks.math_problems(3000, 0, "train")
    rate = sum(tasks.math_demo(p, rng, 0.3) != tasks.math_response(p["answer"]) for p in many) / len(many)
    assert 0.26 < rate < 0.34


def test_bad_arguments():
    with pytest.raises(UserError):
        tasks.math_problems(3, 0, "validation")
    with pytest.raises(UserError):
        tasks.code_problems(-1, 0, "train")
    with pytest.raises(UserError, match="distinct"):
        tasks.code_problems(10_000, 0, "test")
    assert tasks.math_problems(0, 0, "test") == []


# ---- code task ---------------------------------------------------------------------------------

def _run_in_process(program: str, stdin: str) -> str:
    out = io.StringIO()
    with mock.patch("sys.stdin", io.StringIO(stdin)), redirect_stdout(out):
        exec(program, {"__name__": "__main__"})
    return out.getvalue()


def test_every_reference_program_passes_its_tests():
    for split in ("train", "test"):
        for p in tasks.code_problems(len(tasks.code_pool(split)), 0, split):
            assert p["task"] == "code" and "answer" not in p
            assert len(p["tests"]) >= 3
            for t in p["tests"]:
                assert _run_in_process(p["solution"], t["input"]) == t["output"]


def test_reference_programs_pass_with_plain_python():
    probs = tasks.code_problems(8, 0, "train") + tasks.code_problems(4, 0, "test")
    for p in probs:
        for t in p["tests"]:
            run = subprocess.run([sys.executable, "-c", p["solution"]], input=t["input"],
                                 capture_output=True, text=True, timeout=30)
            assert run.returncode == 0 and run.stdout == t["output"], (p, t, run.stderr)


def test_code_splits_disjoint_and_deterministic():
    for seed in (0, 1):
        train = {p["solution"] for p in tasks.code_problems(2500, seed, "train")}
        test = {p["solution"] for p in tasks.code_problems(150, seed + 5, "test")}
        assert not train & test
    assert tasks.code_problems(50, 2, "train") == tasks.code_problems(50, 2, "train")
    assert tasks.code_problems(50, 2, "train") != tasks.code_problems(50, 3, "train")
    # The pools are large enough for the default data sets (2,000 train, 100 test).
    assert len(tasks.code_pool("train")) >= 2000 and len(tasks.code_pool("test")) >= 100


def test_code_demos_clean_and_corrupted():
    probs = tasks.code_problems(600, 4, "train")
    clean = [tasks.code_demo(p, random.Random(5), 0.0) for p in probs]
    assert all(d == tasks.code_response(p) for d, p in zip(clean, probs))
    rng = random.Random(5)
    for p in probs:
        d = tasks.code_demo(p, rng, 1.0)
        wrong = d.split("```python\n")[1].split("\n```")[0]
        assert wrong != p["solution"] and wrong.split("\n")[0] == p["solution"].split("\n")[0]
        # one wrong constant: the corrupted program fails at least one of the problem's tests
        assert any(_run_in_process(wrong, t["input"]) != t["output"] for t in p["tests"])
    rng = random.Random(9)
    rate = sum(tasks.code_demo(p, rng, 0.3) != tasks.code_response(p) for p in probs) / len(probs)
    assert 0.24 < rate < 0.36


def test_clean_demo_set_is_unchanged_by_code_corruption_of_the_noisy_one():
    from geopd.data import synthetic

    base = {"name": "d", "kind": "synthetic-demos", "tasks": ["math", "code"], "mix": {"math": 0.5, "code": 0.5},
            "n_train": 400, "seed": 0}
    clean = synthetic({**base, "corrupt_prob": 0.0})["train"]
    noisy = synthetic({**base, "corrupt_prob": 0.3})["train"]
    # Same prompts in the same order; only responses differ, on both tasks.
    assert [r["prompt"] for r in clean] == [r["prompt"] for r in noisy]
    differ = {r["task"] for r, s in zip(clean, noisy) if r["response"] != s["response"]}
    assert differ == {"math", "code"}


def test_code_tests_tell_similar_programs_apart():
    # The first two tests order the operands both ways: max/min and a-b/b-a differ on them.
    for p in tasks.code_problems(300, 0, "train"):
        (a1, b1), (a2, b2) = (map(int, t["input"].split()) for t in p["tests"][:2])
        assert a1 > b1 and a2 < b2


def test_code_response_format_and_length(tok):
    from geopd.grading.code import extract_last_code_block

    probs = tasks.code_problems(400, 0, "train")
    for p in probs:
        r = tasks.code_response(p)
        assert r.startswith("<think>\n</think>\n```python\n") and r.endswith("\n```")
        assert extract_last_code_block(r) == p["solution"]
        assert len(p["solution"]) <= 60
    # The longest reply fits 64 generated tokens (the code benchmark's max_new_tokens).
    assert max(len(_ids(tok, tasks.code_response(p))) for p in probs) <= 64


def test_code_reward_accepts_the_reference_and_rejects_a_wrong_program():
    from geopd.grading.code import grade_code

    p = tasks.code_problems(1, 4, "test")[0]
    assert grade_code(tasks.code_response(p), p["tests"])
    wrong = tasks.code_response(p).replace("print(", "print(1+")
    assert not grade_code(wrong, p["tests"])


# ---- pretraining corpus ------------------------------------------------------------------------

def test_pretrain_corpus():
    docs = tasks.pretrain_corpus(3000, 0)
    assert docs == tasks.pretrain_corpus(3000, 0) and docs != tasks.pretrain_corpus(3000, 1)
    assert all(0 < len(d) <= tasks.MAX_DOC_CHARS for d in docs)
    assert not any("boxed" in d or "<think>" in d or "What is" in d for d in docs)
    kinds = {"facts": 0, "sequence": 0, "code": 0}
    test_pairs = {tuple(sorted(_operands(p))) for p in tasks.math_problems(2000, 0, "test")}
    test_programs = {p["solution"] for p in tasks.code_problems(len(tasks.code_pool("test")), 0, "test")}
    for d in docs:
        if "map(int" in d:
            kinds["code"] += 1
            assert (d.split("\n", 1)[1] if d.startswith("#") else d) not in test_programs
        elif "=" in d:
            kinds["facts"] += 1
            for fact in d.split("\n"):
                a, b, c = map(int, re.fullmatch(r"(\d+)\+(\d+)=(\d+)", fact).groups())
                assert a + b == c and tuple(sorted((a, b))) not in test_pairs
        else:
            kinds["sequence"] += 1
            terms = list(map(int, d.split()))
            assert len({y - x for x, y in zip(terms, terms[1:])}) == 1
    assert all(v > 200 for v in kinds.values()), kinds


# ---- models ------------------------------------------------------------------------------------

DENSE = dict(hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64, head_dim=8)
MOE = dict(DENSE, num_experts=4, experts_per_tok=2, moe_intermediate=16)


def _config(arch, tok, **size):
    from geopd.world.models import tiny_config

    return tiny_config(arch, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                       eos_token_id=tok.eos_token_id, **size)


def test_configs(tok):
    from transformers import Qwen3Config, Qwen3MoeConfig

    from geopd.world.models import tiny_config

    dense = _config("qwen3", tok, **DENSE)
    assert type(dense) is Qwen3Config and dense.attention_dropout == 0.0 and dense.head_dim == 8
    assert dense.bos_token_id is None and dense.eos_token_id == tok.eos_token_id
    moe = _config("qwen3_moe", tok, **MOE)
    assert type(moe) is Qwen3MoeConfig
    assert (moe.num_experts, moe.num_experts_per_tok, moe.moe_intermediate_size, moe.head_dim) == (4, 2, 16, 8)
    with pytest.raises(UserError, match="arch"):
        tiny_config("llama", vocab_size=10, **DENSE)
    with pytest.raises(UserError, match="kv_heads"):
        tiny_config("qwen3", vocab_size=10, **dict(DENSE, kv_heads=3))


def test_init_is_deterministic_and_leaves_global_rng(tok):
    import torch

    from geopd.world.models import init_model

    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = init_model(_config("qwen3", tok, **DENSE), seed=1)
    assert torch.equal(torch.rand(1), before)
    b = init_model(_config("qwen3", tok, **DENSE), seed=1)
    c = init_model(_config("qwen3", tok, **DENSE), seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert all(v.dtype == torch.float32 for v in sa.values())


@pytest.mark.parametrize("arch,size", [("qwen3", DENSE), ("qwen3_moe", MOE)])
def test_save_and_reload_gives_identical_logits(tok, tmp_path, arch, size):
    import torch
    from transformers import AutoModelForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM

    from geopd.world.models import init_model

    torch.set_num_threads(1)
    model = init_model(_config(arch, tok, **size), seed=0).eval()
    model.save_pretrained(tmp_path / "m", safe_serialization=True)
    assert (tmp_path / "m" / "model.safetensors").exists()
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert type(again) is {"qwen3": Qwen3ForCausalLM, "qwen3_moe": Qwen3MoeForCausalLM}[arch]
    assert next(again.parameters()).dtype == torch.float32
    batch = tok(["What is 12+7?", "Read a b"], padding=True, return_tensors="pt")
    with torch.no_grad():
        x = model(**batch).logits
        y = again(**batch).logits
    assert torch.equal(x, y)
    assert torch.isfinite(x[batch["attention_mask"].bool()]).all()
