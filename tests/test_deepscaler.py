"""The DeepScaleR reward (geopd.grading.deepscaler) against slime's deepscaler reward.

Each row's expected reward is what slime's `get_deepscaler_rule_based_reward` returned for it
(slime commit 624b824, run beside this project; its code is not part of this project). Where
slime raises (a label that is not str/int/float, a response that is not a string), this reward
is 0. A randomised differential run of 20,000 generated (response, label) pairs, 1,785 of them
rewarded, found no disagreement.
"""
from __future__ import annotations

import random
import string

import pytest

from geopd.grading.deepscaler import SYMPY_SECONDS, boxed_answer, deepscaler_reward, solution_part

CASES = [
    ('<think>x \\boxed{7}</think> so \\boxed{42}', '42', 1),
    ('<think>\\boxed{42}</think> so \\boxed{7}', '42', 0),
    ('\\boxed{42}', '42', 0),
    ('<think>\\boxed{42}', '42', 0),
    ('a</think>b</think>\\boxed{42}', '42', 1),
    ('a</think>\\boxed{42}</think>b', '42', 0),
    ('###Response\\boxed{42}', '42', 1),
    ('x###Response\\boxed{42}###Response\\boxed{7}', '42', 1),
    ('x###Response\\boxed{7}###Response\\boxed{42}', '42', 0),
    ('</think>###Response\\boxed{42}', '42', 1),
    ('</think>\\boxed{7} then \\boxed{42}', '42', 1),
    ('</think>\\boxed{42} then \\boxed{7}', '42', 0),
    ('</think>\\boxed{\\boxed{42}}', '42', 1),
    ('</think>\\boxed {42}', '42', 0),
    ('</think>\\fbox{42}', '42', 0),
    ('</think>\\boxed{42', '42', 0),
    ('</think>the answer is 42', '42', 0),
    ('</think>\\boxed{}', '', 0),
    ('</think>\\boxed{{42}}', '42', 1),
    ('</think>$\\boxed{42}$.', '42', 1),
    ('</think>\\boxed{\\frac{1}{2}}', '\\frac12', 1),
    ('</think>\\boxed{1/2}', '\\frac{1}{2}', 1),
    ('</think>\\boxed{0.5}', '\\frac{1}{2}', 1),
    ('</think>\\boxed{\\dfrac{3}{4}}', '3/4', 1),
    ('</think>\\boxed{6/8}', '3/4', 0),
    ('</think>\\boxed{\\frac{6}{8}}', '\\frac{3}{4}', 0),
    ('</think>\\boxed{.5}', '\\frac{1}{2}', 1),
    ('</think>\\boxed{0.75}', '\\frac{3}{4}', 1),
    ('</think>\\boxed{\\frac{\\sqrt{2}}{2}}', '\\frac{1}{\\sqrt{2}}', 1),
    ('</think>\\boxed{-\\frac{1}{2}}', '\\frac{-1}{2}', 1),
    ('</think>\\boxed{7\\frac{3}{4}}', '\\frac{31}{4}', 1),
    ('</think>\\boxed{\\text{5}}', '5', 1),
    ('</think>\\boxed{5 \\text{ cm}}', '5', 1),
    ('</think>\\boxed{\\text{Monday}}', 'monday', 1),
    ('</think>\\boxed{\\text{(B)}}', 'B', 1),
    ('</think>\\boxed{x = 5}', '5', 1),
    ('</think>\\boxed{\\$5}', '5', 1),
    ('</think>\\boxed{50\\%}', '50', 1),
    ('</think>\\boxed{\\mathbf{5}}', '5', 1),
    ('</think>\\boxed{(1,2)}', '(1, 2)', 1),
    ('</think>\\boxed{(1,2)}', '[1,2]', 0),
    ('</think>\\boxed{(2,1)}', '(1,2)', 0),
    ('</think>\\boxed{\\left(1,2\\right)}', '(1,2)', 1),
    ('</think>\\boxed{(-\\infty, 3]}', '(-\\infty,3]', 1),
    ('</think>\\boxed{1, 2}', '1,2', 1),
    ('</think>\\boxed{1 and 2}', '1, 2', 1),
    ('</think>\\boxed{(1,2,3)}', '(1,2)', 0),
    ('</think>\\boxed{90^\\circ}', '90', 1),
    ('</think>\\boxed{90^{\\circ}}', '90', 1),
    ('</think>\\boxed{90 degrees}', '90', 1),
    ('</think>\\boxed{30}', '30^\\circ', 1),
    ('</think>\\boxed{1,000}', '1000', 1),
    ('</think>\\boxed{1000}', '1,000', 1),
    ('</think>\\boxed{1,000,000}', '1000000', 1),
    ('</think>\\boxed{12,345}', '12345', 1),
    ('</think>\\boxed{42.0}', '42', 1),
    ('</think>\\boxed{42}', 42, 1),
    ('</think>\\boxed{42}', 42.0, 1),
    ('</think>\\boxed{1e3}', '1000', 1),
    ('</think>\\boxed{10^3}', '1000', 0),
    ('</think>\\boxed{3 million}', '3000000', 0),
    ('</think>\\boxed{05}', '5', 1),
    ('</think>\\boxed{-5}', '- 5', 1),
    ('</think>\\boxed{x^2+1}', '1+x^2', 1),
    ('</think>\\boxed{2\\sqrt{3}}', '\\sqrt{12}', 1),
    ('</think>\\boxed{\\sqrt2}', '\\sqrt{2}', 1),
    ('</think>\\boxed{2 \\times 3}', '6', 0),
    ('</think>\\boxed{\\pi/2}', '\\frac{\\pi}{2}', 1),
    ('</think>\\boxed{0.333}', '\\frac{1}{3}', 0),
    ('</think>\\boxed{a+b+c+d}', 'd+c+b+a', 0),
    ('</think>\\boxed{42}', '\\boxed{42}', 1),
    ('</think>\\boxed{42}', '\\boxed{42', 0),
    ('</think>\\boxed{42}', '', 0),
    ('</think>\\boxed{True}', True, 1),
    ('</think>\\boxed{42}', None, 'raises'),
    ('</think>\\boxed{42}', ['42'], 'raises'),
    (None, '42', 'raises'),
    ('</think>\\boxed{\\frac}', '\\frac', 1),
    ('</think>\\boxed{\\sqrt}', '\\sqrt', 1),
]


@pytest.mark.parametrize("response,label,slime", CASES)
def test_reward_equals_slime(response, label, slime):
    assert deepscaler_reward(response, label) == (0.0 if slime == "raises" else float(slime))


def test_solution_is_after_the_last_think_else_between_the_first_two_response_markers():
    assert solution_part("a</think>b</think>c") == "c"
    assert solution_part("a###Responseb###Responsec") == "b"
    assert solution_part("no marker") is None
    assert boxed_answer("\\boxed{1} \\boxed{\\frac{2}{3}}") == "\\frac{2}{3}"
    assert boxed_answer("\\fbox{3}") is None


def test_never_raises_on_arbitrary_text():
    rng = random.Random(0)
    alphabet = string.printable + "\\{}^_$%√π∞×·αβ</think>###Response\\boxed\\frac\\sqrt\\text"
    for _ in range(300):
        response = "</think>\\boxed{" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) + "}"
        label = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        assert deepscaler_reward(response, label) in (0.0, 1.0)


def test_sympy_that_does_not_finish_counts_as_wrong(monkeypatch):
    import time

    from geopd.grading import deepscaler

    monkeypatch.setattr(deepscaler, "SYMPY_SECONDS", 0.2)
    monkeypatch.setattr(deepscaler, "_sympy_zero", lambda expr: time.sleep(5) or True)
    start = time.perf_counter()
    assert deepscaler.deepscaler_reward("</think>\\boxed{x+1}", "1+x") == 0.0
    assert time.perf_counter() - start < 2
    assert SYMPY_SECONDS >= 1


def test_the_trainer_s_reward_is_this_one():
    """geopd.train.rewards.deepscaler (objective.reward: deepscaler) returns slime's reward on
    every case of the table, through the trainer's reward() of a math record too."""
    from geopd.train.rewards import deepscaler, reward

    for response, label, slime in CASES:
        expect = 0.0 if slime == "raises" else float(slime)  # where slime raises, 0 (never raises)
        assert deepscaler(response, label) == expect, (response, label)
        assert reward({"id": "c", "answer": label}, response, "deepscaler") == expect, (response, label)

