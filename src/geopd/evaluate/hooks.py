"""Grading hooks that lm-eval calls (`process_results: !function geopd.evaluate.hooks.X`).

The task YAMLs name these functions by their full module path, so lm-eval imports this very
module (not a copy loaded from a file beside the YAML): the CLI, the tests and lm-eval all
run the same grading code.

`process_results(doc, results)` receives, through the `take_first_k` filter, the k sampled
responses of one problem as `results[0]`. It returns the per-problem metrics (lm-eval
averages them over problems: `aggregation: mean`) and, under "graded", the per-sample
verdicts; their aggregation `count_graded` reports the number of graded samples, so the
results show n * k and the logged samples carry every verdict.
"""
from __future__ import annotations

import re
from functools import partial

from geopd.evaluate.metrics import problem_scores
from geopd.grading.math import grade_math, last_boxed

AIME_RANGE = (0, 999)


def _responses(results) -> list[str]:
    if results and isinstance(results[0], (list, tuple)):
        return [str(r) for r in results[0]]
    return [str(r) for r in results]  # a single-sample filter (take_first) hands strings


def _metrics(graded: list[dict], same) -> dict:
    scores = problem_scores([g["extracted"] for g in graded], [g["correct"] for g in graded], same)
    return {"avg@k": scores["avg"], "pass@k": scores["pass"], "maj@k": scores["maj"], "graded": graded}


# ---- math ---------------------------------------------------------------------------------

def same_math_answer(a: str, b: str) -> bool:
    """Two extracted answers are the same vote when math-verify finds them equivalent."""
    return a == b or grade_math("\\boxed{" + b + "}", a)


def grade_math_samples(responses: list[str], gold: str, *, integer_range=None) -> list[dict]:
    rng = tuple(integer_range) if integer_range is not None else None
    return [{"extracted": last_boxed(r), "correct": bool(grade_math(r, str(gold), integer_range=rng))}
            for r in responses]


def process_math(doc: dict, results, *, integer_range=None) -> dict:
    rng = tuple(integer_range) if integer_range is not None else None
    gold = str(doc["answer"])
    # maj@k: votes grouped by math-verify equivalence, as the accuracy is graded (also under
    # the integer rule: "33.0" votes with "33"; geopd.evaluate.metrics states the tie rule).
    return _metrics(grade_math_samples(_responses(results), gold, integer_range=rng), same_math_answer)


def process_math_aime(doc: dict, results) -> dict:
    """AIME: an answer counts only as an integer in 0..999."""
    return process_math(doc, results, integer_range=AIME_RANGE)


def math_hook(integer_range=None):
    """process_results for a benchmark spec's integer range (None: any answer)."""
    if integer_range is None:
        return process_math
    return partial(process_math, integer_range=tuple(integer_range))


# ---- multiple choice ------------------------------------------------------------------------

_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")


def mcq_letter(text: str | None) -> str | None:
    """"B", "(b)", "\\text{B}", "B." -> "B"; anything else (e.g. "B and C") -> None."""
    if text is None:
        return None
    inner = _WRAPPERS.sub(r"\1", text).strip()
    m = re.fullmatch(r"\(?\s*([A-Za-z])\s*\)?\.?", inner)
    return m.group(1).upper() if m else None


def grade_mcq_samples(responses: list[str], gold: str) -> list[dict]:
    want = mcq_letter(str(gold))
    out = []
    for r in responses:
        letter = mcq_letter(last_boxed(r))
        out.append({"extracted": letter, "correct": letter is not None and letter == want})
    return out


def process_mcq(doc: dict, results) -> dict:
    return _metrics(grade_mcq_samples(_responses(results), doc["answer"]), None)


# ---- aggregation ------------------------------------------------------------------------------

def count_graded(items: list[list[dict]]) -> int:
    return sum(len(x) for x in items)
