"""Per-problem scores from k graded samples, and their means over a benchmark.

For one problem with k samples:
  avg@k  mean of the k correctness values (the paper's "AIME avg@8");
  pass@k 1 if any sample is correct (k samples drawn, k counted: no estimator needed);
  maj@k  correctness of the majority answer. Each sample votes with `key(answer)` (the
         stripped answer unless given; None: no vote, e.g. an AIME answer that is not an
         integer in 0..999, which could never be correct); votes are grouped by equal keys
         and merged by `same`; a tie between groups goes to the group whose first member
         came first, so the vote is a deterministic function of the samples in order. The
         winning group scores `grade(its answer)` when a grader is given, else whether
         most of its members were graded correct (a tie: its first member). No vote at
         all scores 0.

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


def answer_groups(answers: Sequence[str | None], same: Same | None = None,
                  key: Callable[[str], str | None] | None = None) -> list[list[int]]:
    """Sample indices grouped by equivalent answer, groups in order of first appearance.

    Votes are `key(answer)` (default: the stripped answer; None does not vote); equal keys
    always share a group; `same(a, b)` may merge distinct keys (e.g. "1/2" and "0.5").
    Each new key joins the first group whose first key it matches.
    """
    key = key or (lambda a: a.strip())
    groups: list[list[int]] = []
    firsts: list[str] = []
    by_key: dict[str, int] = {}
    for i, ans in enumerate(answers):
        k = None if ans is None else key(ans)
        if k is None:
            continue
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


def majority_group(answers: Sequence[str | None], same: Same | None = None,
                   key: Callable[[str], str | None] | None = None) -> list[int] | None:
    """The largest answer group (earliest group wins a tie), or None without votes."""
    groups = answer_groups(answers, same, key)
    return max(groups, key=len) if groups else None  # max keeps the first of equal lengths


def majority_index(answers: Sequence[str | None], same: Same | None = None,
                   key: Callable[[str], str | None] | None = None) -> int | None:
    """Index of the first sample of the majority group."""
    best = majority_group(answers, same, key)
    return None if best is None else best[0]


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], same: Same | None = None, *,
             key: Callable[[str], str | None] | None = None, grade: Callable[[str], bool] | None = None) -> float:
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} correctness values")
    if not correct:
        raise ValueError("no samples to score")
    best = majority_group(answers, same, key)
    if best is None:
        return 0.0
    if grade is not None:
        return float(bool(grade(answers[best[0]].strip())))
    right = sum(bool(correct[i]) for i in best)
    return float(right * 2 > len(best) or (right * 2 == len(best) and bool(correct[best[0]])))


def problem_scores(answers: Sequence[str | None], correct: Sequence[bool], same: Same | None = None, *,
                   key: Callable[[str], str | None] | None = None, grade: Callable[[str], bool] | None = None) -> dict:
    """{"avg", "pass", "maj"} for one problem's samples."""
    return {"avg": avg_at_k(correct), "pass": pass_at_k(correct),
            "maj": maj_at_k(answers, correct, same, key=key, grade=grade)}


def summarize(per_problem: Sequence[dict], k: int, names: Sequence[str] = ("avg", "pass", "maj")) -> dict:
    """Benchmark metrics {"avg@k": mean over problems, ...} from `problem_scores` dicts."""
    if not per_problem:
        raise ValueError("no problems to summarize")
    return {f"{name}@{k}": sum(p[name] for p in per_problem) / len(per_problem) for name in names}
