"""`geopd data`: prepare one data set as local JSONL files (train.jsonl, test.jsonl).

Every later stage reads only these files, so training and evaluation never touch the
network. Records are normalised to one schema per kind:

  corpus  {"text"}                                  language-model pretraining
  demos   {"prompt", "response", "task"}            SFT (loss on the response)
  math    {"id", "prompt", "answer", "task": "math"} OPD / RLVR prompts, math benchmarks
  code    {"id", "prompt", "tests", "task": "code"}  code prompts; tests are stdin/stdout pairs
  lcb     LiveCodeBench problems (geopd.evaluate.lcb)
  mcq     {"id", "prompt", "answer", "task": "mcq"}  multiple choice, answer is a letter

Miniature kinds are generated from a seed (geopd.world.tasks); hub kinds are downloaded
with `datasets` at paper scale and normalised here.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from geopd.errors import UserError


def write_jsonl(path: Path, records: Iterable[dict]) -> int:
    n = 0
    with open(path, "w") as fh:
        for record in records:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path} (run the prepare_data rule first)")
    records = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{lineno}: corrupt JSONL line ({exc.msg})") from None
    return records


def load_split(data_dir: str | Path, split: str, *, required_keys: Iterable[str] = ()) -> list[dict]:
    """Records of one split, checked non-empty and carrying the keys the caller needs."""
    path = Path(data_dir) / f"{split}.jsonl"
    records = read_jsonl(path)
    if not records:
        raise UserError(f"{path}: the {split} split is empty")
    missing = [k for k in required_keys if k not in records[0]]
    if missing:
        raise UserError(f"{path}: records lack key(s) {missing}; wrong data set for this stage?")
    return records


# ---- miniature ---------------------------------------------------------------------------

def synthetic(spec: dict) -> dict[str, list[dict]]:
    from geopd.world import tasks

    kind, seed = spec["kind"], spec["seed"]
    n_train, n_test = spec.get("n_train", 0), spec.get("n_test", 0)
    if kind == "synthetic-corpus":
        return {"train": [{"text": t} for t in tasks.pretrain_corpus(n_train, seed)], "test": []}
    if kind == "synthetic-math":
        return {s: tasks.math_problems(n, seed, s) for s, n in (("train", n_train), ("test", n_test))}
    if kind == "synthetic-code":
        return {s: tasks.code_problems(n, seed, s) for s, n in (("train", n_train), ("test", n_test))}
    if kind == "synthetic-demos":
        rng = random.Random(seed + 1)
        task_list = spec.get("tasks", ["math"])
        share = spec.get("mix") or {t: 1.0 / len(task_list) for t in task_list}
        if set(share) != set(task_list):
            raise UserError(f"data set {spec['name']}: mix names {sorted(share)} but tasks are {sorted(task_list)}")
        total = sum(share.values())
        per_task = {t: int(round(n_train * share[t] / total)) for t in task_list}
        # Code demos draw from their own stream, so adding them (or their corruption) leaves
        # the math demos and the shuffle of an existing data set as they were.
        code_rng = random.Random(f"code-demos:{seed}")
        records = []
        for task, n in per_task.items():
            if task == "math":
                for p in tasks.math_problems(n, seed, "train"):
                    records.append({"prompt": p["prompt"], "task": "math",
                                    "response": tasks.math_demo(p, rng, spec.get("corrupt_prob", 0.0))})
            else:
                for p in tasks.code_problems(n, seed, "train"):
                    records.append({"prompt": p["prompt"], "task": "code", "response": tasks.code_demo(p, code_rng, spec.get("corrupt_prob", 0.0))})
        rng.shuffle(records)
        return {"train": records, "test": []}
    raise UserError(f"data set {spec['name']}: unknown synthetic kind '{kind}'")


# ---- hub (paper scale) -------------------------------------------------------------------

def _hub_rows(spec: dict):
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets comes with lm-eval
        raise UserError("the `datasets` package is needed for hub data sets") from None
    try:
        return datasets.load_dataset(spec["hub"], spec.get("subset"), split=spec.get("split", "train"))
    except Exception as exc:  # network, auth, missing repo: say which data set
        raise UserError(f"data set {spec['name']}: cannot load '{spec['hub']}' from the hub: {exc}") from None


def _text_of(prompt) -> str:
    """DAPO stores the prompt as a chat list; others as a string."""
    if isinstance(prompt, list):
        return "\n".join(m["content"] for m in prompt if m.get("role", "user") == "user")
    return str(prompt)


def normalise_math(row: dict, index: int) -> dict:
    prompt = row.get("problem") or row.get("question") or _text_of(row.get("prompt", ""))
    answer = row.get("answer")
    if answer is None and isinstance(row.get("reward_model"), dict):
        answer = row["reward_model"].get("ground_truth")
    if answer is None and "solution" in row:
        from geopd.grading.math import last_boxed
        answer = last_boxed(row["solution"])
    if not prompt or answer is None:
        raise UserError(f"math record {index} has no problem/answer fields (keys: {sorted(row)})")
    return {"id": str(row.get("id", index)), "prompt": prompt, "answer": str(answer), "task": "math"}


def normalise_sft(row: dict, index: int) -> dict:
    messages = row.get("messages") or row.get("conversations")
    if not messages:
        raise UserError(f"SFT record {index} has no messages (keys: {sorted(row)})")
    # Prompt = everything before the last assistant turn; response = that turn.
    last = max(i for i, m in enumerate(messages) if m.get("role") == "assistant")
    return {"messages": messages[:last], "prompt": _text_of(messages[:last]),
            "response": messages[last]["content"], "task": "sft"}


def normalise_code(row: dict, index: int) -> dict:
    tests = row.get("tests")
    if isinstance(tests, str):
        tests = json.loads(tests)
    return {"id": str(row.get("id", index)), "prompt": row.get("problem") or row.get("question"),
            "tests": tests, "task": "code"}


def normalise_mcq(row: dict, index: int) -> dict:
    """GPQA layout: the correct answer and three distractors, shuffled into letters A-D.

    The order is a pure function of the question text (a hash, not a global RNG), so every
    preparation of the data set, on any machine, asks the same lettered question.
    """
    question = row.get("Question") or row.get("question")
    correct = row.get("Correct Answer")
    wrong = [row.get(f"Incorrect Answer {i}") for i in (1, 2, 3)]
    if not question or correct is None or any(w is None for w in wrong):
        raise UserError(f"multiple-choice record {index} lacks Question / Correct Answer / "
                        f"Incorrect Answer 1-3 (keys: {sorted(row)})")
    options = [str(correct).strip()] + [str(w).strip() for w in wrong]
    seed = int.from_bytes(hashlib.sha256(str(question).encode()).digest()[:8], "big")
    order = random.Random(seed).sample(range(4), 4)
    letters = "ABCD"
    lines = [f"({letters[pos]}) {options[i]}" for pos, i in enumerate(order)]
    answer = letters[order.index(0)]
    return {"id": str(row.get("Record ID", index)), "prompt": str(question).strip() + "\n\n" + "\n".join(lines),
            "answer": answer, "task": "mcq"}


def hub(spec: dict) -> dict[str, list[dict]]:
    kind = spec["kind"]
    if kind == "hub-lcb":
        from geopd.evaluate import lcb
        return {spec.get("as_split", "test"): lcb.load_problems(spec)}
    rows = _hub_rows(spec)
    normalise = {"hub-math": normalise_math, "hub-sft": normalise_sft, "hub-code": normalise_code,
                 "hub-mcq": normalise_mcq}.get(kind)
    if normalise is None:
        raise UserError(f"data set {spec['name']}: kind '{kind}' has no loader yet")
    records = [normalise(dict(row), i) for i, row in enumerate(rows)]
    split = spec.get("as_split", "train")
    return {split: records, ("test" if split == "train" else "train"): []}


# ---- command -----------------------------------------------------------------------------

def prepare(spec: dict, out: str | Path) -> dict[str, int]:
    splits = synthetic(spec) if spec["kind"].startswith("synthetic-") else hub(spec)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    counts = {split: write_jsonl(tmp / f"{split}.jsonl", records) for split, records in splits.items()}
    (tmp / "info.json").write_text(json.dumps({"spec": spec, "counts": counts}, indent=2, sort_keys=True))
    if out.exists():
        shutil.rmtree(out)
    os.rename(tmp, out)  # atomic: a killed job never leaves a half-written data set
    return counts


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", required=True, help="JSON data-set spec (from the grid)")
    parser.add_argument("--out", required=True)


def main(args: argparse.Namespace) -> int:
    spec = json.loads(args.spec)
    counts = prepare(spec, args.out)
    print(f"{spec['name']}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0
