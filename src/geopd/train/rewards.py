"""Verifiable rewards: 1.0 if a response is correct, else 0.0 (math: last \\boxed{}; code: tests).

Code records carry `tests`, a list of {"input": str, "output": str}; with a string
`fn_name` the tests are call-based (LiveCodeBench's functional convention: one JSON
argument per input line, the JSON of the return value as output), otherwise stdin/stdout.
"""
from __future__ import annotations

from geopd.errors import UserError
from geopd.grading.code import grade_code
from geopd.grading.math import grade_math


def code_tests(record: dict) -> tuple[list[dict], str | None]:
    """A code record's tests and fn_name, checked (a clear error names the record)."""
    tests, fn_name = record["tests"], record.get("fn_name")
    where = f"record {record.get('id', '?')}"
    if not isinstance(tests, list) or not all(
            isinstance(t, dict) and isinstance(t.get("input"), str) and isinstance(t.get("output"), str) for t in tests):
        raise UserError(f"{where}: 'tests' must be a list of {{'input': str, 'output': str}}")
    if fn_name is not None and not (isinstance(fn_name, str) and fn_name):
        raise UserError(f"{where}: 'fn_name' must be a non-empty string, got {fn_name!r}")
    return tests, fn_name


def reward(record: dict, response: str) -> float:
    if "answer" in record:
        return float(grade_math(response, record["answer"], integer_range=record.get("integer_range")))
    if "tests" in record:
        tests, fn_name = code_tests(record)
        return float(grade_code(response, tests, fn_name=fn_name))
    raise UserError(f"record {record.get('id', '?')} has neither an answer nor tests: no verifiable reward")
