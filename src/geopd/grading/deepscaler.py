"""The "binary DeepScaleR math accuracy" reward of the paper's RLVR runs, as slime computes it.

The paper trains RLVR (and the alpha-mix's reward half) with slime's `deepscaler` reward
(slime/rollout/rm_hub/deepscaler.py and math_utils.py, from DeepScaleR, whose grader is
PRM800K's). This module is an independent implementation of the same semantics, checked
against slime's code on a table of cases (tests/test_deepscaler.py):

1. The solution is the text after the LAST "</think>"; failing that, the text between the FIRST
   and SECOND "###Response"; failing both, the reward is 0 (an answer inside the thinking, or a
   response without a thinking block, earns nothing).
2. Its answer is the content of the last `\\boxed{...}` (or, where no "\\boxed" occurs, the last
   `\\fbox` whose braced text must still start with "\\boxed{", so an \\fbox answer earns 0);
   braces are matched by counting, from the "\\boxed" to the brace that closes its first group.
   No answer: 0.
3. The label: empty -> 0; a label containing "\\boxed" is reduced to its boxed content the same
   way (no content: 0).
4. Correct (reward 1) when Hendrycks' MATH normalisation makes the two strings equal, or when
   the PRM800K normalisation makes them equal or sympy proves the difference zero element by
   element (tuples and intervals element-wise; a reduced fraction or an integer in the label
   must be matched exactly, not up to simplification). Else 0.

Differences from slime, none of which changes a reward it returns: this function never raises
(slime asserts on a label that is not str/int/float, and its sympy call has no time limit); a
sympy check that does not finish in `SYMPY_SECONDS` counts as "not equal" where slime would wait.

Evaluation does not use this grader: benchmarks are graded with math-verify (geopd.grading.math),
as the paper's evaluation harness does.
"""
from __future__ import annotations

import re
import signal
import threading

SYMPY_SECONDS = 5.0

_SOLUTION_MARKERS = ("</think>", "###Response")


# ---- the answer ------------------------------------------------------------------------------

def solution_part(response: str) -> str | None:
    """The part of a response that is graded: after the last </think>, else the segment after
    the first ###Response (up to a second one); None when neither marker is present."""
    if "</think>" in response:
        return response.rsplit("</think>", 1)[1]
    if "###Response" in response:
        return response.split("###Response")[1]
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} of `text` (braces counted), or None."""
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for end in range(start, len(text)):
        ch = text[end]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                whole = text[start:end + 1]
                # "\boxed 5}" or "\fbox{5}" close a brace but are not "\boxed{...}": no answer.
                if whole.startswith("\\boxed{") and whole.endswith("}"):
                    return whole[len("\\boxed{"):-1]
                return None
    return None


def boxed_answer(text: str) -> str | None:
    return last_boxed(text) if "\\boxed" in text else None


# ---- Hendrycks' MATH normalisation (the "mathd" check) ---------------------------------------

def _frac_braces(s: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1{2} -> \\frac{1}{2}; the input unchanged when a \\frac has
    one character after it; IndexError (Hendrycks' code gives up) when it has none."""
    head, *rest = s.split("\\frac")
    out = [head]
    for part in rest:
        out.append("\\frac")
        if part[0] == "{":
            out.append(part)
            continue
        if len(part) < 2:
            return s
        num, den, tail = part[0], part[1], part[2:]
        out.append("{" + num + "}" + (den + tail if den == "{" else "{" + den + "}" + tail))
    return "".join(out)


def _slash_to_frac(s: str) -> str:
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        num, den = int(parts[0]), int(parts[1])
    except ValueError:
        return s
    if s != f"{num}/{den}":
        return s
    return "\\frac{" + str(num) + "}{" + str(den) + "}"


class _Unnormalisable(Exception):
    """Hendrycks' normaliser gives up (two unit suffixes); the raw answer is compared instead."""


def _strip_units(s: str) -> str:
    if "\\text{ " not in s:
        return s
    parts = s.split("\\text{ ")
    if len(parts) != 2:
        raise _Unnormalisable
    return parts[0]


def _sqrt_braces(s: str) -> str:
    if "\\sqrt" not in s:
        return s
    head, *rest = s.split("\\sqrt")
    # "\sqrt" at the very end leaves an empty piece, where Hendrycks' code fails: give up.
    if any(not part for part in rest):
        raise _Unnormalisable
    return head + "".join("\\sqrt" + (part if part[0] == "{" else "{" + part[0] + "}" + part[1:])
                          for part in rest)


def _hendrycks(s: str) -> str:
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")
    s = _strip_units(s)
    s = s.replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]
    s = _sqrt_braces(s)
    s = s.replace(" ", "")
    s = _frac_braces(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _slash_to_frac(s)


def mathd_normalize(answer: str) -> str:
    answer = answer.strip()
    m = re.search(r"^\\text\{(?P<text>.+?)\}$", answer)
    if m is not None:
        answer = m.group("text").strip()
    try:
        return _hendrycks(answer)
    except Exception:  # Hendrycks' normaliser gave up: compare the answer as written
        return answer


def equal_mathd(given: str, truth: str) -> bool:
    return mathd_normalize(truth) == mathd_normalize(given)


# ---- PRM800K normalisation and the sympy check -----------------------------------------------

_UNITS = ("degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour", "day", "week",
          "month", "year", "foot", "feet", "inch", "yard")
_BAD_SUBSTRINGS = ("^{", "^(")
_BAD_REGEXES = (r"\^[0-9]+\^", r"\^[0-9][0-9]+")
_TUPLE_CHARS = "()[]"
_THOUSANDS = re.compile(r"(\d)(,)(\d\d\d)($|\D)")


def _float_or_none(s: str) -> float | None:
    try:
        return float(s)
    except (ValueError, OverflowError, TypeError):
        return None


def _near_int(x: float) -> bool:
    try:
        return abs(x - int(round(x))) <= 1e-7
    except (ValueError, OverflowError):
        return False


def _drop_thousands_commas(s: str) -> str:
    while True:
        nxt = _THOUSANDS.sub("\\1\\3\\4", s)
        if nxt == s:
            return nxt
        s = nxt


def _int_string(s: str) -> bool:
    x = _float_or_none(_drop_thousands_commas(s))
    return x is not None and _near_int(x)


def _latex_to_text(expr: str) -> str:
    import logging

    from pylatexenc import latex2text  # only when an answer holds LaTeX

    # pylatexenc warns on every malformed macro ("\\frac failed its substitution"): one line per
    # graded sample in a training log, and the result is the same either way.
    logging.getLogger("pylatexenc").setLevel(logging.ERROR)

    expr = expr.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac").replace("\\frac", " \\frac")
    expr = latex2text.LatexNodes2Text().latex_to_text(expr)
    for a, b in (("√", "sqrt"), ("π", "pi"), ("∞", "inf"), ("∪", "U"), ("·", "*"), ("×", "*")):
        expr = expr.replace(a, b)
    return expr.strip()


def prm800k_normalize(expr: str) -> str:
    m = re.search(r"^\\text\{(?P<text>.+?)\}$", expr)
    if m is not None:
        expr = m.group("text")
    expr = expr.replace("\\%", "%").replace("\\$", "$").replace("$", "").replace("%", "")
    expr = expr.replace(" or ", " , ").replace(" and ", " , ")
    expr = expr.replace("million", "*10^6").replace("billion", "*10^9").replace("trillion", "*10^12")
    for unit in _UNITS:
        expr = re.sub(rf"{unit}(es)?(s)? *(\^[0-9]+)?", "", expr)
    expr = re.sub(r"\^ *\\circ", "", expr)
    if expr and expr[0] == "{" and expr[-1] == "}":
        expr = expr[1:-1]
    expr = re.sub(",\\\\! *", "", expr)
    x = _float_or_none(expr)
    if x is not None and _near_int(x):
        expr = str(int(round(x)))
    if "\\" in expr:
        try:
            expr = _latex_to_text(expr)
        except Exception:  # pylatexenc rejects some inputs; keep the text as it is, as slime does
            pass
    expr = re.sub("- *", "-", expr)
    expr = re.sub("([0-9]) +([0-9])", "\\1+\\2", expr)  # a mixed number 7 3/4 -> 7+3/4
    expr = expr.replace(" ", "").replace("{", "").replace("}", "").lower()
    if _int_string(expr):
        expr = str(int(float(expr.replace(",", ""))))
    return expr


def _sympy_allowed(expr: str) -> bool:
    letters = {c for c in expr.replace("sqrt", "").replace("frac", "") if c.isalpha()}
    if len(letters) > 2:
        return False
    if any(bad in expr for bad in _BAD_SUBSTRINGS):
        return False
    return not any(re.search(bad, expr) for bad in _BAD_REGEXES)


def _sympy_zero(expr: str) -> bool:
    import sympy  # heavy: sympy only when two answers differ as strings
    from sympy.parsing import sympy_parser

    names = {k: v for k, v in vars(sympy).items() if not k.startswith("_")}
    parsed = sympy_parser.parse_expr(
        expr.replace("^", "**"), local_dict={}, global_dict={"__builtins__": {}, **names},
        transformations=sympy_parser.standard_transformations + (sympy_parser.implicit_multiplication_application,))
    return sympy.simplify(parsed) == 0


class _Timeout(Exception):
    pass


def _with_time_limit(fn, seconds: float) -> bool:
    """fn() or False after `seconds` (SIGALRM where this is the main thread, else no limit)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        return fn()

    def expire(signum, frame):
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn()
    except _Timeout:
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def equal_under_sympy(truth: str, given: str) -> bool:
    expr = f"({truth})-({given})"
    if not _sympy_allowed(expr):
        return False
    try:
        return bool(_with_time_limit(lambda: _sympy_zero(expr), SYMPY_SECONDS))
    except Exception:  # unparsable or unsimplifiable: not equal, as slime
        return False


def _elements(expr: str) -> list[str]:
    """A tuple or interval's elements (thousands commas kept inside numbers), else [expr]."""
    expr = _drop_thousands_commas(expr)
    if not expr:
        return []
    if (len(expr) > 2 and expr[0] in _TUPLE_CHARS and expr[-1] in _TUPLE_CHARS
            and all(ch not in expr[1:-1] for ch in _TUPLE_CHARS)):
        return [e.strip() for e in expr[1:-1].split(",")]
    return [expr]


def _fraction_string(expr: str) -> bool:
    return bool(re.search(r"^-?[0-9]+.?/0*[1-9][0-9]*.?$", expr))


def equal_sympy(given: str, truth: str) -> bool:
    t, g = prm800k_normalize(truth), prm800k_normalize(given)
    if t == g:
        return True
    if not g:
        return False
    t_elems, g_elems = _elements(t), _elements(g)
    if len(t_elems) > 1 and (t[0] != g[0] or t[-1] != g[-1]):
        return False  # (a, b) is not [a, b]
    if len(t_elems) != len(g_elems):
        return False
    for te, ge in zip(t_elems, g_elems):
        if _fraction_string(te) and _fraction_string(ge):
            ok = te == ge  # an unreduced fraction is not the reduced one
        elif _int_string(te) != _int_string(ge):
            ok = False  # an integer must be given as an integer
        else:
            ok = equal_under_sympy(te, ge)
        if not ok:
            return False
    return True


# ---- the reward ------------------------------------------------------------------------------

def _label_answers(label) -> list[str]:
    if not isinstance(label, (str, int, float)):  # slime asserts here; an unusable label earns 0
        return []
    truth = str(label)
    if "\\boxed" in truth:
        boxed = boxed_answer(truth)
        return [] if boxed is None else [boxed]
    return [truth]


def deepscaler_reward(response: str, label) -> float:
    """1.0 if `response` answers `label` under slime's deepscaler rules, else 0.0. Never raises."""
    try:
        if not isinstance(response, str):
            return 0.0
        solution = solution_part(response)
        if solution is None:
            return 0.0
        given = boxed_answer(solution)
        if given is None or label == "":
            return 0.0
        for truth in _label_answers(label):
            if equal_mathd(given, truth) or equal_sympy(given, truth):
                return 1.0
        return 0.0
    except Exception:  # a grader must not take a training step down; an ungradable answer earns 0
        return 0.0
