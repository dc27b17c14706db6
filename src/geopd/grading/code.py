"""Code answers: extract the last fenced code block, run it on its tests in the sandbox, and
judge each test the way LiveCodeBench's official runner does.

One sandboxed interpreter runs all tests of one program (as the official runner does, in
one process): the grader sends test inputs one at a time and times each itself; the
expected outputs never enter the sandbox. This module is the one implementation used by
the miniature code reward and evaluation, DeepCoder-style records and LiveCodeBench
(LiveCodeBench's data and prompt are geopd.data.lcb's; geopd.evaluate.lcb grades with this).

Tests are {"input": str, "output": str}. With `fn_name` they are call-based (LeetCode
style, LiveCodeBench's functional convention): the input is one JSON value per line, the
positional arguments of `fn_name` (a method of `Solution()` when the code says
"class Solution", else a module-level function); the output is the JSON of the expected
return value. Without it, the program reads stdin and its printed output is compared.

What the program gets, per the official runner (lcb_runner/evaluation/testing_util.py):
  stdin    a trailing `if __name__ == '__main__':` block is replaced by its body; every
           top-level statement but imports moves into `def wrapped_function():`, after
           the runner's prelude of star-imports and `sys.setrecursionlimit(50000)`; the
           module ("tmp_sol") is executed once, with its own time limit; each test then
           calls wrapped_function() with sys.stdout a StringIO, sys.stdin the runner's mock
           and open() returning the input; SystemExit ends a test normally.
  call     the prelude and the code, executed once; one Solution() for all tests; a
           returned tuple becomes a list.
  both     the runner's reliability_guard stand-ins (os.kill, shutil.rmtree,
           subprocess.Popen, quit, ... are None; resource, psutil, ... unimportable) and
           sys.set_int_max_str_digits(50000); numpy is imported first when the code
           mentions it (the runner's worker has it loaded).
Judging (in the grader, on bounded input: output is capped by the sandbox, lines and
tokens are compared lazily, numbers as Decimals, JSON with integers as Decimals):
  stdin    output and expected are stripped, split on "\\n", each line stripped; the
           line counts must match; each line must be equal as text, or else as the list
           of Decimals of its tokens (no tolerance beyond that). A comparison that
           raises (a signalling NaN) is a runtime error, as in the runner.
  call     the returned value, sent as strict JSON, must equal json.loads(expected)
           under Python's ==; a value JSON cannot carry exactly (a set, a nested tuple, a
           non-string dict key) is unequal, as it compares unequal there. DeepCoder's TACO
           and PrimeIntellect records say call_match "value-or-first": the APPS runner's
           rule, equal to the stored value or to its first element (CALL_MATCHES).
  time     each test's time is measured by the grader alone, from the input's delivery to
           the arrival of the program's whole reply, less the time the program waited for
           a CPU; over `timeout_s` (6 s) is a timeout. The module's execution has its own
           `timeout_s`. Nothing the program sends can stop the clock.
  order    tests run in order and stop at the first failure.
Verdicts: passed, wrong_answer, timeout, runtime_error, memory, output_limit,
sandbox_error (LiveCodeBench error codes 1, -2, -3, -4, -4, -4, -5).
"""
from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation

from geopd import sandbox

FENCE = "```"
TIMEOUT_S = 6.0
STARTUP_S = 60.0  # interpreter start-up under load, before the first timed step
SANDBOX_DEFAULTS = {"memory_mb": 4096, "max_output_bytes": 64 * 1024 * 1024, "disk_mb": 256}
ERROR_CODES = {"passed": 1, "wrong_answer": -2, "timeout": -3, "runtime_error": -4, "memory": -4,
               "output_limit": -4, "sandbox_error": -5}


def extract_last_code_block(text: str) -> str | None:
    """The lines between the last two lines that contain a ``` fence.

    This is LiveCodeBench's rule: fence lines are found anywhere in a line (so
    "```python" opens and a bare "```" closes), and only the last pair counts. With
    fewer than two fence lines there is no code block and the answer is None."""
    if not text:
        return None
    lines = text.split("\n")
    fences = [i for i, line in enumerate(lines) if FENCE in line]
    if len(fences) < 2:
        return None
    return "\n".join(lines[fences[-2] + 1: fences[-1]])


# ---- comparison (grader side; its input is program output: bounded, lazy, never raising) ------

def _stripped_lines(text: str):
    """text.strip().split("\\n"), each line stripped, one line at a time."""
    text = text.strip()
    start = 0
    while True:
        end = text.find("\n", start)
        if end < 0:
            yield text[start:].strip()
            return
        yield text[start:end].strip()
        start = end + 1


_TOKEN = re.compile(r"\S+")


def _line_verdict(got: str, want: str) -> str:
    """The runner's per-line rule, token by token so that a 20 MB line costs no more
    than its own text: equal as text, or as the lists of Decimals of the tokens. The
    list comparison there raises on a signalling NaN only when both lines are all
    numbers of the same count; so does this."""
    if got == want:
        return "passed"
    g_iter, w_iter = _TOKEN.finditer(got), _TOKEN.finditer(want)
    raised = False
    while True:
        g, w = next(g_iter, None), next(w_iter, None)
        if g is None or w is None:
            if g is not None or w is not None:
                return "wrong_answer"
            return "runtime_error" if raised else "passed"
        try:
            gd, wd = Decimal(g.group()), Decimal(w.group())
        except (InvalidOperation, ValueError):
            return "wrong_answer"
        if raised:
            continue  # the comparison stops there; only validity and count still matter
        try:
            if gd != wd:
                return "wrong_answer"
        except InvalidOperation:
            raised = True


def stdin_verdict(output: str, expected: str) -> str:
    """passed | wrong_answer | runtime_error for a stdin test's printed output."""
    o, e = output.strip(), expected.strip()
    if o.count("\n") != e.count("\n"):
        return "wrong_answer"
    for got, want in zip(_stripped_lines(o), _stripped_lines(e)):
        verdict = _line_verdict(got, want)
        if verdict != "passed":
            return verdict
    return "passed"


def check_stdin(output: str, expected: str) -> bool:
    return stdin_verdict(output, expected) == "passed"


def _json_value(text: str | bytes):
    """json.loads with integers as Decimals: no digit limit, linear time, and the same ==
    against ints, floats and bools as the integers themselves."""
    return json.loads(text, parse_int=Decimal)


# How a call's return value is compared with a test's stored output (a record's `call_match`):
#   exact           LiveCodeBench's runner: equal to json.loads(output);
#   value-or-first  the APPS/TACO runner (testing_util.py's call-based branch, which rllm also
#                   runs for DeepCoder's primeintellect tests): equal to the stored value, or,
#                   when that is a non-empty list, to its first element. TACO and PrimeIntellect
#                   store a call's result wrapped in a one-element list ([v]) as a rule, but not
#                   always; their runner accepts both shapes, so a function that truly returns a
#                   one-element list [x] passes against [[x]] and against [x].
CALL_MATCHES = ("exact", "value-or-first")


def check_functional(result_json: str | bytes, expected: str, call_match: str = "exact") -> bool:
    """`result_json` is the runner's strict JSON of the returned value (a top-level tuple
    already a list); equal iff it equals json.loads(expected) under Python's ==, or (call_match
    "value-or-first") that value's first element when it is a non-empty list."""
    try:
        got, want = _json_value(result_json), _json_value(expected)
        if got == want:
            return True
        return bool(call_match == "value-or-first" and isinstance(want, list) and want and got == want[0])
    except (ValueError, RecursionError, InvalidOperation, UnicodeDecodeError):
        return False


# ---- the runner that serves a program's tests inside the sandbox ---------------------------------

_STAR_MODULES = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
                 "statistics", "itertools", "functools", "operator", "io", "sys", "json", "builtins", "typing")
_PLAIN_MODULES = _STAR_MODULES[:16]
PRELUDE = ("".join(f"from {m} import *\n" for m in _STAR_MODULES)
           + "".join(f"import {m}\n" for m in _PLAIN_MODULES)
           + "sys.setrecursionlimit(50000)\n")

_RUNNER = r'''
import sys
sys.set_int_max_str_digits(50000)
import ast, builtins, io, json, os, types
SOURCE = __SOURCE__
PRELUDE = __PRELUDE__
FUNC_NAME = __FUNC_NAME__

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

def _error(exc):
    return "%s: %s" % (type(exc).__name__, str(exc)[:2000])

send({"ready": True})
if recv() is None:
    raise SystemExit(0)
# Load: the module runs once, timed on its own, as the runner's compile_code.
target = None
try:
    if "numpy" in SOURCE:  # the runner's worker has numpy loaded before its guard
        try:
            import numpy
        except ImportError:
            pass
    _guard_like_runner()
    if FUNC_NAME is None:
        code = _as_function(_strip_main_guard(SOURCE))
        name = "wrapped_function"
    else:
        code = PRELUDE + "\n\n" + SOURCE
        name = FUNC_NAME
    module = types.ModuleType("tmp_sol", "")
    exec(code, module.__dict__)
    target = getattr(module.Solution() if "class Solution" in code else module, name)
    loaded = {"ok": True}
except Exception as exc:
    loaded = {"ok": False, "error": _error(exc)}
send(loaded)
if target is None:
    raise SystemExit(0)

while True:
    req = recv()
    if req is None:
        break
    data = req[1].decode("utf-8")
    if FUNC_NAME is None:
        captured = io.StringIO()
        saved = sys.stdout, sys.stdin, builtins.open
        sys.stdout, sys.stdin, builtins.open = captured, _Stdin(data), (lambda *a, **k: _InputFile(data))
        reply = {"status": "ok"}
        try:
            target()
        except SystemExit:
            pass
        except Exception as exc:
            reply = {"status": "error", "error": _error(exc)}
        finally:
            sys.stdout, sys.stdin, builtins.open = saved
        send(reply, captured.getvalue().encode("utf-8", "surrogatepass"))
        del captured
        continue
    reply, body = {"status": "ok"}, b""
    try:
        args = [json.loads(line) for line in data.split("\n")]
        result = target(*args)
    except Exception as exc:
        reply = {"status": "error", "error": _error(exc)}
    if reply["status"] == "ok":
        try:
            body = json.dumps(_plain(result, True)).encode()
        except (_Unequal, ValueError, TypeError, RecursionError):
            reply = {"status": "unequal", "type": type(result).__name__}
        result = None
    send(reply, body)
'''


def runner_source(code: str, fn_name: str | None = None) -> str:
    """The sandboxed program that loads `code` once and serves its tests (see module doc)."""
    values = {"SOURCE": code, "PRELUDE": PRELUDE, "FUNC_NAME": fn_name}
    text = _RUNNER
    for key, value in values.items():
        text = text.replace(f"__{key}__", repr(value))
    return sandbox.RUNNER_LIB + text


# ---- grading ------------------------------------------------------------------------------------

def _failure(session: sandbox.Session, reply: sandbox.Reply) -> str:
    if reply.status in ("timeout", "output_limit"):
        return reply.status
    if reply.status == "protocol":
        return "runtime_error"
    end = session.end_status()  # the process ended during the test
    if end in ("memory", "timeout", "output_limit"):
        return end
    return "runtime_error"


def _result(verdict: str, reply: sandbox.Reply | None, error: str = "") -> dict:
    return {"passed": verdict == "passed", "verdict": verdict, "error_code": ERROR_CODES[verdict],
            "elapsed_s": None if reply is None or reply.elapsed_s is None else round(reply.elapsed_s, 4),
            "error": error[-2000:]}


def grade_tests(code: str, tests: list[dict], *, fn_name: str | None = None, timeout_s: float = TIMEOUT_S,
                stop_at_first_failure: bool = True, call_match: str = "exact", **sandbox_kwargs) -> dict:
    """Run `code` on `tests` in one sandboxed process. Returns {"results": per-test
    verdict dicts (up to the first failure), "isolation": the sandbox's layers,
    "isolated": bool, "load": the module load's verdict dict}."""
    kwargs = {**SANDBOX_DEFAULTS, **sandbox_kwargs}
    results: list[dict] = []
    with sandbox.Session(runner_source(code, fn_name), timeout_s=timeout_s, n_requests=len(tests) + 1,
                         startup_s=STARTUP_S, **kwargs) as session:
        out = {"results": results, "isolation": list(session.isolation),
               "isolated": sandbox.is_isolated(session.isolation)}
        if not session.ready:  # the interpreter did not start: every test fails with it
            out["load"] = _result("sandbox_error", None, session.stderr)
            results.append(out["load"])
            return out
        reply = session.request({"op": "load"}, timeout_s=timeout_s)
        if reply.status != "ok":
            load = _result(_failure(session, reply), reply, session.stderr)
        elif not (reply.header or {}).get("ok"):
            load = _result("runtime_error", reply, str((reply.header or {}).get("error", "")))
        elif reply.elapsed_s > timeout_s:
            load = _result("timeout", reply)
        else:
            load = _result("passed", reply)
        out["load"] = load
        if not load["passed"]:
            # The runner fails every test when the module cannot be loaded; say so on the first.
            results.append(dict(load, passed=False, verdict="runtime_error" if load["verdict"] == "passed"
                                else load["verdict"]))
            return out
        for test in tests:
            reply = session.request({"op": "test"}, test["input"].encode("utf-8"), timeout_s=timeout_s)
            header = reply.header or {}
            if reply.status != "ok":
                result = _result(_failure(session, reply), reply, session.stderr)
            elif reply.elapsed_s > timeout_s:
                result = _result("timeout", reply)
            elif header.get("status") == "error":
                result = _result("runtime_error", reply, str(header.get("error", "")))
            elif fn_name is None:
                text = reply.body.decode("utf-8", "replace")
                result = _result(stdin_verdict(text, test["output"]), reply)
            elif header.get("status") == "unequal":
                result = _result("wrong_answer", reply, f"a {header.get('type')} compares unequal")
            else:
                ok = check_functional(reply.body, test["output"], call_match)
                result = _result("passed" if ok else "wrong_answer", reply)
            results.append(result)
            if stop_at_first_failure and not result["passed"]:
                break
        out["isolation"] = list(session.isolation)
        out["isolated"] = sandbox.is_isolated(session.isolation)
    return out


def grade_code(response: str, tests: list[dict], *, fn_name: str | None = None, timeout_s: float = TIMEOUT_S,
               call_match: str = "exact", **sandbox_kwargs) -> bool:
    """True iff the response's last code block passes every test (stdin tests, or
    call-based ones when `fn_name` is given, compared per `call_match`), in order, stopping at
    the first failure."""
    code = extract_last_code_block(response)
    if code is None or not tests:
        return False
    graded = grade_tests(code, tests, fn_name=fn_name, timeout_s=timeout_s, call_match=call_match, **sandbox_kwargs)
    results = graded["results"]
    return len(results) == len(tests) and all(r["passed"] for r in results)
