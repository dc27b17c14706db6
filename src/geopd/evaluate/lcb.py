"""LiveCodeBench v5 code generation: grading.

Grading is geopd.grading.code (one implementation for every code task): all tests of one
program run in one sandboxed process, as in the official runner
(LiveCodeBench/LiveCodeBench, lcb_runner/evaluation/testing_util.py), rule by rule; see
that module for the rules and README.md ("Code sandbox and graders") for every intended
difference from the official runner and why. Tests run public then private, stopping at
the first failure; a problem is solved when all its tests pass; pass@1 is the mean over
problems of (correct samples / samples). tests/test_lcb.py pins the verdicts the official
runner gave on each of its cases (measured with scripts/lcb_parity.py). The data and the
prompt are geopd.data.lcb's.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from geopd.data.lcb import private_tests, tests_of
from geopd.errors import UserError
from geopd.grading import code as _code
from geopd.grading.code import TIMEOUT_S, extract_last_code_block


# ---- extraction -------------------------------------------------------------------------------

def extract_code(response: str) -> str | None:
    """The last fenced code block (lines between the last two lines containing ```)."""
    return extract_last_code_block(response)


# ---- grading --------------------------------------------------------------------------------

def run_stdin_test(code: str, test_input: str, expected: str, *, timeout_s: float = TIMEOUT_S,
                   **sandbox_kwargs) -> dict:
    """One stdin test in a sandbox of its own: its verdict dict."""
    graded = _code.grade_tests(code, [{"input": test_input, "output": expected}], timeout_s=timeout_s,
                               **sandbox_kwargs)
    return graded["results"][0]


def grade_problem(problem: dict, code: str | None, timeout_s: float = TIMEOUT_S, **sandbox_kwargs) -> dict:
    """Run `code` (already extracted) on the problem's tests in one sandboxed process, in
    order, stopping at the first failure. Returns {"passed", "results": per-test verdicts,
    "n_tests", "isolated"}."""
    tests = tests_of(problem)
    if code is None:
        return {"passed": False, "results": [], "n_tests": len(tests), "error": "no code block"}
    if not tests:
        raise UserError(f"LiveCodeBench problem {problem.get('question_id', '?')} has no tests")
    func_name = (problem.get("metadata") or {}).get("func_name")
    graded = _code.grade_tests(code, tests, fn_name=func_name, timeout_s=timeout_s, **sandbox_kwargs)
    results = graded["results"]
    passed = len(results) == len(tests) and all(r["passed"] for r in results)
    return {"passed": passed, "results": results, "n_tests": len(tests), "isolated": graded["isolated"],
            "isolation": graded["isolation"]}


def grade_response(problem: dict, response: str, timeout_s: float = TIMEOUT_S, **sandbox_kwargs) -> dict:
    """extract_code, then grade_problem; the dict also carries the extracted code."""
    code = extract_code(response)
    graded = grade_problem(problem, code, timeout_s, **sandbox_kwargs)
    graded["code"] = code
    return graded


def grade_responses(problems: list[dict], responses: list[list[str]], *, timeout_s: float = TIMEOUT_S,
                    workers: int = 2, **sandbox_kwargs) -> list[list[dict]]:
    """grade_response for every sample of every problem, `workers` sandboxes at a time."""
    if len(problems) != len(responses):
        raise ValueError(f"{len(problems)} problems but {len(responses)} lists of responses")

    def one(i):
        # One problem per job: its tests are decoded once, and only `workers` problems'
        # tests are in memory at a time.
        problem = dict(problems[i], private_test_cases=private_tests(problems[i]))
        return [grade_response(problem, r, timeout_s, **sandbox_kwargs) for r in responses[i]]

    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, range(len(problems))))
    return [one(i) for i in range(len(problems))]


def pass_at_1(results: Iterable) -> float:
    """Mean over problems of (correct samples / samples). Each problem's entry is a list
    of booleans or of grade dicts (their "passed")."""
    per_problem = []
    for samples in results:
        flags = [s["passed"] if isinstance(s, dict) else bool(s) for s in samples]
        if not flags:
            raise ValueError("a problem with no graded samples has no pass@1")
        per_problem.append(sum(flags) / len(flags))
    if not per_problem:
        raise ValueError("pass@1 of no problems")
    return sum(per_problem) / len(per_problem)
