"""Math answers: the last \\boxed{...} of a response, compared with the gold answer.

Used for every math reward and benchmark, miniature and paper scale (AIME included):

- The answer is the content of the LAST \\boxed{...} (or \\fbox{...}, or "\\boxed 5"). A
  number anywhere else in the response is not an answer; a response whose last \\boxed is
  cut off before its closing brace has no answer.
- With `integer_range` (AIME: (0, 999)) the boxed content must be an integer in that range
  ("042" counts as 42).
- Otherwise two plain integers are compared directly (the miniature world's case, ~5 microseconds
  a call) and anything else by math-verify: gold parsed first, then the prediction, then
  `verify(gold, prediction)`, in that order because math-verify's comparison is not symmetric.
  Both sides are wrapped as "\\boxed{...}" so the same extraction rule reads them.

math-verify's own timeouts use signal.alarm(), which fails off the main thread and cancels
any timer the caller had (pytest-timeout's, for one). Here they are switched off and replaced:
on the main thread by an interval timer that restores the caller's timer and handler
afterwards; on any other thread the comparison runs in a helper process
(`python -m geopd.grading.math`, started once and replaced if it overruns). A comparison
that overruns `timeout_s` grades False. Either way a call never hangs.

One-time costs (importing math-verify, sympy and the LaTeX parser, and their first
parse, ~1-2 s cold) are paid once per process by `warm_up()`, outside any timer: the
timer bounds the comparison only, so a correct answer is not graded 0 on a cold process.
"""
from __future__ import annotations

import atexit
import json
import logging
import re
import select
import signal
import subprocess
import sys
import threading
import time

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_INT = re.compile(r"[+-]?\d+")


# ---- extraction ------------------------------------------------------------------------------

def last_boxed(text: str | None) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...} in `text` (nested and escaped braces
    handled, "\\boxed {x}" and "\\boxed x" accepted), or None if there is none or the last one
    is never closed."""
    if not text:
        return None
    matches = list(_BOX.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    i = start
    while i < len(text) and text[i].isspace():
        i += 1
    if i < len(text) and text[i] == "{":
        return _braced(text, i)
    if i > start:  # "\boxed 5": the next run of non-space characters, up to a "$"
        m = re.match(r"[^\s$]+", text[i:])
        return m.group(0) if m else None
    return None


def _braced(text: str, open_at: int) -> str | None:
    depth, j = 0, open_at
    while j < len(text):
        c = text[j]
        if c == "\\":  # \{ \} \\ do not open or close a group
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:j]
        j += 1
    return None


def _strip_math(s: str) -> str:
    s = s.strip()
    while len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s[1:-1].strip()
    return s


def _gold_text(gold) -> str:
    g = str(gold).strip()
    if _BOX.search(g):
        g = last_boxed(g) or g
    return _strip_math(g)


# ---- grading ---------------------------------------------------------------------------------

def grade_math(response: str, gold, *, integer_range: tuple[int, int] | None = None,
               timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """True iff the last \\boxed{} of `response` is equivalent to `gold` (see module doc)."""
    content = last_boxed(response)
    if content is None:
        return False
    pred = _strip_math(content)
    gold_s = _gold_text(gold)
    if not pred or not gold_s:
        return False
    if integer_range is not None:
        lo, hi = integer_range
        value = _as_integer(pred, timeout_s)
        if value is None or not lo <= value <= hi:
            return False
        if _INT.fullmatch(gold_s):
            return value == int(gold_s)
    elif _INT.fullmatch(pred) and _INT.fullmatch(gold_s):
        return int(pred) == int(gold_s)
    warm_up()
    return _bounded(_verify, (gold_s, pred), timeout_s)


def _as_integer(pred: str, timeout_s: float) -> int | None:
    """The integer a boxed answer states: digits ("042" -> 42), or an expression math-verify
    evaluates to a sympy Integer ("\\frac{84}{2}"). Decimals such as "42.0" are not integers."""
    if _INT.fullmatch(pred):
        return int(pred)
    warm_up()
    return _bounded(_integer_value, (pred,), timeout_s)


_WARM = []


def warm_up() -> None:
    """Import math-verify and its parsers and run one comparison, untimed, once per process
    (on the main thread: other threads' calls go to the helper process, which warms up
    before it says it is ready)."""
    if _WARM or threading.current_thread() is not threading.main_thread():
        return
    _verify("\\frac{1}{2}", "0.5")
    _integer_value("\\frac{84}{2}")
    _WARM.append(True)


# ---- math-verify, bounded in time --------------------------------------------------------------

def _configs():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    # boxed_match_priority=0: the wrapper's \boxed is what is read, before any other pattern.
    return (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())


def _parse(s: str) -> list:
    import math_verify.grader
    import math_verify.parser
    from math_verify import parse

    # Our timer replaces math-verify's (see module doc); silence its "timeout disabled" warning.
    math_verify.parser.TIMEOUT_WARNING_SHOWN = math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    return parse("\\boxed{" + s + "}", list(_configs()), parsing_timeout=None)


def _verify(gold: str, pred: str) -> bool:
    from math_verify import verify

    gold_parsed = _parse(gold)
    if not gold_parsed:
        return False
    pred_parsed = _parse(pred)
    if not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _integer_value(pred: str) -> int | None:
    import sympy

    parsed = _parse(pred)
    if parsed and isinstance(parsed[0], sympy.Integer):
        return int(parsed[0])
    return None


class _Overrun(BaseException):
    """Raised by our timer. A BaseException, so math-verify's `except Exception` handlers
    (which would swallow it and carry on without a timer) let it through."""


def _bounded(fn, args: tuple, timeout_s: float):
    """fn(*args) within timeout_s seconds; on overrun a falsy result (False / None)."""
    on_main = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if not on_main:
        return _HELPER.call(fn.__name__, args, timeout_s)
    try:
        return _with_timer(fn, args, timeout_s)
    except _Overrun:
        logger.warning("math grading gave up after %.1f s on %r", timeout_s, args[-1][:200])
        return None if fn is _integer_value else False


def _with_timer(fn, args: tuple, seconds: float):
    armed = [True]

    def fire(signum, frame):
        if armed[0]:
            raise _Overrun()

    previous_handler = signal.signal(signal.SIGALRM, fire)
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        return fn(*args)
    finally:
        # The one-shot timer may fire between fn's return and this point; a late _Overrun
        # must not skip the restoring below, so disarm first, retrying if it lands here.
        while armed[0]:
            try:
                armed[0] = False
            except _Overrun:
                pass
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler if previous_handler is not None else signal.SIG_DFL)
        if previous_delay > 0:  # the caller's timer keeps its deadline (fires now if it passed)
            left = previous_delay - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), previous_interval)


_FUNCTIONS = {"_verify": _verify, "_integer_value": _integer_value}


class _Helper:
    """One helper process that grades for non-main threads, one request at a time."""

    STARTUP_S = 120.0

    def __init__(self):
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "geopd.grading.math"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        if self._read(self.STARTUP_S) != "ready":
            self._kill()
            raise RuntimeError("the math grading helper process did not start")

    def _read(self, timeout_s: float) -> str | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return line.strip() if line else None

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def call(self, name: str, args: tuple, timeout_s: float):
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            self.proc.stdin.write(json.dumps({"fn": name, "args": list(args), "timeout_s": timeout_s}) + "\n")
            self.proc.stdin.flush()
            # The helper enforces timeout_s itself; the margin only covers work a signal
            # cannot interrupt (a long C call), after which the helper is replaced.
            line = self._read(timeout_s + 5.0)
            if line is None:
                logger.warning("math grading helper overran %.1f s; restarting it", timeout_s)
                self._kill()
                return None if name == "_integer_value" else False
            return json.loads(line)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()  # the helper exits at end of input
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._kill()
        self.proc = None


_HELPER = _Helper()
atexit.register(_HELPER.close)


def _serve() -> None:
    """The helper process: one JSON request per stdin line, one JSON result per stdout line."""
    warm_up()
    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        result = _bounded(_FUNCTIONS[req["fn"]], tuple(req["args"]), float(req["timeout_s"]))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    # Keep the parent's Ctrl-C from killing the helper mid-reply; it exits when stdin closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _serve()
