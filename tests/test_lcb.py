"""LiveCodeBench v5: data decoding, the window, the generic prompt, code extraction, and
grading rule by rule against what the official runner (lcb_runner/evaluation/
testing_util.py) does. The expected verdicts in OFFICIAL_CASES were measured by running
the official runner itself on each case; they include its quirks on purpose."""
from __future__ import annotations

import base64
import json
import os
import pickle
import time
import zlib

import pytest

from geopd.errors import UserError
from geopd.data import lcb as lcb_data
from geopd.evaluate import lcb
from geopd.grading.code import (check_functional, check_stdin, extract_last_code_block, grade_code, grade_tests,
                                stdin_verdict)


def _blob(value, protocol=pickle.DEFAULT_PROTOCOL) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(value, protocol=protocol))).decode()


TESTS = [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"},
         {"input": "10 20\n", "output": "30\n", "testtype": "stdin"}]


# ---- private tests and the restricted unpickler ----------------------------------------------

@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_private_tests_decode_from_the_released_encoding(protocol):
    # The release pickles a JSON string; plain pickled lists decode too.
    assert lcb_data.decode_private_tests(_blob(json.dumps(TESTS), protocol)) == TESTS
    assert lcb_data.decode_private_tests(_blob(TESTS, protocol)) == TESTS
    assert lcb_data.decode_private_tests(json.dumps(TESTS)) == TESTS  # some rows are plain JSON


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_restricted_unpickler_refuses_globals(tmp_path):
    marker = tmp_path / "pwned"
    for payload in (_Evil(marker), [{"input": "1", "output": _Evil(marker)}]):
        with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
            lcb_data.decode_private_tests(_blob(payload))
    assert not marker.exists()
    # The refusal comes before any lookup: even harmless-looking globals are refused.
    with pytest.raises(pickle.UnpicklingError, match="json.loads"):
        lcb_data.decode_private_tests(_blob(json.loads))
    row = {"question_id": "q1", "question_content": "x", "contest_date": "2024-09-01T00:00:00",
           "public_test_cases": "[]", "private_test_cases": _blob(_Evil(marker)), "metadata": "{}"}
    with pytest.raises(UserError, match="q1"):
        lcb_data.normalise_problem(row)
    assert not marker.exists()


def test_malformed_private_tests_are_named():
    with pytest.raises(ValueError, match="neither JSON nor base64"):
        lcb_data.decode_private_tests("%%% not base64 %%%")
    with pytest.raises(ValueError, match="malformed test case"):
        lcb_data.decode_private_tests(_blob(json.dumps([{"input": 1}])))


# ---- problems, window, loading -------------------------------------------------------------

def _row(qid, date, *, func_name=None, starter="", tests=TESTS):
    ttype = "functional" if func_name else "stdin"
    tests = [dict(t, testtype=ttype) for t in tests]
    return {"question_title": f"title {qid}", "question_content": f"Solve {qid}.", "platform": "atcoder",
            "question_id": qid, "contest_id": "c1", "contest_date": date, "starter_code": starter,
            "difficulty": "easy", "public_test_cases": json.dumps(tests[:1]),
            "private_test_cases": _blob(json.dumps(tests[1:])),
            "metadata": json.dumps({"func_name": func_name} if func_name else {})}


def test_normalise_problem_decodes_everything():
    row = _row("abc001_a", "2024-09-14T00:00:00", func_name="solve")
    p = lcb_data.normalise_problem(row)
    assert p["metadata"] == {"func_name": "solve"}
    assert p["public_test_cases"] == [dict(TESTS[0], testtype="functional")]
    assert p["private_test_cases"] == row["private_test_cases"]  # kept compact, checked
    assert lcb_data.tests_of(p)[1:] == [dict(TESTS[1], testtype="functional")]
    plain = lcb_data.normalise_problem(dict(row, private_test_cases=json.dumps(TESTS[1:])))
    assert plain["private_test_cases"] == TESTS[1:]
    assert p["id"] == p["question_id"] == "abc001_a"
    assert lcb_data.tests_of(p) == [dict(t, testtype="functional") for t in TESTS]
    json.dumps(p)  # a plain record: the data rule writes it as JSONL


def test_window_is_half_open():
    inside = ["2024-08-01T00:00:00", "2024-12-31T23:59:59", "2025-01-31T12:00:00"]
    outside = ["2024-07-31T23:59:59", "2025-02-01T00:00:00", "2023-05-01T00:00:00"]
    assert all(lcb_data.in_window({"contest_date": d}) for d in inside)
    assert not any(lcb_data.in_window({"contest_date": d}) for d in outside)


def test_load_problems_reads_the_release_files_and_filters(tmp_path):
    dates = {"test.jsonl": "2023-06-01T00:00:00", "test2.jsonl": "2024-08-01T00:00:00",
             "test3.jsonl": "2024-10-05T00:00:00", "test4.jsonl": "2025-01-31T00:00:00",
             "test5.jsonl": "2025-02-01T00:00:00"}
    for i, (name, date) in enumerate(dates.items()):
        (tmp_path / name).write_text(json.dumps(_row(f"q{i}", date)) + "\n")
    (tmp_path / "test6.jsonl").write_text(json.dumps(_row("q6", "2024-09-01T00:00:00")) + "\n")  # v6 only
    spec = {"name": "lcb-v5", "kind": "hub-lcb", "release": "release_v5", "path": str(tmp_path),
            "date_from": "2024-08-01", "date_to": "2025-02-01"}
    assert [p["question_id"] for p in lcb_data.load_problems(spec)] == ["q1", "q2", "q3"]
    assert lcb_data.RELEASE_FILES["release_v5"] == ["test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl",
                                                    "test5.jsonl"]
    (tmp_path / "test3.jsonl").unlink()
    with pytest.raises(UserError, match="test3.jsonl"):
        lcb_data.load_problems(spec)
    with pytest.raises(UserError, match="release_v9"):
        lcb_data.load_problems(dict(spec, release="release_v9"))


# ---- prompt and extraction -------------------------------------------------------------------

def test_generic_prompt_wording():
    stdin = lcb_data.format_prompt({"question_content": "Add two numbers.", "starter_code": ""})
    assert stdin == (
        "### Question:\nAdd two numbers.\n\n"
        "### Format: Read the inputs from stdin solve the problem and write the answer to stdout (do not "
        "directly test on the sample inputs). Enclose your code within delimiters as follows. Ensure that "
        "when the python program runs, it reads the inputs, runs the algorithm and writes output to STDOUT.\n"
        "```python\n# YOUR CODE HERE\n```\n\n"
        "### Answer: (use the provided format with backticks)\n\n")
    starter = "class Solution:\n    def add(self, a: int, b: int) -> int:\n        "
    func = lcb_data.format_prompt({"question_content": "Add.", "starter_code": starter})
    assert func == (
        "### Question:\nAdd.\n\n"
        "### Format: You will use the following starter code to write the solution to the problem and "
        "enclose your code within delimiters.\n"
        f"```python\n{starter}\n```\n\n"
        "### Answer: (use the provided format with backticks)\n\n")
    messages = lcb_data.format_messages({"question_content": "Add.", "starter_code": starter})
    assert messages[0] == {"role": "system", "content": lcb_data.SYSTEM_MESSAGE}
    assert lcb_data.SYSTEM_MESSAGE.startswith("You are an expert Python programmer.")


def test_last_code_block_extraction():
    two = "Try:\n```python\nprint(1)\n```\nBetter:\n```python\nprint(2)\nprint(3)\n```\nDone."
    assert extract_last_code_block(two) == "print(2)\nprint(3)"
    assert lcb.extract_code(two) == "print(2)\nprint(3)"
    assert extract_last_code_block("```\nx = 1\n```") == "x = 1"
    assert extract_last_code_block("no code here") is None
    assert extract_last_code_block("```python\nprint(1)\n(truncated") is None  # one fence: no block
    assert extract_last_code_block("") is None
    # LCB's rule counts any line containing ```: a trailing inline mention ends the last pair.
    assert extract_last_code_block("```python\nprint(1)\n```\nsee ``` above") == ""


# ---- comparison rules ----------------------------------------------------------------------

@pytest.mark.parametrize("output,expected,same", [
    ("3\n", "3", True),
    ("3   \n  4\n\n", "3\n4", True),           # trailing spaces and blank tail lines
    ("1.0000000", "1", True),                   # numbers compared as Decimals
    ("1.0000000 2.50", "1 2.5", True),
    ("1e2", "100", True),
    ("0.333333", "0.3333333", False),           # no tolerance beyond exact decimal value
    ("1 2", "1  2", True),                      # token split on whitespace
    ("1 2 3", "1 2", False),
    ("Yes", "yes", False),
    ("1\n2", "1", False),                        # line count must match
    ("", "0", False),
    ("1\r\n2\r\n", "1\n2", True),
    ("nan", "nan", True),                        # equal as text
    ("nan", "NaN", False),                       # but Decimal NaN never equals itself
])
def test_stdin_comparison_rules(output, expected, same):
    assert check_stdin(output, expected) is same


def test_functional_comparison_rules():
    assert check_functional("[1, 2]", "[1,2]")
    assert check_functional("2.0", "2")
    assert check_functional("true", "1")
    assert not check_functional("[1, 2]", "[2, 1]")
    assert not check_functional("not json", "1")
    big = "1" + "0" * 6000  # past Python's default int digit limit
    assert check_functional(big, big)


# ---- grading against the official runner, case by case -----------------------------------------

def _passes(results):
    return [r is True for r in results]


def test_grading_matches_the_official_runner():
    """Every case of tests/lcb_parity_cases.py (official results measured with
    scripts/lcb_parity.py) gives the same pass/fail on each test it runs, and stops at the
    same test, unless the case names a documented difference."""
    from concurrent.futures import ThreadPoolExecutor

    from lcb_parity_cases import CASES, PARITY_TIMEOUT

    def ours(case):
        _, code, tests, fn_name, _, _ = case
        graded = grade_tests(code, [{"input": i, "output": o} for i, o in tests], fn_name=fn_name,
                             timeout_s=PARITY_TIMEOUT)
        assert graded["isolated"], graded["isolation"]
        return [True if r["passed"] else r["error_code"] for r in graded["results"]]

    with ThreadPoolExecutor(max_workers=2) as pool:
        got = list(pool.map(ours, CASES))
    undocumented = [(c[0], c[4], g) for c, g in zip(CASES, got) if c[5] is None and _passes(g) != _passes(c[4])]
    assert undocumented == []
    documented = [c[0] for c, g in zip(CASES, got) if c[5] is not None and _passes(g) != _passes(c[4])]
    assert documented == [c[0] for c in CASES if c[5] is not None]  # still different, as the README says
    assert len(CASES) >= 50


# ---- program output never takes the grader down --------------------------------------------------

def test_hostile_output_is_a_verdict_in_bounded_time():
    cases = [("sNaN", "1", "runtime_error"), ("sNaN", "sNaN", "passed"), ("sNaN 1", "1", "wrong_answer"),
             ("1 sNaN x", "1 2 3", "wrong_answer"), ("1 sNaN", "2 3", "wrong_answer"),
             ("1 sNaN", "1 3", "runtime_error"), ("[" * 200_000, "1", "wrong_answer"),
             ("9" * 500_000, "9" * 500_000, "passed"), ("9" * 500_000, "8" + "9" * 499_999, "wrong_answer"),
             ("1 " * 10_000_000, "1", "wrong_answer"), ("1\n" * 5_000_000, "1", "wrong_answer"),
             ("1 " * 1_000_000, "1 " * 999_999 + "2", "wrong_answer")]
    t = time.monotonic()
    for output, expected, verdict in cases:
        assert stdin_verdict(output, expected) == verdict, (output[:20], expected[:20])
    assert time.monotonic() - t < 30
    deep = "[" * 100_000 + "]" * 100_000
    assert check_functional(deep, "[]") is False                 # RecursionError inside json: unequal
    assert check_functional("1" + "0" * 500_000, "1") is False    # no int conversion of 500k digits
    assert check_functional("1" + "0" * 500_000, "1" + "0" * 500_000) is True
    assert check_functional(b"\xff\xfe", "1") is False
    assert check_functional("NaN", "NaN") is False and check_functional("2.0", "2") is True


def test_grading_bounds_the_graders_memory():
    """A line of 2 million tokens is compared token by token: the grader's memory grows by
    a small multiple of the text (lists of Decimals would take ~200 MB)."""
    import subprocess
    import sys

    probe = ("import resource\n"
             "from geopd.grading.code import stdin_verdict\n"
             "out, want = '1 ' * 2_000_000, '1 ' * 1_999_999 + '2'\n"
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "assert stdin_verdict(out, want) == 'wrong_answer'\n"
             "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)")
    grown_mb = int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)
    assert grown_mb < 40, grown_mb


def _problem(func_name=None, tests=TESTS):
    row = _row("p", "2024-09-01T00:00:00", func_name=func_name, tests=tests)
    return lcb_data.normalise_problem(row)


def test_grade_problem_stops_at_the_first_failure():
    tests = [{"input": f"{i} {i}\n", "output": f"{2 * i}\n"} for i in range(4)]
    problem = _problem(tests=tests)
    ok = lcb.grade_problem(problem, "a, b = map(int, input().split())\nprint(a + b)")
    assert ok["passed"] and len(ok["results"]) == 4 and ok["n_tests"] == 4
    # Wrong on the second test, and would hang on the rest: grading stops at test 2.
    code = "a, b = map(int, input().split())\nif a == 2:\n    while True: pass\nprint(a + b + (a == 1))"
    t = time.monotonic()
    bad = lcb.grade_problem(problem, code)
    assert not bad["passed"]
    assert [r["verdict"] for r in bad["results"]] == ["passed", "wrong_answer"]
    assert bad["results"][1]["error_code"] == -2
    assert time.monotonic() - t < 5


def test_grade_problem_timeout_and_functional():
    problem = _problem(func_name="add", tests=[{"input": "1\n2", "output": "3"}, {"input": "[1]\n[2]",
                                                                                   "output": "[1, 2]"}])
    code = "class Solution:\n    def add(self, a, b):\n        return a + b"
    assert lcb.grade_problem(problem, code)["passed"]
    slow = "class Solution:\n    def add(self, a, b):\n        while True: pass"
    t = time.monotonic()
    res = lcb.grade_problem(problem, slow, timeout_s=0.5)
    assert [r["verdict"] for r in res["results"]] == ["timeout"] and res["results"][0]["error_code"] == -3
    assert time.monotonic() - t < 3
    missing = lcb.grade_problem(problem, None)
    assert missing["passed"] is False and missing["results"] == []


def test_grade_responses_and_pass_at_1():
    problems = [_problem(), _problem()]
    good = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    bad = "```python\nprint(0)\n```"
    graded = lcb.grade_responses(problems, [[good, bad], [good, good]], workers=2)
    flags = [[g["passed"] for g in row] for row in graded]
    assert flags == [[True, False], [True, True]]
    assert graded[0][0]["code"] == "a, b = map(int, input().split())\nprint(a + b)"
    assert lcb.pass_at_1(graded) == pytest.approx((0.5 + 1.0) / 2)
    assert lcb.pass_at_1([[True, False], [True, True], [False]]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        lcb.pass_at_1([[]])


# ---- the miniature code reward ---------------------------------------------------------------

def test_grade_code_reward():
    tests = [{"input": "2 3\n", "output": "5\n"}, {"input": "10 -4\n", "output": "6"}]
    good = "Here:\n```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    assert grade_code(good, tests) is True
    assert grade_code("```python\nprint(5)\n```", tests) is False   # passes the first test only
    assert grade_code("print(5)", tests) is False                   # no code block
    assert grade_code(good, []) is False
    # Wrong on the first test, would hang on the second: grading stops at the first.
    wrong_then_hang = "```python\na, b = map(int, input().split())\nif a == 10:\n    while True: pass\n" \
                      "print(a + b + 1)\n```"
    t = time.monotonic()
    assert grade_code(wrong_then_hang, tests, timeout_s=5) is False
    assert time.monotonic() - t < 3


def test_reward_takes_stdin_and_call_based_records():
    from geopd.train.rewards import reward

    stdin_record = {"id": "m1", "prompt": "add", "tests": [{"input": "2 3\n", "output": "5\n"}]}
    good = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    assert reward(stdin_record, good) == 1.0 and reward(stdin_record, "```python\nprint(4)\n```") == 0.0
    call = {"id": "d1", "prompt": "add", "fn_name": "add",
            "tests": [{"input": "2\n3", "output": "5"}, {"input": "[1]\n[2]", "output": "[1, 2]"}]}
    solution = "```python\nclass Solution:\n    def add(self, a, b):\n        return a + b\n```"
    function = "```python\ndef add(a, b):\n    return a + b\n```"
    assert reward(call, solution) == 1.0 and reward(call, function) == 1.0
    assert reward(call, good) == 0.0  # a stdin program is no answer to a call-based problem
    with pytest.raises(UserError, match="d2.*fn_name"):
        reward({"id": "d2", "fn_name": 3, "tests": call["tests"]}, solution)
    with pytest.raises(UserError, match="d3.*tests"):
        reward({"id": "d3", "tests": [{"input": 1, "output": "2"}]}, solution)


def test_a_sandbox_that_cannot_start_is_a_verdict(monkeypatch):
    from geopd.grading import code

    monkeypatch.setattr(code, "STARTUP_S", 0.0)  # nothing starts in no time
    r = lcb.run_stdin_test("print(1)", "", "1")
    assert r["verdict"] == "sandbox_error" and r["error_code"] == -5
    assert grade_code("```python\nprint(1)\n```", [{"input": "", "output": "1"}]) is False
