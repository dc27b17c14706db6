"""Data preparation: hub-record normalisers on hand-written rows, and every paper data set
prepared through the real loaders from the paper-shaped fixture's hub mirror. No network."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geopd.data import (MATH_INSTRUCTION, MCQ_INSTRUCTION, code_tests, hub_rows, normalise_code, normalise_math,
                        normalise_mcq, prepare, read_jsonl)
from geopd.errors import UserError
from geopd.grid import Grid

REPO = Path(__file__).resolve().parents[1]
PAPER = [REPO / "config/paper.yaml", REPO / "tests/configs/paper-fixture.yaml"]

GPQA_ROW = {"Question": "Which particle mediates the electromagnetic force?",
            "Correct Answer": "photon", "Incorrect Answer 1": "gluon",
            "Incorrect Answer 2": "W boson", "Incorrect Answer 3": "graviton", "Record ID": "rec1"}


def test_mcq_letter_points_at_the_correct_option():
    rec = normalise_mcq(GPQA_ROW, 0)
    assert rec["task"] == "mcq" and rec["id"] == "rec1"
    lines = {line[1]: line[4:] for line in rec["prompt"].splitlines() if line.startswith("(")}
    assert sorted(lines) == ["A", "B", "C", "D"]
    assert lines[rec["answer"]] == "photon"
    assert rec["prompt"].endswith("\n" + MCQ_INSTRUCTION)
    assert sorted(lines.values()) == sorted(["photon", "gluon", "W boson", "graviton"])


def test_mcq_order_is_a_function_of_the_question_only():
    assert normalise_mcq(GPQA_ROW, 0) == normalise_mcq(dict(GPQA_ROW), 5) | {"id": "rec1"}
    # Over many questions the correct letter is not always the same one.
    letters = {normalise_mcq({**GPQA_ROW, "Question": f"q{i}"}, i)["answer"] for i in range(40)}
    assert letters == {"A", "B", "C", "D"}


def test_mcq_missing_option_is_a_clear_error():
    row = {k: v for k, v in GPQA_ROW.items() if k != "Incorrect Answer 3"}
    with pytest.raises(UserError, match="Incorrect Answer"):
        normalise_mcq(row, 3)


def test_math_answer_from_fields_in_order():
    assert normalise_math({"problem": "1+1?", "answer": 2}, 0)["answer"] == "2"
    dapo = {"prompt": [{"role": "user", "content": "What is 3?"}], "reward_model": {"ground_truth": "3"}}
    assert normalise_math(dapo, 1) == {"id": "1", "prompt": "What is 3?\n" + MATH_INSTRUCTION, "answer": "3",
                                       "task": "math"}
    sol = {"question": "q", "solution": r"so \boxed{4} then \boxed{5}"}
    assert normalise_math(sol, 2)["answer"] == "5"
    with pytest.raises(UserError, match="no problem/answer"):
        normalise_math({"text": "x"}, 3)


def test_prepare_is_atomic_and_replaces(tmp_path):
    out = tmp_path / "math"
    spec = {"name": "math", "kind": "synthetic-math", "n_train": 5, "n_test": 3, "seed": 0}
    assert prepare(spec, out) == {"train": 5, "test": 3}
    first = read_jsonl(out / "test.jsonl")
    assert prepare(spec, out) == {"train": 5, "test": 3}
    assert read_jsonl(out / "test.jsonl") == first  # deterministic from the seed
    assert [p.name for p in tmp_path.iterdir()] == ["math"]  # no temporary folder left behind


# ---- one answer format: \boxed{} from training prompt to reward to evaluation ----------------------

DAPO_CONTENT = ("Solve the following math problem step by step. The last line of your response should be of the "
                "form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
                "Find $x$ if $2x = 6$.\n\nRemember to put your answer on its own line after \"Answer:\".")


def test_dapo_prompt_asks_for_boxed_not_answer_line():
    row = {"prompt": [{"role": "user", "content": DAPO_CONTENT}], "reward_model": {"ground_truth": "3"},
           "extra_info": {"index": "abc"}}
    stats = {}
    rec = normalise_math(row, 0, stats)
    assert rec == {"id": "abc", "prompt": "Find $x$ if $2x = 6$.\n" + MATH_INSTRUCTION, "answer": "3", "task": "math"}
    assert "Answer:" not in rec["prompt"] and stats == {"answer_wrapper_removed": 1}


def test_reward_grades_the_format_the_prompt_asks_for():
    # The instruction asks for \boxed{}; the math grader (reward, EffOPD validation, benchmarks)
    # reads the last \boxed{}: an answer in the asked format scores, DAPO's "Answer:" line does not.
    from geopd.grading.math import grade_math

    assert "\\boxed{}" in MATH_INSTRUCTION
    assert grade_math("so x = 3, hence \\boxed{3}", "3")
    assert not grade_math("so x = 3.\nAnswer: 3", "3")


# ---- code: DeepCoder's four test formats -> one schema ---------------------------------------------

def test_code_tests_every_deepcoder_format():
    stdin = [{"input": "1 2\n", "output": "3\n"}]
    assert code_tests(json.dumps(stdin)) == (stdin, None, "exact")                               # codeforces
    lcb_fn = [{"input": "[1, 2]\n3", "output": "[1, 2, 3]", "testtype": "functional"}]
    assert code_tests(json.dumps(lcb_fn), json.dumps({"func_name": "push"})) == (
        [{"input": "[1, 2]\n3", "output": "[1, 2, 3]"}], "push", "exact")                         # lcbv5
    assert code_tests(json.dumps([dict(stdin[0], testtype="stdin")]), "{}") == (stdin, None, "exact")
    pi = [{"type": "function_call", "fn_name": "f", "input": [[1, 2], "a"], "output": [{"k": 1}]}]
    assert code_tests(json.dumps(pi)) == (                                                        # primeintellect
        [{"input": "[1, 2]\n\"a\"", "output": "[{\"k\": 1}]"}], "f", "value-or-first")
    assert code_tests(json.dumps([{"type": "stdin_stdout", "input": "5\n", "output": "5\n"}])) == (
        [{"input": "5\n", "output": "5\n"}], None, "exact")
    taco_fn = {"fn_name": "g", "inputs": [[3], [[1, 2]]], "outputs": [[9], [[2, 1]]]}            # taco, call-based
    assert code_tests(json.dumps(taco_fn)) == ([{"input": "3", "output": "[9]"},
                                                {"input": "[1, 2]", "output": "[[2, 1]]"}], "g", "value-or-first")
    taco_io = {"inputs": ["ab\n", ["1 2", "3"]], "outputs": ["ba\n", ["3", "3"]]}                # taco, stdin
    assert code_tests(str(taco_io)) == ([{"input": "ab\n", "output": "ba\n"},
                                        {"input": "1 2\n3", "output": "3\n3"}], None, "exact")


# A function that truly returns a one-element list, in each source's convention: TACO/APPS and
# PrimeIntellect store the result wrapped ([[7]]) as a rule and sometimes bare ([7]); their runner
# accepts the stored value or its first element. LiveCodeBench stores the JSON of the result.
RETURNS_LIST = "```python\ndef wrap(x):\n    return [x]\n```"
RETURNS_BARE = "```python\ndef wrap(x):\n    return x\n```"


@pytest.mark.parametrize("row, source, correct, lenient", [
    # taco, wrapped: the list [7] is right, the bare 7 is wrong
    ({"tests": json.dumps({"fn_name": "wrap", "inputs": [[7]], "outputs": [[[7]]]})}, "taco", True, False),
    # taco, stored bare: the list is right, and the APPS runner also accepts 7 (its first element)
    ({"tests": json.dumps({"fn_name": "wrap", "inputs": [[7]], "outputs": [[7]]})}, "taco", True, True),
    ({"tests": json.dumps([{"type": "function_call", "fn_name": "wrap", "input": [7], "output": [[7]]}])},
     "primeintellect", True, False),
    # LiveCodeBench: exactly the JSON of the result
    ({"tests": json.dumps([{"input": "7", "output": "[7]", "testtype": "functional"}]),
      "metadata": json.dumps({"func_name": "wrap"})}, "lcbv5", True, False),
])
def test_call_based_outputs_follow_each_source_s_convention(row, source, correct, lenient):
    """Neither shape of a one-element list result is unwrapped at preparation: a correct function
    passes both TACO shapes (the old loader unwrapped [[7]] to [7] and failed it), and a bare
    result passes only where the source's own runner would pass it."""
    from geopd.train.rewards import reward

    rec = normalise_code({"problem": "Return [x].", **row}, 0, source)
    assert rec.get("call_match", "exact") == ("exact" if source == "lcbv5" else "value-or-first")
    assert reward(rec, RETURNS_LIST) == float(correct)
    assert reward(rec, RETURNS_BARE) == float(lenient)


@pytest.mark.parametrize("tests", ["[]", json.dumps({"inputs": ["1"], "outputs": []}), "not json",
                                   json.dumps([{"input": "1", "output": "1", "testtype": "functional"}]),
                                   json.dumps([{"input": "1", "output": "1"},
                                               {"type": "function_call", "fn_name": "f", "input": [1], "output": [1]}])])
def test_code_without_usable_tests_is_dropped(tests):
    assert code_tests(tests) is None
    assert normalise_code({"problem": "p", "tests": tests}, 0, "taco") is None


def test_code_record_schema_and_prompt():
    rec = normalise_code({"problem": "Add.", "tests": json.dumps([{"input": "1\n2", "output": "3",
                                                                     "testtype": "functional"}]),
                          "metadata": json.dumps({"func_name": "add"}),
                          "starter_code": "class Solution:\n    def add(self, a, b):\n        "}, 4, "lcbv5")
    assert rec["id"] == "lcbv5-4" and rec["task"] == "code" and rec["source"] == "lcbv5" and rec["fn_name"] == "add"
    assert rec["tests"] == [{"input": "1\n2", "output": "3"}]
    assert rec["prompt"].startswith("### Question:\nAdd.") and "def add(self, a, b)" in rec["prompt"]


# ---- every paper data set through the real loaders, from the fixture mirror ---------------------------

@pytest.fixture(scope="module")
def fixture_grid(paper_mirror):
    from geopd.config import validate
    from geopd.grid import merged_config

    config = merged_config(PAPER)
    config["hub_mirror"] = str(paper_mirror)
    return Grid(validate(config, PAPER), PAPER)


def _prepared(grid, name, tmp_path):
    spec = grid.data_spec(name)
    assert spec["path"] == str(grid.mirror / "datasets" / spec["hub"])  # read from the mirror, not the hub
    counts = prepare(spec, tmp_path / name)
    info = json.loads((tmp_path / name / "info.json").read_text())
    split = spec.get("as_split", "train")
    return read_jsonl(tmp_path / name / f"{split}.jsonl"), counts, info


def test_every_paper_data_set_prepares_from_the_mirror(fixture_grid, tmp_path):
    keys = {"hub-math": {"id", "prompt", "answer", "task"}, "hub-mcq": {"id", "prompt", "answer", "task"},
            "hub-sft": {"id", "messages", "task"}, "hub-code": {"id", "prompt", "tests", "task", "source"},
            "hub-lcb": {"id", "question_content", "public_test_cases", "private_test_cases", "task"}}
    assert {d["kind"] for d in fixture_grid.datasets.values()} == set(keys)
    for name, data in fixture_grid.datasets.items():
        records, counts, info = _prepared(fixture_grid, name, tmp_path)
        assert records and counts[data.get("as_split", "train")] == len(records), name
        assert all(keys[data["kind"]] <= set(r) for r in records), name
        if data["kind"] == "hub-math":
            assert all(r["prompt"].endswith("\n" + MATH_INSTRUCTION) for r in records), name
        if data["kind"] == "hub-mcq":
            assert all(r["answer"] in "ABCD" and r["prompt"].endswith(MCQ_INSTRUCTION) for r in records)


def test_dapo_is_deduplicated_with_counts(fixture_grid, tmp_path):
    records, counts, info = _prepared(fixture_grid, "dapo-math-17k", tmp_path)
    assert info["stats"] == {"rows": 2000, "duplicates_dropped": 1980, "unique": 20, "answer_wrapper_removed": 2000}
    assert counts["train"] == 20 and len({r["prompt"] for r in records}) == 20
    assert not any("Answer:" in r["prompt"] for r in records)


def test_deepcoder_trains_on_its_three_training_configs(fixture_grid, tmp_path):
    """DeepCoder's training set is primeintellect + taco + lcbv5's train split; its codeforces
    config has only a test split (held out), as on the hub, and is not read."""
    assert fixture_grid.data_spec("deepcoder")["subsets"] == ["primeintellect", "taco", "lcbv5"]
    records, counts, info = _prepared(fixture_grid, "deepcoder", tmp_path)
    assert info["stats"] == {"rows": {"primeintellect": 3, "taco": 5, "lcbv5": 3},
                             "dropped_no_tests": {"primeintellect": 0, "taco": 1, "lcbv5": 0}}
    by_source = {}
    for r in records:
        by_source.setdefault(r["source"], []).append(r)
        assert r["tests"] and all(set(t) == {"input", "output"} and all(isinstance(v, str) for v in t.values())
                                  for t in r["tests"])
    assert sorted(by_source) == ["lcbv5", "primeintellect", "taco"]
    assert {r.get("fn_name") for r in records} == {None, "sumList", "add", "max_of", "wrap", "pair_list", "singleton"}
    assert {r["fn_name"]: r.get("call_match") for r in records if "fn_name" in r} == {
        "sumList": None, "add": None, "max_of": "value-or-first", "wrap": "value-or-first",
        "pair_list": "value-or-first", "singleton": "value-or-first"}
    singleton = next(r for r in records if r.get("fn_name") == "singleton")
    assert [t["output"] for t in singleton["tests"]] == ["[[1]]", "[7]"]  # both shapes, as stored
    spec = fixture_grid.data_spec("deepcoder")
    with pytest.raises(UserError, match="codeforces.*split train"):
        next(hub_rows(spec, "codeforces", "train"))
    assert len(list(hub_rows(spec, "codeforces", "test"))) == 3


def sft_spec(tmp_path, rows: list[dict]) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "sft"
    (root / "data").mkdir(parents=True)
    msg = pa.struct([("content", pa.string()), ("role", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.string()), ("messages", pa.list_(msg))])),
                   root / "data" / "train-00000-of-00001.parquet")
    return {"name": "sft", "kind": "hub-sft", "hub": "x/sft", "path": str(root), "split": "train", "seed": 0}


def conversation(i: int, role: str = "assistant") -> dict:
    return {"id": str(i), "messages": [{"role": "user", "content": "q"}, {"role": role, "content": "a"}]}


def test_sft_dropped_conversations_are_counted_and_fail_above_one_percent(tmp_path, capsys):
    # 1 unusable of 100 (1%): prepared, the count and its reason reported
    rows = [conversation(i) for i in range(99)] + [conversation(99, role="function")]
    counts = prepare(sft_spec(tmp_path / "ok", rows), tmp_path / "ok" / "out")
    info = json.loads((tmp_path / "ok" / "out" / "info.json").read_text())
    assert counts["train"] == 99 and info["stats"]["dropped_unusable"] == 1
    assert info["stats"]["dropped_reasons"] == {"role 'function'": 1}
    assert "dropped 1 of 100 conversations (role 'function': 1)" in capsys.readouterr().err
    # 2 of 100: more than the 1% a readable data set has; nothing is published
    rows[0] = {"id": "0", "messages": [{"role": "user", "content": "q"}]}
    with pytest.raises(UserError, match=r"2 of 100 conversations are unusable \(.*no assistant answer: 1.*\), "
                                        r"more than 1%"):
        prepare(sft_spec(tmp_path / "bad", rows), tmp_path / "bad" / "out")
    assert not (tmp_path / "bad" / "out").exists()


def test_sft_keeps_conversations_and_samples_n_train(fixture_grid, tmp_path):
    records, counts, info = _prepared(fixture_grid, "dolci-think-sft", tmp_path)
    assert counts["train"] == 48 and info["stats"] == {"rows": 64, "sampled": 48, "dropped_unusable": 0}
    rows = {}
    import pyarrow.parquet as pq
    for f in sorted((fixture_grid.mirror / "datasets/allenai/Dolci-Think-SFT-7B/data").glob("*.parquet")):
        rows.update({r["id"]: r for r in pq.read_table(f).to_pylist()})
    for r in records:
        assert set(r) == {"id", "messages", "task"} and r["task"] == "sft"
        assert r["messages"] == [{k: v for k, v in m.items() if v is not None} for m in rows[r["id"]]["messages"]]
    assert any(r["messages"][0]["role"] == "system" for r in records)
    assert any(sum(m["role"] == "assistant" for m in r["messages"]) > 1 for r in records)
    again, _, _ = _prepared(fixture_grid, "dolci-think-sft", tmp_path / "again")
    assert again == records                                # the sample is a function of the seed


def test_lcb_reads_release_files_from_the_mirror(fixture_grid, tmp_path):
    from geopd.data.lcb import load_problems

    spec = fixture_grid.data_spec("lcb-v5")
    assert [p["id"] for p in load_problems(spec)] == ["abc301_a", "3500", "abc390_b"]  # in the v5 window only
    with pytest.raises(UserError, match="LiveCodeBench files not found.*prefetch"):
        load_problems({**spec, "path": str(tmp_path)})


def test_missing_mirror_copy_names_the_data_set_and_the_fix(fixture_grid, tmp_path):
    spec = {**fixture_grid.data_spec("aime24"), "path": str(tmp_path / "nowhere")}
    with pytest.raises(UserError, match="data set aime24: its copy .* does not exist .*prefetch"):
        prepare(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# VmHWM, not getrusage: ru_maxrss survives exec, so a child of a big pytest starts at its size.
_RSS = """
import json, sys
from geopd.data import prepare
prepare(json.loads(sys.argv[1]), sys.argv[2])
print([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")][0])
"""


@pytest.mark.slow
def test_sft_preparation_memory_does_not_grow_with_rows(tmp_path):
    """Peak RSS of preparing 2,000 vs 10,000 long conversations (7 MB vs 37 MB of output): the
    conversations stream to disk, so the peak stays put (materialised, it grows by ~1.5x the
    data). Both sizes are past the few row groups it takes pyarrow's allocator to level off."""
    from geopd.fixture import write_repo

    peaks, sizes = [], []
    for rows in (2000, 10000):
        mirror = tmp_path / f"m{rows}"
        write_repo(mirror, "datasets", "allenai/Dolci-Think-SFT-7B", rows=rows, files=2, row_group_size=256, words=400)
        spec = {"name": "sft", "kind": "hub-sft", "hub": "allenai/Dolci-Think-SFT-7B", "split": "train", "seed": 0,
                "path": str(mirror / "datasets/allenai/Dolci-Think-SFT-7B")}
        out = tmp_path / f"out{rows}"
        # Arrow's default jemalloc pool keeps a few MB more or less from run to run; the system
        # allocator makes the peak repeatable (2 MB apart here), and what is measured, rows held in
        # Python, does not depend on it.
        proc = subprocess.run([sys.executable, "-c", _RSS, json.dumps(spec), str(out)], capture_output=True,
                              text=True, timeout=600, env={**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks.append(int(proc.stdout.split()[-1]) / 1024)
        sizes.append((out / "train.jsonl").stat().st_size / 2**20)
    assert sizes[1] - sizes[0] > 25
    assert peaks[1] - peaks[0] < 0.25 * (sizes[1] - sizes[0]), (peaks, sizes)
