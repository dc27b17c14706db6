"""LiveCodeBench v5 code generation data: the released files, their windows and encodings, and
the generic prompt.

`load_problems` reads the released JSONL files (RELEASE_FILES), keeps the problems of a contest
window and checks their tests; the private tests stay in their compact released encoding
(base64(zlib(pickle(JSON)))) until `tests_of` decodes them with a restricted unpickler that builds
no objects but plain data. `format_prompt` / `format_messages` are LiveCodeBench's generic prompt,
used for the benchmark and for every code training prompt (geopd.data.code_prompt). Grading is
geopd.evaluate.lcb's.
"""
from __future__ import annotations

import base64
import io
import json
import pickle
import zlib
from datetime import datetime
from pathlib import Path

from geopd.errors import UserError
from geopd.io.jsonl import iter_jsonl

WINDOW = ("2024-08-01", "2025-02-01")  # v5 evaluation window, [start, end)
RELEASE_FILES = {f"release_v{n}": [f"test{'' if i == 1 else i}.jsonl" for i in range(1, n + 1)] for n in range(1, 7)}

SYSTEM_MESSAGE = (
    "You are an expert Python programmer. You will be given a question (problem specification) "
    "and will generate a correct Python program that matches the specification and passes all tests."
)
_FORMAT_STARTER = ("You will use the following starter code to write the solution to the problem "
                   "and enclose your code within delimiters.")
_FORMAT_STDIN = (
    "Read the inputs from stdin solve the problem and write the answer to stdout (do not directly test "
    "on the sample inputs). Enclose your code within delimiters as follows. Ensure that when the python "
    "program runs, it reads the inputs, runs the algorithm and writes output to STDOUT."
)

# ---- data ------------------------------------------------------------------------------

class _PlainUnpickler(pickle.Unpickler):
    """Builds only what pickle can express without importing anything: None, bools,
    numbers, str/bytes and lists/tuples/dicts/sets of them. Any global (a class, a
    function such as os.system) is refused before it is looked up."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from test data")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing a persistent id in test data")


def _restricted_loads(data: bytes):
    return _PlainUnpickler(io.BytesIO(data)).load()


def decode_private_tests(blob) -> list[dict]:
    """Private tests as released: a JSON list, or base64(zlib(pickle(JSON string)))."""
    if isinstance(blob, list):
        tests = blob
    else:
        tests = None
        try:
            tests = json.loads(blob)
        except (TypeError, ValueError):
            pass
        if not isinstance(tests, list):
            try:
                raw = zlib.decompress(base64.b64decode(blob.encode("ascii") if isinstance(blob, str) else blob))
            except (ValueError, zlib.error) as exc:
                raise ValueError(f"private tests are neither JSON nor base64+zlib data ({exc})") from None
            value = _restricted_loads(raw)
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            tests = json.loads(value) if isinstance(value, str) else value
    if not isinstance(tests, list):
        raise ValueError(f"private tests decode to {type(tests).__name__}, not a list")
    return [_check_test(t) for t in tests]


def _check_test(test) -> dict:
    if not (isinstance(test, dict) and isinstance(test.get("input"), str) and isinstance(test.get("output"), str)):
        raise ValueError(f"malformed test case: {str(test)[:200]}")
    out = {"input": test["input"], "output": test["output"], "testtype": test.get("testtype", "stdin")}
    if out["testtype"] not in ("stdin", "functional"):
        raise ValueError(f"unknown testtype {out['testtype']!r}")
    return out


def normalise_problem(row: dict) -> dict:
    """A released row (JSON strings inside) as a plain record.

    The private tests are decoded once here to check them, but kept in their compact
    released encoding (tests_of decodes them again, with the same restricted unpickler):
    decoded, a few v5 problems alone run to tens of megabytes."""
    qid = row.get("question_id", "?")
    try:
        metadata = row.get("metadata") or {}
        if isinstance(metadata, str):
            metadata = json.loads(metadata)
        public = row.get("public_test_cases") or []
        if isinstance(public, str):
            public = json.loads(public)
        return {
            "id": str(qid),
            "question_id": str(qid),
            "question_title": row.get("question_title", ""),
            "question_content": row["question_content"],
            "platform": row.get("platform", ""),
            "contest_id": str(row.get("contest_id", "")),
            "contest_date": _date(row["contest_date"]).isoformat(),
            "difficulty": row.get("difficulty", ""),
            "starter_code": row.get("starter_code") or "",
            "metadata": metadata,
            "public_test_cases": [_check_test(t) for t in public],
            "private_test_cases": _checked_private(row.get("private_test_cases") or []),
            "task": "lcb",
        }
    except (KeyError, ValueError, pickle.UnpicklingError) as exc:
        raise UserError(f"LiveCodeBench problem {qid}: {exc}") from None


def _checked_private(blob):
    tests = decode_private_tests(blob)
    return blob if isinstance(blob, str) and not blob.lstrip().startswith("[") else tests


def _date(value) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def in_window(problem: dict, start: str = WINDOW[0], end: str = WINDOW[1]) -> bool:
    """contest_date in [start, end). (The official CLI's --end_date is inclusive; no v5
    problem is dated on 2025-02-01, so the two agree for this release.)"""
    return _date(start) <= _date(problem["contest_date"]) < _date(end)


def load_problems(spec: dict) -> list[dict]:
    """The data rule's loader: released JSONL files, filtered to the window before the private
    tests are decoded. Read from `path` (the repo's copy in the hub mirror, which the grid sets
    when the config has a hub_mirror: <mirror>/datasets/livecodebench/code_generation_lite/),
    else downloaded from the hub."""
    release = spec.get("release", "release_v5")
    if release not in RELEASE_FILES:
        raise UserError(f"data set {spec.get('name', 'lcb')}: unknown LiveCodeBench release '{release}'")
    start, end = spec.get("date_from", WINDOW[0]), spec.get("date_to", WINDOW[1])
    files = _release_files(spec, RELEASE_FILES[release])
    problems = [normalise_problem(row) for path in files for row in iter_jsonl(path)
                if _date(start) <= _date(row["contest_date"]) < _date(end)]
    if not problems:
        raise UserError(f"no LiveCodeBench problems of {release} between {start} and {end} in {files}")
    return problems


def _release_files(spec: dict, names: list[str]) -> list[Path]:
    if spec.get("path"):
        base = Path(spec["path"])
        paths = [base / n for n in names] if base.is_dir() else [base]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise UserError(f"LiveCodeBench files not found: {missing} (the hub mirror is filled by the "
                            "prefetch rule, the test fixture by `geopd fixture`)")
        return paths
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - comes with transformers
        raise UserError("huggingface_hub is needed to download LiveCodeBench") from None
    try:
        return [Path(hf_hub_download(spec["hub"], n, repo_type="dataset")) for n in names]
    except Exception as exc:
        raise UserError(f"cannot download LiveCodeBench '{spec.get('hub')}' ({exc})") from None


# ---- prompt -------------------------------------------------------------------------------------------

def format_prompt(problem: dict) -> str:
    """The user turn of LiveCodeBench's generic prompt (system turn: SYSTEM_MESSAGE)."""
    text = f"### Question:\n{problem['question_content']}\n\n"
    if problem.get("starter_code"):
        text += f"### Format: {_FORMAT_STARTER}\n```python\n{problem['starter_code']}\n```\n\n"
    else:
        text += f"### Format: {_FORMAT_STDIN}\n```python\n# YOUR CODE HERE\n```\n\n"
    return text + "### Answer: (use the provided format with backticks)\n\n"


def format_messages(problem: dict) -> list[dict]:
    return [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": format_prompt(problem)}]


# ---- tests --------------------------------------------------------------------------------------

def private_tests(problem: dict) -> list[dict]:
    private = problem.get("private_test_cases") or []
    return private if isinstance(private, list) else decode_private_tests(private)


def tests_of(problem: dict) -> list[dict]:
    """Public then private tests (decoded if still encoded), the runner's order."""
    return list(problem.get("public_test_cases") or []) + private_tests(problem)
