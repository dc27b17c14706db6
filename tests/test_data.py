"""Hub-record normalisers (paper-scale data sets), on hand-written rows: no network."""
import pytest

from geopd.data import normalise_math, normalise_mcq, prepare, read_jsonl
from geopd.errors import UserError

GPQA_ROW = {"Question": "Which particle mediates the electromagnetic force?",
            "Correct Answer": "photon", "Incorrect Answer 1": "gluon",
            "Incorrect Answer 2": "W boson", "Incorrect Answer 3": "graviton", "Record ID": "rec1"}


def test_mcq_letter_points_at_the_correct_option():
    rec = normalise_mcq(GPQA_ROW, 0)
    assert rec["task"] == "mcq" and rec["id"] == "rec1"
    lines = {line[1]: line[4:] for line in rec["prompt"].splitlines() if line.startswith("(")}
    assert sorted(lines) == ["A", "B", "C", "D"]
    assert lines[rec["answer"]] == "photon"
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
    assert normalise_math(dapo, 1) == {"id": "1", "prompt": "What is 3?", "answer": "3", "task": "math"}
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
