"""LiveCodeBench v5 code generation: data, the generic prompt, and grading.

Grading follows the official runner (LiveCodeBench/LiveCodeBench,
lcb_runner/evaluation/testing_util.py, as of 2025-05), rule by rule, but every test runs
in its own sandboxed process (geopd.evaluate.sandbox) instead of inside the grader:

stdin problems (no `func_name` in the metadata)
  - a trailing `if __name__ == '__main__':` block is replaced by its body; then every
    top-level statement except imports is moved into `def wrapped_function():`, after the
    runner's fixed prelude of star-imports (math, collections, heapq, ...) and
    `sys.setrecursionlimit(50000)`; the module is named "tmp_sol", and when the code
    mentions "class Solution" the runner instantiates `Solution()` (which, for stdin
    code, no longer exists at module level: such programs fail there and here);
  - the call runs with the runner's stand-ins: sys.stdout is a StringIO (so
    sys.stdout.buffer does not exist), sys.stdin is its mock (read() and readlines()
    return the whole input, readline() reads line by line, buffer.readline() always
    returns the first line, iterating over sys.stdin fails) and open() returns the
    input; SystemExit ends the program normally;
  - output and expected are stripped, split on "\n", each line stripped; the line
    counts must match; each line must be equal as text, or else equal as the list of
    Decimals of its whitespace-separated tokens ("1.0000000" equals "1"; no tolerance
    beyond that: 0.3333333 is not 0.333333).
functional problems (LeetCode, `func_name`)
  - the prelude, then the code, in module "tmp_sol"; `Solution()` when the code says
    "class Solution"; the inputs are one JSON value per line, passed as positional
    arguments; a returned tuple becomes a list; the result must equal json.loads of the
    expected output. The result crosses the process boundary as JSON, encoded strictly
    so the comparison stays the runner's `==`: nested tuples, sets, non-string dict keys
    and foreign objects compare unequal, as they do there.
both
  - the runner's reliability_guard stand-ins (os.kill, os.getcwd, shutil.rmtree,
    subprocess.Popen, quit, ... set to None; resource/psutil/... unimportable) and
    sys.set_int_max_str_digits(50000);
  - 6 s per test, for the call only, as the runner's alarm: a SIGALRM ends the call at
    6 s (the sandbox's own wall clock adds a start-up allowance); tests run public then
    private, stopping at the first failure; a problem is solved when all its tests pass;
  - pass@1 is the mean over problems of (correct samples / samples).

Known differences, all deliberate: each test runs in a fresh process (the runner reuses
one process and one Solution instance across a problem's tests, so state could leak
between tests there); a functional result object with a custom __eq__ cannot pass by
claiming equality; a program is also refused what the sandbox refuses (sockets, writes
outside its directory, subprocesses) where the runner would only refuse some of it.
48 cases run through both this module and the official runner (stdin quirks, exits,
guards, imports, tuples, sets, numpy, big integers, NaN) gave the same verdict on each;
tests/test_lcb.py keeps 24 of them.
"""
from __future__ import annotations

import base64
import io
import json
import pickle
import signal
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Iterable

from geopd.errors import UserError
from geopd.evaluate import sandbox
from geopd.grading.code import extract_last_code_block

WINDOW = ("2024-08-01", "2025-02-01")  # v5 evaluation window, [start, end)
RELEASE_FILES = {f"release_v{n}": [f"test{'' if i == 1 else i}.jsonl" for i in range(1, n + 1)] for n in range(1, 7)}
TIMEOUT_S = 6.0
STARTUP_GRACE_S = 1.5  # interpreter start and the prelude's imports, outside the timed call
SANDBOX_DEFAULTS = {"memory_mb": 4096, "max_output_bytes": 64 * 1024 * 1024}

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

# The runner's fixed prelude: these star-imports in this order, then plain imports of the
# same modules (so `datetime` ends up the module, and builtins win over math's names).
_STAR_MODULES = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
                 "statistics", "itertools", "functools", "operator", "io", "sys", "json", "builtins", "typing")
_PLAIN_MODULES = _STAR_MODULES[:16]
PRELUDE = ("".join(f"from {m} import *\n" for m in _STAR_MODULES)
           + "".join(f"import {m}\n" for m in _PLAIN_MODULES)
           + "sys.setrecursionlimit(50000)\n")


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
    problems = []
    for path in files:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    raise UserError(f"{path}:{lineno}: corrupt JSONL line") from None
                if _date(start) <= _date(row["contest_date"]) < _date(end):
                    problems.append(normalise_problem(row))
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


# ---- prompt and extraction ---------------------------------------------------------------

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


def extract_code(response: str) -> str | None:
    """The last fenced code block (lines between the last two lines containing ```)."""
    return extract_last_code_block(response)


# ---- comparison --------------------------------------------------------------------------

def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def _decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(tok) for tok in line.split()]
    except (InvalidOperation, ValueError):
        return None


def check_stdin(output: str, expected: str) -> bool:
    got, want = _lines(output), _lines(expected)
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if g == w:
            continue
        gd, wd = _decimals(g), _decimals(w)
        if gd is None or wd is None or gd != wd:
            return False
    return True


def _json_loads(text: str):
    try:
        return json.loads(text)
    except ValueError as exc:
        if "digits" not in str(exc):
            raise
        # Integers past Python's str->int digit limit: go through Decimal, which has none.
        return json.loads(text, parse_int=lambda s: int(Decimal(s)))


def check_functional(result_json: str, expected: str) -> bool:
    """`result_json` is the harness's strict JSON of the returned value (a top-level tuple
    already a list); equal iff it equals json.loads(expected) under Python's ==."""
    try:
        return _json_loads(result_json) == _json_loads(expected)
    except ValueError:
        return False


# ---- programs run in the sandbox -----------------------------------------------------------

_COMMON = r'''
import sys
sys.set_int_max_str_digits(50000)
import ast, builtins, io, json, os, signal, time, types
_write, _dup, _dup2, _open_fd, _devnull_flags = os.write, os.dup, os.dup2, os.open, os.O_WRONLY
SOURCE = __SOURCE__
PRELUDE = __PRELUDE__
MARK = "\x00geopd:"
TIMEOUT = __TIMEOUT__

def _arm():
    # As the runner's alarm: a call still running after TIMEOUT seconds is ended (by
    # SIGALRM's default action, which the sandbox reports as a timeout).
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT)

def _disarm():
    signal.setitimer(signal.ITIMER_REAL, 0)

def _guard_like_runner():
    # The official runner's reliability_guard: these names are None while solutions run.
    os.environ["OMP_NUM_THREADS"] = "1"
    builtins.quit = None
    builtins.help = None
    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid",
                 "fork", "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink",
                 "fchmod", "fchown", "chmod", "chown", "chroot", "lchflags", "lchmod", "lchown",
                 "getcwd", "chdir"):
        setattr(os, name, None)
    import shutil, subprocess
    shutil.rmtree = shutil.move = shutil.chown = None
    subprocess.Popen = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None

def _preload():
    # The runner's worker has numpy imported before the guard nulls os.putenv & co.,
    # which numpy's own import needs; import it now if the solution may use it.
    if "numpy" in SOURCE:
        try:
            import numpy
        except ImportError:
            pass

def _report(key, value):
    sys.stderr.flush()
    _write(2, ("\n" + MARK + key + " " + json.dumps(value) + "\n").encode())
'''

_STDIN_PROGRAM = _COMMON + r'''
def _strip_main_guard(src):
    try:
        tree = ast.parse(src)
        last = tree.body[-1]
        if isinstance(last, ast.If) and ast.unparse(last.test).strip() == "__name__ == '__main__'":
            return ast.unparse(tree.body[:-1]) + "\n" + ast.unparse(last.body)
    except Exception:
        pass
    return src

def _as_function(src):
    try:
        tree = ast.parse(src)
        imports = [s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))]
        body = [s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))]
        no_args = ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[])
        fn = ast.FunctionDef(name="wrapped_function", args=no_args, body=body, decorator_list=[], lineno=-1)
        return PRELUDE + "\n" + ast.unparse(imports) + "\n" + ast.unparse(fn)
    except Exception:
        return src

class _StdinBuffer:
    def __init__(self, text):
        self._raw = text.encode("utf-8")
    def read(self, *args):
        return self._raw
    def readline(self, *args):
        return self._raw.split(b"\n")[0] + b"\n"

class _Stdin:
    def __init__(self, text):
        self._text = text
        self._stream = io.StringIO(text)
        self.buffer = _StdinBuffer(text)
    def read(self, *args):
        return self._text
    def readline(self, *args):
        return self._stream.readline(*args)
    def readlines(self, *args):
        return self._text.split("\n")
    def __getattr__(self, name):
        return getattr(self._stream, name)

class _InputFile(io.StringIO):
    def write(self, *args):
        return None
    def close(self):
        pass

data = sys.stdin.read()
_preload()
_guard_like_runner()
code = _as_function(_strip_main_guard(SOURCE))
module = types.ModuleType("tmp_sol", "")
exec(code, module.__dict__)
target = module.Solution() if "class Solution" in code else module
fn = getattr(target, "wrapped_function")
captured = io.StringIO()
saved = sys.stdout, sys.stdin, builtins.open
sys.stdout, sys.stdin, builtins.open = captured, _Stdin(data), (lambda *a, **k: _InputFile(data))
_arm()
start = time.perf_counter()
try:
    fn()
except SystemExit:
    pass
finally:
    elapsed = time.perf_counter() - start
    _disarm()
    sys.stdout, sys.stdin, builtins.open = saved
    _report("elapsed", elapsed)
sys.stdout.write(captured.getvalue())
sys.stdout.flush()
'''

_FUNCTIONAL_PROGRAM = _COMMON + r'''
FUNC_NAME = __FUNC_NAME__

class _Unequal(Exception):
    pass

def _plain(x, top):
    # Strict JSON view of a result, so that equality after json.loads is the runner's ==.
    if top and isinstance(x, tuple):
        x = list(x)
    t = type(x)
    if x is None or t in (bool, int, float, str):
        return x
    if t.__module__ == "numpy" and getattr(x, "shape", None) == ():
        return _plain(x.item(), False)
    if isinstance(x, bool):
        return bool(x)
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return float(x)
    if isinstance(x, str):
        return str.__str__(x)
    if isinstance(x, list):
        return [_plain(v, False) for v in x]
    if isinstance(x, dict):
        if not all(type(k) is str for k in x):
            raise _Unequal
        return {k: _plain(v, False) for k, v in x.items()}
    raise _Unequal

args = [json.loads(line) for line in sys.stdin.read().split("\n")]
result_fd = _dup(1)
_dup2(_open_fd("/dev/null", _devnull_flags), 1)  # the solution's own prints are not its answer
_preload()
_guard_like_runner()
code = PRELUDE + "\n\n" + SOURCE
module = types.ModuleType("tmp_sol", "")
exec(code, module.__dict__)
target = module.Solution() if "class Solution" in code else module
method = getattr(target, FUNC_NAME)
_arm()
start = time.perf_counter()
try:
    result = method(*args)
finally:
    elapsed = time.perf_counter() - start
    _disarm()
    _report("elapsed", elapsed)
try:
    sys.set_int_max_str_digits(0)
    payload = json.dumps(_plain(result, True))
except (_Unequal, ValueError, TypeError, RecursionError):
    payload = json.dumps({"geopd_unequal": type(result).__name__})
    _report("unequal", type(result).__name__)
_write(result_fd, ("\n" + MARK + "result " + payload + "\n").encode())
'''

_MARK = "\x00geopd:"


def _fill(template: str, **values: str) -> str:
    for key, value in values.items():
        template = template.replace(f"__{key}__", repr(value))
    return template


def stdin_program(code: str, timeout_s: float = TIMEOUT_S) -> str:
    """The sandbox program that runs `code` on its stdin the way the runner does."""
    return _fill(_STDIN_PROGRAM, SOURCE=code, PRELUDE=PRELUDE, TIMEOUT=float(timeout_s))


def functional_program(code: str, func_name: str, timeout_s: float = TIMEOUT_S) -> str:
    """The sandbox program that calls `func_name` with the JSON lines on its stdin."""
    return _fill(_FUNCTIONAL_PROGRAM, SOURCE=code, PRELUDE=PRELUDE, FUNC_NAME=func_name,
                 TIMEOUT=float(timeout_s))


def _markers(text: str) -> dict:
    found = {}
    for line in text.split("\n"):
        if line.startswith(_MARK):
            key, _, value = line[len(_MARK):].partition(" ")
            found[key] = value
    return found


def _strip_markers(text: str) -> str:
    return "\n".join(line for line in text.split("\n") if not line.startswith(_MARK))


_ERROR_CODES = {"passed": 1, "wrong_answer": -2, "timeout": -3, "runtime_error": -4, "memory": -4,
                "output_limit": -4, "sandbox_error": -5}


def _verdict(run: sandbox.RunResult, timeout_s: float, check) -> dict:
    marks = _markers(run.stderr)
    elapsed = float(marks["elapsed"]) if "elapsed" in marks else None
    alarmed = run.status == "killed" and run.returncode == -signal.SIGALRM
    if run.status == "timeout" or alarmed or (elapsed is not None and elapsed > timeout_s):
        verdict = "timeout"
    elif run.status != "ok":
        verdict = run.status if run.status in _ERROR_CODES else "runtime_error"
    else:
        verdict = "passed" if check(run) else "wrong_answer"
    return {"passed": verdict == "passed", "verdict": verdict, "error_code": _ERROR_CODES[verdict],
            "elapsed_s": elapsed, "wall_s": round(run.wall_s, 4),
            "stderr": _strip_markers(run.stderr).strip()[-2000:] if verdict != "passed" else ""}


def _sandbox_kwargs(timeout_s: float, overrides: dict) -> dict:
    kwargs = {**SANDBOX_DEFAULTS, **overrides}
    kwargs["timeout_s"] = timeout_s + STARTUP_GRACE_S
    return kwargs


def run_stdin_test(code: str, test_input: str, expected: str, *, timeout_s: float = TIMEOUT_S,
                   **sandbox_kwargs) -> dict:
    run = sandbox.run_program(stdin_program(code, timeout_s), test_input, **_sandbox_kwargs(timeout_s, sandbox_kwargs))
    return _verdict(run, timeout_s, lambda r: check_stdin(r.stdout, expected))


def run_functional_test(code: str, func_name: str, test_input: str, expected: str, *,
                        timeout_s: float = TIMEOUT_S, **sandbox_kwargs) -> dict:
    run = sandbox.run_program(functional_program(code, func_name, timeout_s), test_input,
                              **_sandbox_kwargs(timeout_s, sandbox_kwargs))

    def check(r):
        result = _markers(r.stdout).get("result")
        return result is not None and check_functional(result, expected)

    return _verdict(run, timeout_s, check)


def private_tests(problem: dict) -> list[dict]:
    private = problem.get("private_test_cases") or []
    return private if isinstance(private, list) else decode_private_tests(private)


def tests_of(problem: dict) -> list[dict]:
    """Public then private tests (decoded if still encoded), the runner's order."""
    return list(problem.get("public_test_cases") or []) + private_tests(problem)


def grade_problem(problem: dict, code: str | None, timeout_s: float = TIMEOUT_S, **sandbox_kwargs) -> dict:
    """Run `code` (already extracted) on the problem's tests in order, stopping at the
    first failure. Returns {"passed", "results": per-test verdicts, "n_tests"}."""
    tests = tests_of(problem)
    if code is None:
        return {"passed": False, "results": [], "n_tests": len(tests), "error": "no code block"}
    if not tests:
        raise UserError(f"LiveCodeBench problem {problem.get('question_id', '?')} has no tests")
    func_name = (problem.get("metadata") or {}).get("func_name")
    results = []
    for test in tests:
        if func_name:
            r = run_functional_test(code, func_name, test["input"], test["output"], timeout_s=timeout_s,
                                    **sandbox_kwargs)
        else:
            r = run_stdin_test(code, test["input"], test["output"], timeout_s=timeout_s, **sandbox_kwargs)
        results.append(r)
        if not r["passed"]:
            break
    passed = len(results) == len(tests) and all(r["passed"] for r in results)
    return {"passed": passed, "results": results, "n_tests": len(tests)}


def grade_response(problem: dict, response: str, timeout_s: float = TIMEOUT_S, **sandbox_kwargs) -> dict:
    """extract_code, then grade_problem; the dict also carries the extracted code."""
    code = extract_code(response)
    graded = grade_problem(problem, code, timeout_s, **sandbox_kwargs)
    graded["code"] = code
    return graded


def grade_responses(problems: list[dict], responses: list[list[str]], *, timeout_s: float = TIMEOUT_S,
                    workers: int = 2, **sandbox_kwargs) -> list[list[dict]]:
    """grade_response for every sample of every problem, `workers` sandboxes at a time."""
    if len(problems) != len(responses):
        raise ValueError(f"{len(problems)} problems but {len(responses)} lists of responses")

    def one(i):
        # One problem per job: its tests are decoded once, and only `workers` problems'
        # tests are in memory at a time.
        problem = dict(problems[i], private_test_cases=private_tests(problems[i]))
        return [grade_response(problem, r, timeout_s, **sandbox_kwargs) for r in responses[i]]

    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, range(len(problems))))
    return [one(i) for i in range(len(problems))]


def pass_at_1(results: Iterable) -> float:
    """Mean over problems of (correct samples / samples). Each problem's entry is a list
    of booleans or of grade dicts (their "passed")."""
    per_problem = []
    for samples in results:
        flags = [s["passed"] if isinstance(s, dict) else bool(s) for s in samples]
        if not flags:
            raise ValueError("a problem with no graded samples has no pass@1")
        per_problem.append(sum(flags) / len(flags))
    if not per_problem:
        raise ValueError("pass@1 of no problems")
    return sum(per_problem) / len(per_problem)
