"""Per-problem scores from k graded samples, and their means over a benchmark.

For one problem with k samples:
  avg@k  mean of the k correctness values (the paper's "AIME avg@8");
  pass@k 1 if any sample is correct (k samples drawn, k counted: no estimator needed);
  maj@k  correctness of the majority answer. Every extracted answer votes (a sample without
         one does not); votes are grouped by equivalence, `same(a, b)` (math: math-verify, as
         the accuracy itself is graded, so "33" and "33.0" are one vote), after the stripped
         answers that are equal. The largest group is the majority; it scores 1 when one of its
         members was graded correct (they state the same value; a member in a form the grader
         refuses, such as "33.0" under AIME's integer rule, does not make the value wrong).
         Tie rule: a tie between groups scores the mean of the tied groups' scores, the
         expected score of breaking the tie uniformly at random, so a tie is not decided by
         which group's answer came first. No vote at all scores 0.

Benchmark values are means over problems, each problem weighing the same.
"""
from __future__ import annotations

from typing import Callable, Sequence

Same = Callable[[str, str], bool]


def avg_at_k(correct: Sequence[bool]) -> float:
    if not correct:
        raise ValueError("no samples to score")
    return sum(bool(c) for c in correct) / len(correct)


def pass_at_k(correct: Sequence[bool]) -> float:
    if not correct:
        raise ValueError("no samples to score")
    return float(any(correct))


def answer_groups(answers: Sequence[str | None], same: Same | None = None) -> list[list[int]]:
    """Sample indices grouped by equivalent answer, groups in order of first appearance.

    Answers are compared stripped; None does not vote. Equal answers always share a group;
    `same(a, b)` may merge distinct ones (e.g. "1/2" and "0.5"): a new answer joins the first
    group whose first answer it matches.
    """
    groups: list[list[int]] = []
    firsts: list[str] = []
    by_key: dict[str, int] = {}
    for i, ans in enumerate(answers):
        if ans is None:
            continue
        k = ans.strip()
        g = by_key.get(k)
        if g is None and same is not None:
            g = next((j for j, first in enumerate(firsts) if same(first, k)), None)
        if g is None:
            g = len(groups)
            groups.append([])
            firsts.append(k)
        by_key[k] = g
        groups[g].append(i)
    return groups


def majority_groups(answers: Sequence[str | None], same: Same | None = None) -> list[list[int]]:
    """The largest answer groups (several when they tie; none without votes)."""
    groups = answer_groups(answers, same)
    top = max((len(g) for g in groups), default=0)
    return [g for g in groups if len(g) == top]


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], same: Same | None = None) -> float:
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} correctness values")
    if not correct:
        raise ValueError("no samples to score")
    tied = majority_groups(answers, same)
    if not tied:
        return 0.0
    return sum(float(any(bool(correct[i]) for i in g)) for g in tied) / len(tied)


def problem_scores(answers: Sequence[str | None], correct: Sequence[bool], same: Same | None = None) -> dict:
    """{"avg", "pass", "maj"} for one problem's samples."""
    return {"avg": avg_at_k(correct), "pass": pass_at_k(correct), "maj": maj_at_k(answers, correct, same)}


def summarize(per_problem: Sequence[dict], k: int, names: Sequence[str] = ("avg", "pass", "maj")) -> dict:
    """Benchmark metrics {"avg@k": mean over problems, ...} from `problem_scores` dicts."""
    if not per_problem:
        raise ValueError("no problems to summarize")
    return {f"{name}@{k}": sum(p[name] for p in per_problem) / len(per_problem) for name in names}
