"""Math grading: last \\boxed{} extraction, math-verify equivalence, AIME integer range, time bounds."""
from __future__ import annotations

import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from geopd.grading.math import grade_math, last_boxed

# (response, gold, integer_range, expected)
KNOWN = [
    ("\\boxed{82}", "82", None, True),
    ("<think>\n</think>\n\\boxed{82}", "82", None, True),
    ("\\boxed{\\frac{1}{2}}", "0.5", None, True),
    ("\\boxed{1/2}", "\\frac12", None, True),
    ("\\boxed{0.5}", "\\frac{1}{2}", None, True),
    ("\\boxed{\\dfrac{2}{4}}", "1/2", None, True),
    ("the answer is 82", "82", None, False),                 # no box: no answer
    ("82 ... \\boxed{81}", "82", None, False),               # a bare number elsewhere is not an answer
    ("\\boxed{81} no wait \\boxed{82}", "82", None, True),   # last box wins
    ("\\boxed{82} or maybe \\boxed{81}", "82", None, False),
    ("\\boxed{\\sqrt{2}}", "\\sqrt 2", None, True),
    ("\\boxed{x=3}", "3", None, True),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}", None, True),
    ("\\boxed{83}", "82", None, False),
    ("\\boxed{}", "82", None, False),
    ("\\boxed{82", "82", None, False),                       # cut off before the closing brace
    ("$\\boxed{82}$", "$82$", None, True),                   # $...$ around either side is stripped
    ("\\boxed{82}", "\\boxed{82}", None, True),              # a boxed gold is read the same way
    ("\\boxed{042}", "42", None, True),
    ("\\boxed{1000}", "1000", (0, 999), False),              # AIME: outside 0..999
    ("\\boxed{-3}", "-3", (0, 999), False),
    ("\\boxed{042}", "42", (0, 999), True),
    ("\\boxed{999}", "999", (0, 999), True),
    ("\\boxed{0}", "0", (0, 999), True),
    ("\\boxed{12.5}", "12", (0, 999), False),
    ("\\boxed{42.0}", "42", (0, 999), False),                # not an integer
    ("\\boxed{\\frac{84}{2}}", "42", (0, 999), True),        # evaluates to the integer 42
    ("\\boxed{43}", "42", (0, 999), False),
    ("42", "42", (0, 999), False),
]


@pytest.mark.parametrize("response,gold,integer_range,expected", KNOWN)
def test_known_answers(response, gold, integer_range, expected):
    assert grade_math(response, gold, integer_range=integer_range) is expected


def test_last_boxed_extraction():
    assert last_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("a \\boxed{1} b \\boxed{{2}+{3}} c") == "{2}+{3}"
    assert last_boxed("\\boxed {7}") == "7"
    assert last_boxed("so \\boxed 7$.") == "7"
    assert last_boxed("\\fbox{5}") == "5"
    assert last_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"     # escaped braces do not nest
    assert last_boxed("\\boxed{a\\}b}") == "a\\}b"
    assert last_boxed("\\boxed{1} then \\boxed{2") is None        # the last box is unclosed
    assert last_boxed("\\boxedfoo{1}") is None
    assert last_boxed("\\boxed") is None
    assert last_boxed("82") is None
    assert last_boxed("") is None and last_boxed(None) is None
    assert last_boxed("\\boxed{}") == ""


def test_integer_fast_path_is_fast():
    rng = random.Random(0)
    cases = [(f"<think>\n</think>\n\\boxed{{{rng.randint(0, 2000)}}}", str(rng.randint(0, 2000)))
             for _ in range(2000)]
    start = time.perf_counter()
    results = [grade_math(r, g) for r, g in cases]
    per_call = (time.perf_counter() - start) / len(cases)
    assert results == [last_boxed(r) == g for r, g in cases]
    assert per_call < 2e-4


def test_symbolic_grading_speed():
    grade_math("\\boxed{\\frac{1}{3}}", "\\frac{2}{6}")  # warm math-verify's imports and regexes
    rng = random.Random(1)
    cases = [(f"\\boxed{{\\frac{{{rng.randint(1, 99)}}}{{{rng.randint(1, 99)}}}}}",
              f"{rng.randint(1, 99)}/{rng.randint(1, 99)}") for _ in range(50)]
    start = time.perf_counter()
    for r, g in cases:
        grade_math(r, g)
    assert (time.perf_counter() - start) / len(cases) < 0.05


def test_overrun_grades_false_and_keeps_the_callers_timer():
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *a: fired.append(True))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        start = time.monotonic()
        # sympy would try to expand 10^(10^10): only the timer stops it.
        assert grade_math("\\boxed{10^{10^{10}}}", "5", timeout_s=0.5) is False
        assert time.monotonic() - start < 3.0
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 25.0 < remaining <= 30.0
        assert not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_worker_threads_grade_like_the_main_thread():
    cases = [(r, g, ir) for r, g, ir, _ in KNOWN]
    expected = [e for *_, e in KNOWN]
    with ThreadPoolExecutor(max_workers=3) as pool:
        got = list(pool.map(lambda c: grade_math(c[0], c[1], integer_range=c[2]), cases))
    assert got == expected


def test_worker_thread_overrun_is_bounded():
    out = []
    worker = threading.Thread(target=lambda: out.append(grade_math("\\boxed{10^{10^{10}}}", "5", timeout_s=0.5)))
    start = time.monotonic()
    worker.start()
    worker.join(timeout=60)
    assert out == [False]
    assert time.monotonic() - start < 30  # includes starting the helper process once


@pytest.mark.parametrize("thread", [False, True], ids=["main-thread", "other-thread"])
def test_a_cold_process_grades_a_correct_answer_within_a_short_timer(thread):
    """math-verify's first import and parse (~1-2 s) happen outside the timer: on a fresh
    process a correct non-integer answer is graded True even with a 0.5 s timer."""
    import subprocess
    import sys

    call = "grade_math('\\\\boxed{\\\\frac{1}{2}}', '0.5', timeout_s=0.5)"
    probe = ("from concurrent.futures import ThreadPoolExecutor\nfrom geopd.grading.math import grade_math\n"
             + (f"print(ThreadPoolExecutor(1).submit(lambda: {call}).result())" if thread else f"print({call})"))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "True", out.stderr[-2000:]


# ---- maj@k -------------------------------------------------------------------------------------

def test_maj_at_k_groups_aime_votes_by_value():
    from geopd.evaluate import hooks

    # "42.0" is no AIME answer for accuracy, but it votes with "42" and "042": 3 votes to 3
    # for 7 (one of them 7.0): a tie, scored as the mean of a right and a wrong group.
    responses = ["\\boxed{42.0}", "\\boxed{42}", "\\boxed{042}", "\\boxed{7}", "\\boxed{7}", "\\boxed{7.0}"]
    out = hooks.process_math_aime({"answer": "42"}, [responses])
    assert [g["correct"] for g in out["graded"]] == [False, True, True, False, False, False]
    assert out["maj@k"] == 0.5
    out = hooks.process_math_aime({"answer": "7"}, [responses + ["\\boxed{\\frac{14}{2}}"]])
    assert out["maj@k"] == 1.0  # 4 votes for 7 (one a fraction that is the integer 7)


def test_maj_at_k_scores_the_group_not_its_first_member():
    from geopd.evaluate.metrics import maj_at_k

    same = lambda a, b: {a, b} <= {"1/2", "0.5"}  # noqa: E731
    answers, correct = ["0.5", "1/2", "1/2", "3"], [False, True, True, False]
    assert maj_at_k(answers, correct, same) == 1.0                      # a member is correct
    assert maj_at_k(["4", "4", "x"], [False, False, True]) == 0.0        # the majority is wrong
