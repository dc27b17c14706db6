"""Verifiable rewards: 1.0 if a response is correct, else 0.0.

Math records carry `answer`; a run's `objective.reward` names their grader (`MATH_GRADERS`):
- "math-verify" (the default, the miniature's): the last \\boxed{} anywhere in the response,
  equivalent to the answer under math-verify (geopd.grading.math, the benchmarks' grader);
- "deepscaler": the paper's "binary DeepScaleR math accuracy", slime's `deepscaler` reward
  (geopd.grading.deepscaler): only the text after the last "</think>" counts, then its last
  \\boxed{} against the label under Hendrycks' and PRM800K's normalisation and sympy.
Responses reach the grader as the rollout engines decode them (skip_special_tokens): Qwen3's
"<think>" / "</think>" are added tokens that are not special, so they stay in the text.

Code records carry `tests`, a list of {"input": str, "output": str}; with a string
`fn_name` the tests are call-based (LiveCodeBench's functional convention: one JSON
argument per input line, the JSON of the return value as output), otherwise stdin/stdout.
`call_match` says how a call's return value is compared (geopd.grading.code.CALL_MATCHES):
"exact" (LiveCodeBench) unless the record's source says otherwise (geopd.data.code_records).
"""
from __future__ import annotations

from typing import Callable

from geopd.errors import UserError
from geopd.grading.code import CALL_MATCHES, grade_code
from geopd.grading.deepscaler import deepscaler_reward
from geopd.grading.math import grade_math


def math_verify(response: str, label: str, *, integer_range=None) -> float:
    """The last \\boxed{} anywhere in `response` against `label` with math-verify."""
    return float(grade_math(response, label, integer_range=integer_range))


def deepscaler(response: str, label: str) -> float:
    """slime's deepscaler reward (geopd.grading.deepscaler.deepscaler_reward): never raises."""
    return deepscaler_reward(response, label)


# objective.reward -> fn(response, record) -> float
MATH_GRADERS: dict[str, Callable[[str, dict], float]] = {
    "math-verify": lambda response, rec: math_verify(response, rec["answer"], integer_range=rec.get("integer_range")),
    "deepscaler": lambda response, rec: deepscaler(response, rec["answer"]),
}


def code_tests(record: dict) -> tuple[list[dict], str | None, str]:
    """A code record's tests, fn_name and call_match, checked (a clear error names the record)."""
    tests, fn_name = record["tests"], record.get("fn_name")
    call_match = record.get("call_match", CALL_MATCHES[0])
    where = f"record {record.get('id', '?')}"
    if not isinstance(tests, list) or not all(
            isinstance(t, dict) and isinstance(t.get("input"), str) and isinstance(t.get("output"), str) for t in tests):
        raise UserError(f"{where}: 'tests' must be a list of {{'input': str, 'output': str}}")
    if fn_name is not None and not (isinstance(fn_name, str) and fn_name):
        raise UserError(f"{where}: 'fn_name' must be a non-empty string, got {fn_name!r}")
    if call_match not in CALL_MATCHES:
        raise UserError(f"{where}: 'call_match' must be one of {list(CALL_MATCHES)}, got {call_match!r}")
    return tests, fn_name, call_match


def reward(record: dict, response: str, math_grader: str = "math-verify") -> float:
    """The reward of `response` to `record`: its math grader's (objective.reward) for a math
    record, its tests for a code record."""
    if "answer" in record:
        if math_grader not in MATH_GRADERS:
            raise UserError(f"unknown math reward {math_grader!r}; known: {', '.join(MATH_GRADERS)}")
        return MATH_GRADERS[math_grader](response, record)
    if "tests" in record:
        tests, fn_name, call_match = code_tests(record)
        return float(grade_code(response, tests, fn_name=fn_name, call_match=call_match))
    raise UserError(f"record {record.get('id', '?')} has neither an answer nor tests: no verifiable reward")
