"""Data sets prepared once as local JSONL files (train.jsonl, test.jsonl), by `geopd data`.

Every later stage reads only these files, so training and evaluation never touch the
network. Records are normalised to one schema per kind:

  corpus  {"text"}                                  language-model pretraining
  demos   {"prompt", "response", "task"}            SFT (loss on the response), miniature
  sft     {"id", "messages", "task": "sft"}         SFT conversations as they are (system turns,
                                                    multi-turn), hub
  math    {"id", "prompt", "answer", "task": "math"} OPD / RLVR prompts, math benchmarks
  code    {"id", "prompt", "tests", "fn_name"?, "call_match"?, "task": "code", "source"?}
                                                    tests [{"input", "output"}]: stdin/stdout,
                                                    or call-based with fn_name, compared by
                                                    call_match (see code_tests)
  lcb     LiveCodeBench problems (geopd.data.lcb)
  mcq     {"id", "prompt", "answer", "task": "mcq"}  multiple choice, answer is a letter

Miniature kinds are generated from a seed (geopd.world.tasks). Hub kinds are read with
`datasets` (streaming: bounded memory whatever the size) from the data set's copy in the hub
mirror (spec "path", filled by the prefetch rule), or from the hub when no mirror is configured,
and normalised here; info.json records what was dropped or deduplicated.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from geopd.data import lcb
from geopd.errors import UserError
from geopd.grading.math import last_boxed
from geopd.io.atomic import publish_dir
from geopd.io.jsonl import read_jsonl, write_jsonl
from geopd.world import tasks


def load_split(data_dir: str | Path, split: str, *, required_keys: Iterable[str] = ()) -> list[dict]:
    """Records of one split, checked non-empty and carrying the keys the caller needs."""
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise UserError(f"data file not found: {path} (run the prepare_data rule first)")
    records = read_jsonl(path)
    if not records:
        raise UserError(f"{path}: the {split} split is empty")
    missing = [k for k in required_keys if k not in records[0]]
    if missing:
        raise UserError(f"{path}: records lack key(s) {missing}; wrong data set for this stage?")
    return records


# ---- miniature ---------------------------------------------------------------------------

def demo_tasks(spec: dict) -> list[str]:
    """The tasks a synthetic-demos set demonstrates (math unless it says otherwise)."""
    return spec.get("tasks", ["math"])


def synthetic(spec: dict) -> dict[str, list[dict]]:
    kind, seed = spec["kind"], spec["seed"]
    n_train, n_test = spec.get("n_train", 0), spec.get("n_test", 0)
    digits = spec.get("max_digits", tasks.MAX_DIGITS)  # operands of the math task
    if kind == "synthetic-corpus":
        return {"train": [{"text": t} for t in tasks.pretrain_corpus(n_train, seed, digits)], "test": []}
    if kind == "synthetic-math":
        return {s: tasks.math_problems(n, seed, s, digits) for s, n in (("train", n_train), ("test", n_test))}
    if kind == "synthetic-code":
        return {s: tasks.code_problems(n, seed, s) for s, n in (("train", n_train), ("test", n_test))}
    if kind == "synthetic-demos":
        rng = random.Random(seed + 1)
        task_list = demo_tasks(spec)
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
                for p in tasks.math_problems(n, seed, "train", digits):
                    records.append({"prompt": p["prompt"], "task": "math",
                                    "response": tasks.math_demo(p, rng, spec.get("corrupt_prob", 0.0))})
            else:
                for p in tasks.code_problems(n, seed, "train"):
                    records.append({"prompt": p["prompt"], "task": "code", "response": tasks.code_demo(p, code_rng, spec.get("corrupt_prob", 0.0))})
        rng.shuffle(records)
        return {"train": records, "test": []}
    raise UserError(f"data set {spec['name']}: unknown synthetic kind '{kind}'")


# ---- hub (paper scale) -------------------------------------------------------------------
#
# One answer format from training prompt to reward to evaluation: every math prompt (training
# sets and benchmarks alike) is the bare problem followed by MATH_INSTRUCTION, so the model is
# asked for a final \boxed{} answer, the one thing the reward, EffOPD's validation and the
# benchmarks grade (the last \boxed{}). DAPO-Math-17k's own wrapper, which asks for "Answer: ..."
# on the last line, is removed first. Multiple choice asks for the letter in \boxed{} the same way.

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
MCQ_INSTRUCTION = "Please reason step by step, and put the letter of your final answer within \\boxed{}."
_DAPO_WRAPPER = re.compile(
    r"^\s*Solve the following math problem step by step\..*?\$Answer is the answer to the problem\.\s*"
    r"(?P<problem>.*?)\s*Remember to put your answer on its own line after \"Answer:\"\.?\s*$", re.S)


def problem_text(text: str) -> tuple[str, bool]:
    """(the problem, whether a DAPO "Answer:" wrapper was removed around it)."""
    m = _DAPO_WRAPPER.match(text)
    return (m["problem"].strip(), True) if m else (text.strip(), False)


def _text_of(prompt) -> str:
    """DAPO stores the prompt as a chat list (one user turn); others as a string."""
    if isinstance(prompt, list):
        return "\n".join(m["content"] for m in prompt if m.get("role", "user") == "user")
    return str(prompt)


def math_prompt(problem: str) -> str:
    return problem.strip() + "\n" + MATH_INSTRUCTION


def _source(spec: dict) -> str:
    """The local copy (a hub mirror folder) if the spec has one, else the hub id."""
    if spec.get("path"):
        path = Path(spec["path"])
        if not path.is_dir():
            raise UserError(f"data set {spec['name']}: its copy {path} does not exist (run the prefetch rule "
                            "where the network is, or `geopd fixture` for the test fixture)")
        return str(path)
    return spec["hub"]


def _data_files(spec: dict, subset: str | None, split: str) -> list[str]:
    """The files of one config/split as `datasets` resolves them (README configs, split names)."""
    import datasets

    try:
        files = datasets.load_dataset_builder(_source(spec), subset).config.data_files
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - e.g. a hub repo offline; hub_rows reports the real error
        return []
    return [str(f) for f in (files or {}).get(split) or []]


def _local_parquet(files: list[str]) -> bool:
    return bool(files) and all(f.endswith(".parquet") and Path(f).is_file() for f in files)


def _parquet_rows(files: list[str]) -> Iterator[dict]:
    """Rows of local parquet files, one row group in memory at a time (no pre-buffering of the
    whole file, which `datasets` streaming does: its memory grows with the file size)."""
    import pyarrow.parquet as pq

    for path in files:
        pf = pq.ParquetFile(path, pre_buffer=False, memory_map=False)
        for group in range(pf.num_row_groups):
            yield from pf.read_row_group(group).to_pylist()


def hub_rows(spec: dict, subset: str | None = None, split: str | None = None) -> Iterator[dict]:
    """Rows of one config/split with bounded memory: local parquet row group by row group, any
    other format or a hub repo through `datasets`' streaming mode; nothing is cached."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets comes with lm-eval
        raise UserError("the `datasets` package is needed for hub data sets") from None
    subset = subset if subset is not None else spec.get("subset")
    split = split or spec.get("split", "train")
    where = f"data set {spec['name']}: '{spec.get('path') or spec['hub']}' ({subset or 'default'}, split {split})"
    source = _source(spec)
    try:
        files = _data_files(spec, subset, split)
        if _local_parquet(files):
            yield from _parquet_rows(files)
            return
        for row in datasets.load_dataset(source, subset, split=split, streaming=True):
            yield dict(row)
    except UserError:
        raise
    except Exception as exc:  # network, auth, missing config or split, corrupt file: say which
        raise UserError(f"{where}: cannot be read: {type(exc).__name__}: {exc}") from None


def row_count(spec: dict, subset: str | None = None, split: str | None = None) -> int:
    """Rows of one split: from the parquet footers when the files are local parquet (no data
    read), else by one streaming pass."""
    subset = subset if subset is not None else spec.get("subset")
    split = split or spec.get("split", "train")
    files = _data_files(spec, subset, split)
    if _local_parquet(files):
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return sum(1 for _ in hub_rows(spec, subset, split))


def normalise_math(row: dict, index: int, stats: dict | None = None) -> dict:
    raw = row.get("problem") or row.get("question") or _text_of(row.get("prompt", ""))
    answer = row.get("answer")
    if answer is None and isinstance(row.get("reward_model"), dict):
        answer = row["reward_model"].get("ground_truth")
    if answer is None and "solution" in row:
        answer = last_boxed(row["solution"])
    if not raw or answer is None:
        raise UserError(f"math record {index} has no problem/answer fields (keys: {sorted(row)})")
    problem, unwrapped = problem_text(str(raw))
    if stats is not None and unwrapped:
        stats["answer_wrapper_removed"] = stats.get("answer_wrapper_removed", 0) + 1
    extra = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
    rid = row.get("id", row.get("unique_id", extra.get("index", index)))
    return {"id": str(rid), "prompt": math_prompt(problem), "answer": str(answer).strip(), "task": "math"}


def math_records(spec: dict, stats: dict) -> Iterator[dict]:
    """Math rows normalised, duplicates dropped: the same problem text (whitespace-normalised)
    is kept once, first occurrence first. DAPO-Math-17k's hub copy repeats each of its ~17.9k
    problems ~100 times; benchmarks have no duplicates, so this leaves them as they are."""
    seen: set[bytes] = set()
    stats.update(rows=0, duplicates_dropped=0)
    for i, row in enumerate(hub_rows(spec)):
        stats["rows"] += 1
        rec = normalise_math(row, i, stats)
        key = hashlib.sha1(" ".join(rec["prompt"].split()).encode()).digest()
        if key in seen:
            stats["duplicates_dropped"] += 1
            continue
        seen.add(key)
        yield rec
    stats["unique"] = len(seen)


# Preparation fails when more than this fraction of the sampled SFT conversations is unusable
# (an unknown role, non-text content, no assistant answer): that many means the loader does not
# understand the data set's schema, and training on the rest would silently skew the mix. Below
# it, the count and its reasons are printed and recorded in info.json.
SFT_MAX_DROPPED_FRACTION = 0.01

SFT_ROLES = ("system", "user", "assistant", "tool")


def sft_problem(row: dict) -> str | None:
    """Why a conversation cannot be trained on as it is (None: it can)."""
    messages = row.get("messages") or row.get("conversations")
    if not isinstance(messages, list) or not messages:
        return "no messages"
    for m in messages:
        if not isinstance(m, dict):
            return "a message is not a mapping"
        if m.get("role") not in SFT_ROLES:
            return f"role {m.get('role')!r}"
        if not isinstance(m.get("content"), str):
            return f"{type(m.get('content')).__name__} content"
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        return "no assistant answer"
    return None


def normalise_sft(row: dict, index: int) -> dict | None:
    """A conversation as it is: system turns and every turn of a multi-turn dialogue kept, in
    order (the trainer formats it with the chat template and masks the loss). None when it has
    no usable assistant turn (`sft_problem` says why)."""
    if sft_problem(row) is not None:
        return None
    messages = row.get("messages") or row.get("conversations")
    out = [{k: v for k, v in m.items() if v is not None} for m in messages]
    return {"id": str(row.get("id", index)), "messages": out, "task": "sft"}


def sft_records(spec: dict, stats: dict) -> Iterator[dict]:
    """Conversations streamed to disk; with `n_train`, a seeded sample of that many rows (chosen
    by row index before any row is read, so memory holds the indices, never the rows). Unusable
    conversations are dropped, counted by reason (stats, stderr); above SFT_MAX_DROPPED_FRACTION
    of the sample, preparation fails."""
    total = row_count(spec)
    n = spec.get("n_train")
    chosen = None if n is None or n >= total else sorted(random.Random(spec["seed"]).sample(range(total), n))
    stats.update(rows=total, sampled=total if chosen is None else len(chosen), dropped_unusable=0)
    reasons: dict[str, int] = {}
    nxt = 0
    for i, row in enumerate(hub_rows(spec)):
        if chosen is not None:
            if nxt >= len(chosen):
                break
            if i != chosen[nxt]:
                continue
            nxt += 1
        problem = sft_problem(row)
        if problem is not None:
            stats["dropped_unusable"] += 1
            reasons[problem] = reasons.get(problem, 0) + 1
            continue
        yield normalise_sft(row, i)
    dropped, sampled = stats["dropped_unusable"], stats["sampled"]
    if reasons:
        stats["dropped_reasons"] = dict(sorted(reasons.items(), key=lambda kv: -kv[1]))
        print(f"data set {spec['name']}: dropped {dropped} of {sampled} conversations "
              f"({', '.join(f'{k}: {v}' for k, v in stats['dropped_reasons'].items())})", file=sys.stderr, flush=True)
    if dropped > SFT_MAX_DROPPED_FRACTION * sampled:
        raise UserError(f"data set {spec['name']}: {dropped} of {sampled} conversations are unusable "
                        f"({', '.join(f'{k}: {v}' for k, v in stats['dropped_reasons'].items())}), more than "
                        f"{SFT_MAX_DROPPED_FRACTION:.0%}: the loader does not read this data set's schema "
                        "(geopd.data.sft_problem)")


# ---- code ----------------------------------------------------------------------------------
#
# One schema for every code data set: {"id", "prompt", "tests": [{"input": str, "output": str}],
# "fn_name" (call-based only), "task": "code", "source"}. With fn_name the tests are call-based in
# LiveCodeBench's functional convention (input: one JSON value per line, the positional
# arguments; output: JSON of the return value); without it they are stdin/stdout texts.
# DeepCoder's four configs store tests four ways (see geopd/fixture/datasets.py: deepcoder); its
# training set is primeintellect + taco + lcbv5's train split (codeforces has a test split only).

def _parse(value):
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        import ast
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return None


def _text(value) -> str | None:
    """A stdin/stdout test field: text as is; a list of lines joined as the APPS runner does."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return "\n".join(str(v) for v in value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _call_input(args) -> str | None:
    """Call-based arguments as LiveCodeBench's input text (already text: kept)."""
    if isinstance(args, str):
        return args
    if isinstance(args, list):
        return "\n".join(json.dumps(a) for a in args)
    return None


def _call_output(value, *, as_text: bool) -> str | None:
    """The expected return value as JSON text, stored as the source stores it: LiveCodeBench's
    functional outputs are JSON text already (`as_text`); APPS/TACO and PrimeIntellect store a
    value, usually the result wrapped in a one-element list, which is kept as it is: their runner
    accepts the stored value or its first element (call_match "value-or-first",
    geopd.grading.code.CALL_MATCHES), so unwrapping here would grade a function that truly
    returns a one-element list wrong."""
    if isinstance(value, str) and as_text:
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return None


def code_tests(tests, metadata=None) -> tuple[list[dict], str | None, str] | None:
    """(tests, fn_name, call_match) in the one schema, or None when no usable test is left.
    call_match: how a call's return value is compared, by the source's own runner ("exact" for
    stdin tests and LiveCodeBench's functional tests, "value-or-first" for APPS/TACO and
    PrimeIntellect calls)."""
    tests, metadata = _parse(tests), _parse(metadata) or {}
    pairs: list[tuple] = []  # (input, expected, convention): None = stdin, "lcb" or "apps" = call-based
    fn_name = None
    if isinstance(tests, dict) and "inputs" in tests and "outputs" in tests:          # taco (APPS)
        if not isinstance(tests["inputs"], list) or len(tests["inputs"]) != len(tests["outputs"]):
            return None
        fn_name = tests.get("fn_name") or None
        pairs = [(i, o, "apps" if fn_name else None) for i, o in zip(tests["inputs"], tests["outputs"])]
    elif isinstance(tests, list) and all(isinstance(t, dict) and "input" in t and "output" in t for t in tests):
        for t in tests:
            if t.get("type") == "function_call" or t.get("fn_name"):                 # primeintellect
                fn_name = fn_name or t.get("fn_name")
                pairs.append((t["input"], t["output"], "apps"))
            elif t.get("testtype") == "functional":                                  # lcbv5
                fn_name = fn_name or (metadata.get("func_name") if isinstance(metadata, dict) else None)
                pairs.append((t["input"], t["output"], "lcb"))
            else:                                                                    # stdin (all)
                pairs.append((t["input"], t["output"], None))
    else:
        return None
    conventions = {c for _, _, c in pairs}
    if not pairs or len(conventions) > 1 or (fn_name is None) != (conventions == {None}):
        return None  # empty, or stdin and call-based tests mixed, or call-based without a name
    out = []
    for inp, exp, convention in pairs:
        if fn_name is None:
            pair = (_text(inp), _text(exp))
        else:
            pair = (_call_input(inp), _call_output(exp, as_text=convention == "lcb"))
        if None in pair:
            return None
        out.append({"input": pair[0], "output": pair[1]})
    return out, fn_name, "value-or-first" if conventions == {"apps"} else "exact"


def code_prompt(problem: str, starter_code: str | None, fn_name: str | None) -> str:
    """LiveCodeBench's user turn (the format the code benchmark asks for), so training and
    evaluation prompts ask for code the same way."""
    if not starter_code and fn_name:
        starter_code = f"def {fn_name}(*args):\n    "
    return lcb.format_prompt({"question_content": problem, "starter_code": starter_code or ""})


def normalise_code(row: dict, index: int, source: str = "") -> dict | None:
    parsed = code_tests(row.get("tests"), row.get("metadata"))
    problem = row.get("problem") or row.get("question")
    if parsed is None or not problem:
        return None
    tests, fn_name, call_match = parsed
    rec = {"id": str(row.get("id", f"{source}-{index}" if source else index)),
           "prompt": code_prompt(str(problem), row.get("starter_code"), fn_name),
           "tests": tests, "task": "code", "source": source}
    if fn_name:
        rec["fn_name"] = fn_name
    if call_match != "exact":  # the record keeps its source's runner rule (geopd.train.rewards)
        rec["call_match"] = call_match
    return rec


def code_records(spec: dict, stats: dict) -> Iterator[dict]:
    """Every listed config (`subsets`, else `subset`, else the default config) of a code data
    set, each row's tests in the one schema; rows without usable tests are dropped, counted."""
    subsets = spec.get("subsets") or [spec.get("subset")]
    for subset in subsets:
        key = subset or "default"
        stats.setdefault("rows", {})[key] = 0
        stats.setdefault("dropped_no_tests", {})[key] = 0
        for i, row in enumerate(hub_rows(spec, subset)):
            stats["rows"][key] += 1
            rec = normalise_code(row, i, key)
            if rec is None:
                stats["dropped_no_tests"][key] += 1
                continue
            yield rec


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
    prompt = str(question).strip() + "\n\n" + "\n".join(lines) + "\n" + MCQ_INSTRUCTION
    return {"id": str(row.get("Record ID", index)), "prompt": prompt, "answer": answer, "task": "mcq"}


def hub(spec: dict) -> tuple[dict[str, Iterable[dict]], dict]:
    """({split: records}, stats) of a hub data set; records are produced lazily."""
    kind, stats = spec["kind"], {}
    split = spec.get("as_split", "train")
    if kind == "hub-lcb":
        records: Iterable[dict] = lcb.load_problems(spec)
    elif kind == "hub-math":
        records = math_records(spec, stats)
    elif kind == "hub-sft":
        records = sft_records(spec, stats)
    elif kind == "hub-code":
        records = code_records(spec, stats)
    elif kind == "hub-mcq":
        records = (normalise_mcq(row, i) for i, row in enumerate(hub_rows(spec)))
    else:
        raise UserError(f"data set {spec['name']}: kind '{kind}' has no loader yet")
    return {split: records, ("test" if split == "train" else "train"): []}, stats


# ---- command -----------------------------------------------------------------------------

def prepare(spec: dict, out: str | Path) -> dict[str, int]:
    """Write every split of a data set to `out` (train.jsonl, test.jsonl, info.json with the
    counts and what preparation dropped), record by record, then publish the folder at once."""
    if spec["kind"].startswith("synthetic-"):
        splits, stats = synthetic(spec), {}
    else:
        splits, stats = hub(spec)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        counts = {split: write_jsonl(tmp / f"{split}.jsonl", records) for split, records in splits.items()}
        info = {"spec": spec, "counts": counts, **({"stats": stats} if stats else {})}
        (tmp / "info.json").write_text(json.dumps(info, indent=2, sort_keys=True))
        publish_dir(tmp, out)  # a killed job never leaves a half-written data set
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts
