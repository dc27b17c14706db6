"""Evaluation: avg/pass/maj@k, the lm-eval math path (shipped YAMLs, hooks, HF backend), the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from geopd.evaluate import hooks
from geopd.evaluate.metrics import (answer_groups, avg_at_k, maj_at_k, majority_groups, pass_at_k,
                                    problem_scores, summarize)

# ---- metrics ----------------------------------------------------------------------------------


def test_avg_and_pass():
    assert avg_at_k([True, False, False, True]) == 0.5
    assert pass_at_k([False, False, True]) == 1.0
    assert pass_at_k([False] * 8) == 0.0
    assert avg_at_k([True] * 8) == 1.0
    with pytest.raises(ValueError):
        avg_at_k([])


def test_majority_plain_and_ties():
    # "7" x3 beats "5" x2: the vote is the majority answer's correctness, not any sample's.
    assert maj_at_k(["5", "7", "7", "5", "7"], [True, False, False, True, False]) == 0.0
    # Tie rule: a 2-2 tie scores the mean of the tied groups (expected value of a random
    # tie-break), whichever group came first; on main the earlier group won (1.0, then 0.0).
    assert majority_groups(["5", "7", "7", "5"]) == [[0, 3], [1, 2]]
    assert maj_at_k(["5", "7", "7", "5"], [True, False, False, True]) == 0.5
    assert maj_at_k(["7", "5", "5", "7"], [False, True, True, False]) == 0.5
    assert maj_at_k(["1", "2", "3"], [False, True, False]) == pytest.approx(1 / 3)  # 1-1-1
    assert maj_at_k(["1", "1", "2", "2"], [True, True, True, True]) == 1.0          # both right
    # Missing answers do not vote; none at all scores 0.
    assert maj_at_k([None, None, "3"], [False, False, True]) == 1.0
    assert maj_at_k([None, None], [False, False]) == 0.0
    assert majority_groups([None]) == []
    # Surrounding whitespace does not split a vote.
    assert answer_groups([" 4", "4 ", "5"]) == [[0, 1], [2]]


def test_majority_merges_equivalent_answers():
    same = lambda a, b: {a, b} <= {"1/2", "0.5"}  # noqa: E731
    answers, correct = ["0.5", "3", "1/2", "3"], [True, False, True, False]
    assert answer_groups(answers, same) == [[0, 2], [1, 3]]
    assert maj_at_k(answers, correct, same) == 0.5   # 2-2 tie: half right
    assert maj_at_k(answers, correct) == 0.0         # without merging "3" wins 2-1-1
    assert maj_at_k(["0.5", "1/2", "1/2", "3"], [False, True, True, False], same) == 1.0


def test_maj_at_8_groups_votes_by_math_verify_under_the_aime_rule():
    """The issue's example: 12 x3, 33 x3, "33.0" x2 with answer 33. Under AIME's integer rule
    "33.0" is graded wrong (accuracy), but it is the value 33 and votes with it: 5 votes to 3.
    On main "33.0" cast no vote and the 3-3 tie went to the earlier group (12): maj@8 = 0."""
    responses = [f"\\boxed{{{a}}}" for a in ("12", "12", "12", "33", "33", "33", "33.0", "33.0")]
    out = hooks.process_math_aime({"answer": "33"}, [responses])
    assert [g["correct"] for g in out["graded"]] == [False] * 3 + [True] * 3 + [False] * 2
    assert out["avg@k"] == 3 / 8 and out["maj@k"] == 1.0
    # Without the "33.0" votes it is a 3-3 tie: the mean of a wrong and a right group.
    assert hooks.process_math_aime({"answer": "33"}, [responses[:6]])["maj@k"] == 0.5
    # A majority written only in a refused form: no member graded correct, the group scores 0.
    assert hooks.process_math_aime({"answer": "33"}, [["\\boxed{33.0}"] * 3 + ["\\boxed{12}"]])["maj@k"] == 0.0


def test_summarize_means_over_problems():
    per = [problem_scores(["1"] * 4, [True] * 4),
           problem_scores(["2", "3", "3", None], [True, False, False, False])]
    assert per[1] == {"avg": 0.25, "pass": 1.0, "maj": 0.0}
    assert summarize(per, 4) == {"avg@4": 0.625, "pass@4": 1.0, "maj@4": 0.5}
    assert summarize([{"avg": 0.5, "pass": 1.0}], 2, names=("avg", "pass")) == {"avg@2": 0.5, "pass@2": 1.0}


# ---- grading through the lm-eval process_results hooks ----------------------------------------------


def _correct(out):
    return [g["correct"] for g in out["graded"]]


def test_process_math_grader_rules():
    doc = {"answer": "\\frac{1}{2}"}
    out = hooks.process_math(doc, [["so \\boxed{0.5}", "\\boxed{\\frac{1}{2}}", "\\boxed{1/2}", "\\boxed{2}"]])
    assert _correct(out) == [True, True, True, False]          # equivalent forms accepted
    assert out["avg@k"] == 0.75 and out["pass@k"] == 1.0 and out["maj@k"] == 1.0
    doc = {"answer": "42"}
    out = hooks.process_math(doc, [["The answer is 42.", "42 is tempting but \\boxed{41}",
                                     "\\boxed{41}, no: \\boxed{42}", "\\boxed{42} or maybe \\boxed{41}"]])
    # A number outside \boxed{} is not an answer; only the last \boxed{} counts.
    assert _correct(out) == [False, False, True, False]
    assert [g["extracted"] for g in out["graded"]] == [None, "41", "42", "41"]


def test_aime_integer_range():
    doc = {"answer": "1000"}
    assert _correct(hooks.process_math(doc, [["\\boxed{1000}"]])) == [True]
    assert _correct(hooks.process_math_aime(doc, [["\\boxed{1000}"]])) == [False]  # outside 0..999
    assert _correct(hooks.math_hook([0, 999])(doc, [["\\boxed{1000}"]])) == [False]
    doc = {"answer": "12"}
    assert _correct(hooks.process_math_aime(doc, [["\\boxed{12}", "\\boxed{12.5}", "\\boxed{13}"]])) == \
        [True, False, False]


def test_mcq_letters():
    assert [hooks.mcq_letter(x) for x in ("B", "(b)", "\\text{C}", "D.", "B and C", None)] == \
        ["B", "B", "C", "D", None, None]
    out = hooks.process_mcq({"answer": "C"}, [["\\boxed{C}", "\\boxed{(c)}", "\\boxed{A}", "C"]])
    assert _correct(out) == [True, True, False, False] and out["maj@k"] == 1.0


# ---- a tiny model and data sets ----------------------------------------------------------------------


def _char_tokenizer():
    """Fallback when geopd.world.tokenizer is absent: one token per character, ChatML template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + [chr(c) for c in range(32, 127)] + ["\n"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>",
                                   additional_special_tokens=["<|im_start|>"], padding_side="left",
                                   chat_template=template)


def _tokenizer():
    try:
        from geopd.world.tokenizer import build_tokenizer
    except ImportError:
        return _char_tokenizer()
    return build_tokenizer()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out = tmp_path_factory.mktemp("tiny") / "model"
    tok = _tokenizer()
    config = Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


PROBLEMS = [{"id": "p0", "prompt": "What is 2+3?", "answer": "5", "task": "math"},
            {"id": "p1", "prompt": "What is 5+7?", "answer": "12", "task": "math"},
            {"id": "p2", "prompt": "What is 1/4+1/4?", "answer": "1/2", "task": "math"}]

# Known responses per problem -> known metrics (see test_perfect_model_*).
CANNED = {
    "What is 2+3?": ["\\boxed{5}"] * 4,                                          # avg 1, pass 1, maj 1
    "What is 5+7?": ["\\boxed{12}", "\\boxed{13}", "\\boxed{13}", "12"],          # avg .25, pass 1, maj 0
    "What is 1/4+1/4?": ["\\boxed{0.5}", "\\boxed{3}", "\\boxed{\\frac{1}{2}}", "\\boxed{3}"],  # .5, 1, .5 (a 2-2 tie)
}
CANNED_METRICS = {"avg@4": (1 + 0.25 + 0.5) / 3, "pass@4": 1.0, "maj@4": (1 + 0 + 0.5) / 3}


def _write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture()
def math_data(tmp_path) -> Path:
    _write_jsonl(tmp_path / "data" / "test.jsonl", PROBLEMS)
    return tmp_path / "data"


def _spec(data_dir, **over):
    spec = {"name": "math-heldout", "kind": "math", "data": "math", "split": "test", "data_dir": str(data_dir),
            "samples": 4, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8}
    spec.update(over)
    return spec


class CannedLM:
    """An lm-eval LM that answers each prompt with CANNED responses, in sample order."""

    def __new__(cls, tokenizer, canned):
        from lm_eval.api.model import LM

        class _Canned(LM):
            def __init__(self):
                super().__init__()
                self.tokenizer, self.canned, self.seen, self.contexts = tokenizer, canned, {}, []

            def generate_until(self, requests, disable_tqdm=False):
                out = []
                for req in requests:
                    ctx = req.args[0]
                    self.contexts.append(ctx)
                    prompt = next(p for p in self.canned if p in ctx)
                    j = self.seen.get(ctx, 0)
                    self.seen[ctx] = j + 1
                    out.append(self.canned[prompt][j % len(self.canned[prompt])])
                return out

            def loglikelihood(self, requests):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests):
                raise NotImplementedError

            def apply_chat_template(self, chat_history, add_generation_prompt=True):
                return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                          add_generation_prompt=add_generation_prompt)

            @property
            def tokenizer_name(self):
                return "canned"

        return _Canned()


# ---- the lm-eval path --------------------------------------------------------------------------------


def test_perfect_model_through_lm_eval(math_data, tiny_model):
    from transformers import AutoTokenizer

    from geopd.evaluate import harness
    from geopd.engines.chat import format_prompt

    tok = AutoTokenizer.from_pretrained(tiny_model)
    lm = CannedLM(tok, CANNED)
    res = harness.run(_spec(math_data), math_data / "test.jsonl", lm=lm, seed=0, backend="hf", tokenizer=tok)
    assert res.task == "geopd_math" and res.n == 3
    assert res.metrics == pytest.approx(CANNED_METRICS)
    assert len(res.samples) == 12 and [s["sample"] for s in res.samples[:4]] == [0, 1, 2, 3]
    # Exactly the trainer's chat-formatted prompt reached the model, 4 times per problem.
    assert sorted(set(lm.contexts)) == sorted(format_prompt(tok, p["prompt"]) for p in PROBLEMS)
    assert len(lm.contexts) == 12
    by_id = {(s["id"], s["sample"]): s for s in res.samples}
    assert by_id[("p1", 3)]["response"] == "12" and by_id[("p1", 3)]["correct"] is False
    assert by_id[("p2", 2)]["extracted"] == "\\frac{1}{2}" and by_id[("p2", 2)]["correct"] is True


@pytest.mark.parametrize("task, kind, gold, response, extra", [
    ("geopd_aime24", "math", "1000", "\\boxed{1000}", {}),     # the YAML's own 0..999 rule
    ("geopd_aime25", "math", "7", "\\boxed{7}", {}),
    ("geopd_math500", "math", "\\frac{1}{2}", "\\boxed{0.5}", {}),
    ("geopd_minerva_ocw", "math", "3", "\\boxed{3}", {}),
    ("geopd_gpqa_diamond", "mcq", "B", "\\boxed{(B)}", {}),
    ("geopd_math", "math", "1000", "\\boxed{1000}", {"integer_range": [0, 999]}),  # spec's range wins
])
def test_shipped_tasks_smoke(tmp_path, tiny_model, task, kind, gold, response, extra):
    from transformers import AutoTokenizer

    from geopd.evaluate import harness

    data = _write_jsonl(tmp_path / "test.jsonl", [{"id": "q", "prompt": "Q?", "answer": gold}])
    tok = AutoTokenizer.from_pretrained(tiny_model)
    spec = _spec(tmp_path, name=task, kind=kind, task=task, samples=2, **extra)
    res = harness.run(spec, data, lm=CannedLM(tok, {"Q?": [response]}), seed=0, backend="hf", tokenizer=tok)
    want = 0.0 if gold == "1000" else 1.0
    assert res.task == task and res.n == 1
    assert res.metrics == {"avg@2": want, "pass@2": want, "maj@2": want}
    # The answer instruction comes with the prepared data (geopd.data), once: tasks add nothing.
    from geopd.engines.chat import format_prompt

    assert res.samples[0]["prompt"] == format_prompt(tok, "Q?")


def test_task_selection_and_config(tmp_path):
    from geopd.errors import UserError
    from geopd.evaluate import harness

    tm = harness.task_manager()
    assert "aime24" not in tm.all_subtasks  # lm-eval's built-ins are never indexed
    assert harness.task_name({"name": "aime24", "kind": "math"}, tm) == "geopd_aime24"
    assert harness.task_name({"name": "gpqa-diamond", "kind": "mcq"}, tm) == "geopd_gpqa_diamond"
    assert harness.task_name({"name": "math-heldout", "kind": "math"}, tm) == "geopd_math"
    with pytest.raises(UserError, match="nope"):
        harness.task_name({"name": "x", "kind": "math", "task": "nope"}, tm)
    spec = _spec(tmp_path, samples=3, temperature=0.7, top_p=0.9, max_new_tokens=11)
    cfg = harness.task_config(spec, tmp_path / "test.jsonl", tm, backend="hf")
    assert cfg["repeats"] == 3 and cfg["filter_list"][0]["filter"][0]["k"] == 3
    assert cfg["dataset_path"] == "json" and cfg["dataset_kwargs"]["data_files"]["test"].endswith("test.jsonl")
    assert cfg["generation_kwargs"] == {"until": [], "max_gen_toks": 11, "do_sample": True, "temperature": 0.7,
                                        "top_p": 0.9, "top_k": 0}
    assert harness.task_config(spec, "t.jsonl", tm, backend="vllm")["generation_kwargs"]["top_k"] == -1
    greedy = harness.task_config(_spec(tmp_path, temperature=0), "t.jsonl", tm, backend="hf")
    assert greedy["generation_kwargs"] == {"until": [], "max_gen_toks": 8, "do_sample": False}
    with pytest.raises(UserError, match="integer_range"):
        harness.task_config(_spec(tmp_path, kind="mcq", integer_range=[0, 9]), "t.jsonl", tm, backend="hf")


# ---- the command -------------------------------------------------------------------------------------


def _run_cli(model, spec, out_dir, seed=0):
    from geopd.cli import main

    rc = main(["evaluate", "--model", str(model), "--benchmark", json.dumps(spec), "--seed", str(seed),
               "--out", str(out_dir / "r.json"), "--samples", str(out_dir / "s.jsonl"), "--threads", "1"])
    return rc


def test_cli_hf_end_to_end_offline(tmp_path, math_data, tiny_model, monkeypatch):
    from transformers import AutoTokenizer

    from geopd.engines.chat import format_prompt

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    spec = _spec(math_data, samples=2, max_new_tokens=6)
    assert _run_cli(tiny_model, spec, tmp_path / "a", seed=7) == 0
    result = json.loads((tmp_path / "a" / "r.json").read_text())
    assert result["n"] == 3 and result["samples_per_problem"] == 2 and result["kind"] == "math"
    assert set(result["metrics"]) == {"avg@2", "pass@2", "maj@2"}
    assert result["generation"] == {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 6, "seed": 7,
                                    "backend": "hf", "device": "cpu", "batch_size": 128}
    assert set(result["versions"]) >= {"geopd", "torch", "transformers", "lm_eval", "math_verify", "python"}
    assert result["samples_file"] == str(tmp_path / "a" / "s.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "a" / "s.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and {(x["id"], x["sample"]) for x in lines} == {(p["id"], j) for p in PROBLEMS
                                                                             for j in range(2)}
    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert {x["prompt"] for x in lines} == {format_prompt(tok, p["prompt"]) for p in PROBLEMS}
    assert all(set(x) == {"id", "sample", "prompt", "response", "extracted", "gold", "correct"} for x in lines)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["r.json", "s.jsonl"]  # no temp files left
    # Same seed, same samples; the sampling really is seeded.
    assert _run_cli(tiny_model, spec, tmp_path / "b", seed=7) == 0
    assert (tmp_path / "b" / "s.jsonl").read_text() == (tmp_path / "a" / "s.jsonl").read_text()
    assert _run_cli(tiny_model, spec, tmp_path / "c", seed=8) == 0
    assert (tmp_path / "c" / "s.jsonl").read_text() != (tmp_path / "a" / "s.jsonl").read_text()


@pytest.mark.parametrize("limit, want, n", [
    (None, CANNED_METRICS, 3),
    (2, {"avg@4": (1 + 0.25) / 2, "pass@4": 1.0, "maj@4": 0.5}, 2),  # spec "limit": the first problems
])
def test_cli_perfect_model_metrics(tmp_path, math_data, tiny_model, monkeypatch, limit, want, n):
    from transformers import AutoTokenizer

    from geopd.evaluate import harness

    tok = AutoTokenizer.from_pretrained(tiny_model)
    monkeypatch.setattr(harness, "make_lm", lambda *a, **k: CannedLM(tok, CANNED))
    spec = _spec(math_data, **({"limit": limit} if limit else {}))
    assert _run_cli(tiny_model, spec, tmp_path) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["metrics"] == pytest.approx(want) and result["n"] == n
    assert result["lm_eval_task"] == "geopd_math"
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 4 * n


def test_cli_user_errors(tmp_path, math_data, tiny_model, capsys):
    assert _run_cli(tmp_path / "missing-model", _spec(math_data), tmp_path) == 2
    assert "missing-model" in capsys.readouterr().err
    empty = tmp_path / "empty"
    _write_jsonl(empty / "test.jsonl", [])
    assert _run_cli(tiny_model, _spec(empty), tmp_path) == 2
    assert str(empty / "test.jsonl") in capsys.readouterr().err
    assert _run_cli(tiny_model, _spec(tmp_path / "nowhere"), tmp_path) == 2
    assert str(tmp_path / "nowhere" / "test.jsonl") in capsys.readouterr().err
    assert _run_cli(tiny_model, _spec(math_data, kind="essay"), tmp_path) == 2
    assert "unknown kind 'essay'" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


# ---- several evaluations in one process (job_grouping.evaluate: run) ------------------------------------


def _evaluate_args(model, spec, out_dir, seed):
    return ["evaluate", "--model", str(model), "--benchmark", json.dumps(spec), "--seed", str(seed),
            "--out", str(out_dir / "r.json"), "--samples", str(out_dir / "s.jsonl"), "--threads", "1"]


def test_batch_writes_what_separate_commands_write(tmp_path, math_data, tiny_model, monkeypatch):
    from geopd.cli import main

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    specs = [_spec(math_data, samples=2, max_new_tokens=6), _spec(math_data, samples=3, max_new_tokens=5)]
    for i, spec in enumerate(specs):
        assert main(_evaluate_args(tiny_model, spec, tmp_path / f"alone{i}", seed=7)) == 0
    batch = [_evaluate_args(tiny_model, spec, tmp_path / f"batch{i}", seed=7) for i, spec in enumerate(specs)]
    assert main(["batch", "--commands", json.dumps(batch)]) == 0
    for i in range(len(specs)):
        alone, grouped = tmp_path / f"alone{i}", tmp_path / f"batch{i}"
        assert (grouped / "s.jsonl").read_text() == (alone / "s.jsonl").read_text()  # the same samples
        a, b = (json.loads((d / "r.json").read_text()) for d in (alone, grouped))
        assert a["metrics"] == b["metrics"] and a["n"] == b["n"] == 3


def test_batch_stops_at_the_first_failure_naming_it(tmp_path, math_data, tiny_model, capsys):
    from geopd.cli import main

    spec = _spec(math_data, samples=1, max_new_tokens=4)
    batch = [_evaluate_args(tiny_model, spec, tmp_path / "first", seed=0),
             _evaluate_args(tmp_path / "missing-model", spec, tmp_path / "second", seed=0),
             _evaluate_args(tiny_model, spec, tmp_path / "third", seed=0)]
    assert main(["batch", "--commands", json.dumps(batch)]) == 2
    err = capsys.readouterr().err
    assert "command 2/3: geopd evaluate" in err and "missing-model" in err
    assert (tmp_path / "first" / "r.json").exists() and not (tmp_path / "third").exists()
    for bad, says in ((json.dumps({"evaluate": []}), "JSON list of argument lists"),
                      (json.dumps([["train", "--spec", "{}"]]), "'train' cannot run in a batch"),
                      ("[[", "not valid JSON")):
        assert main(["batch", "--commands", bad]) == 2
        assert says in capsys.readouterr().err


# ---- code kinds (no lm-eval): faked generations, real sandboxed grading ---------------------------------

SUM_OK = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
SUM_BAD = "Here:\n```python\nprint(0)\n```"


def _fake_generations(monkeypatch, responses_by_prompt, seen):
    from geopd.evaluate import generation

    def fake(model, prompts, *, n, tokenizer, **kwargs):
        seen.append({"n": n, **kwargs})
        formatted = [generation.chat_prompt(tokenizer, p) for p in prompts]
        keys = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
        return generation.Generations(prompts=formatted, responses=[responses_by_prompt[k][:n] for k in keys])

    monkeypatch.setattr(generation, "sample_responses", fake)


def test_cli_code_kind(tmp_path, tiny_model, monkeypatch):
    tests = [{"input": "2 3\n", "output": "5\n"}, {"input": "10 -4\n", "output": "6\n"}]
    _write_jsonl(tmp_path / "code" / "test.jsonl", [
        {"id": "c0", "prompt": "Add two numbers.", "tests": tests, "task": "code"},
        {"id": "c1", "prompt": "Add them again.", "tests": tests, "task": "code"}])
    seen = []
    _fake_generations(monkeypatch, {"Add two numbers.": [SUM_OK, SUM_BAD], "Add them again.": [SUM_BAD, SUM_BAD]},
                      seen)
    spec = {"name": "code-heldout", "kind": "code", "data_dir": str(tmp_path / "code"), "split": "test",
            "samples": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 64}
    assert _run_cli(tiny_model, spec, tmp_path, seed=5) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["metrics"] == {"avg@2": 0.25, "pass@2": 0.5}
    assert result["n"] == 2 and seen[0]["n"] == 2 and seen[0]["seed"] == 5 and seen[0]["max_new_tokens"] == 64
    lines = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [(x["id"], x["sample"], x["correct"]) for x in lines] == \
        [("c0", 0, True), ("c0", 1, False), ("c1", 0, False), ("c1", 1, False)]
    assert lines[1]["extracted"] == "print(0)"


def test_cli_lcb_kind(tmp_path, tiny_model, monkeypatch):
    from geopd.data import lcb as lcb_data

    problem = {"id": "q1", "question_id": "q1", "question_content": "Read a and b; print a+b.", "starter_code": "",
               "metadata": {}, "public_test_cases": [{"input": "2 3\n", "output": "5\n", "testtype": "stdin"}],
               "private_test_cases": [{"input": "1 1\n", "output": "2\n", "testtype": "stdin"}], "task": "lcb"}
    _write_jsonl(tmp_path / "lcb" / "test.jsonl", [problem])
    seen = []
    _fake_generations(monkeypatch, {lcb_data.format_prompt(problem): [SUM_OK, SUM_BAD, SUM_OK, SUM_OK]}, seen)
    spec = {"name": "lcb-v5", "kind": "lcb", "data_dir": str(tmp_path / "lcb"), "split": "test",
            "samples": 4, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 64}
    assert _run_cli(tiny_model, spec, tmp_path) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["metrics"] == {"avg@4": 0.75, "pass@4": 1.0, "pass@1": 0.75}
    first = json.loads((tmp_path / "s.jsonl").read_text().splitlines()[0])
    assert lcb_data.SYSTEM_MESSAGE.split("\n")[0] in first["prompt"]  # the generic prompt's system turn
