"""The miniature world's verifiable tasks and pretraining corpus, generated from a seed.

Everything here uses only `random.Random` instances seeded from strings (deterministic across
processes and Python versions) and a keyed hash for the train/test split:

- math: "What is a+b?" with operands of mixed length (1 to max_digits digits, default 3, the
  length drawn first so short sums are common; uniform 3-digit sums leave a long zero-accuracy
  plateau on carries).
  Answered "<think>\\n</think>\\n\\boxed{N}".
- code: read two integers from one stdin line and print an expression of them; answered by
  a two-line Python program in a ```python block, checked against stdin/stdout tests.

Train and test are disjoint for every seed: a math problem belongs to the split named by a
hash of its unordered operand pair (so "3+5" and "5+3" share a split), a code problem to the
split named by a hash of its reference program (so no test program appears in training under
another phrasing). The pretraining corpus draws only from the train side of both.
"""
from __future__ import annotations

import hashlib
import random

from geopd.errors import UserError

SPLITS = ("train", "test")
TEST_SHARE = 10  # one key in TEST_SHARE goes to the test split
THINK_PREFIX = "<think>\n</think>\n"
DIGITS = "0123456789"


def split_of(key: str) -> str:
    """The split a problem key belongs to; independent of any seed."""
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8, person=b"geopd-split").digest(), "big")
    return "test" if h % TEST_SHARE == 0 else "train"


def _check(n: int, split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}' (expected one of {list(SPLITS)})")
    if n < 0:
        raise UserError(f"number of problems must be >= 0, got {n}")


# ---- math -----------------------------------------------------------------------------------

MAX_DIGITS = 3


def _check_digits(max_digits: int) -> None:
    if not 1 <= max_digits <= 9:
        raise UserError(f"max_digits must be between 1 and 9, got {max_digits}")


def _operand(rng: random.Random, max_digits: int = MAX_DIGITS) -> int:
    digits = rng.choice(range(1, max_digits + 1))
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randrange(low, 10 ** digits)


def math_key(a: int, b: int) -> str:
    return f"{min(a, b)}+{max(a, b)}"


def _math_pair(rng: random.Random, split: str, max_digits: int = MAX_DIGITS) -> tuple[int, int]:
    while True:
        a, b = _operand(rng, max_digits), _operand(rng, max_digits)
        if split_of(math_key(a, b)) == split:
            return a, b


def test_pairs(max_digits: int) -> int:
    """Ordered pairs (a, b) in the test split with operands of up to `max_digits` digits."""
    top = 10 ** max_digits
    return sum(1 if a == b else 2 for a in range(top) for b in range(a, top) if split_of(math_key(a, b)) == "test")


def math_problems(n: int, seed: int, split: str, max_digits: int = MAX_DIGITS) -> list[dict]:
    """`n` addition problems {"id", "task": "math", "prompt", "answer"} of one split, operands
    of 1 to `max_digits` digits.

    The list for a larger n extends the list for a smaller one. Test problems are distinct;
    train problems are i.i.d. draws, so small sums recur as often as the distribution says."""
    _check(n, split)
    _check_digits(max_digits)
    if split == "test" and max_digits <= 2:  # few enough pairs to run out of (~1,000 at 2 digits)
        pairs = test_pairs(max_digits)
        if n > pairs:
            raise UserError(f"math: asked for {n} test problems but only {pairs} distinct ones exist "
                            f"with operands of up to {max_digits} digits")
    rng = random.Random(f"math:{split}:{seed}")
    seen: set[tuple[int, int]] = set()
    out: list[dict] = []
    while len(out) < n:
        a, b = _math_pair(rng, split, max_digits)
        if split == "test":
            if (a, b) in seen:
                continue
            seen.add((a, b))
        out.append({"id": f"math-{split}-{len(out):06d}", "task": "math",
                    "prompt": f"What is {a}+{b}?", "answer": str(a + b)})
    return out


def math_response(answer: str) -> str:
    return f"{THINK_PREFIX}\\boxed{{{answer}}}"


def corrupt_digit(number: str, rng: random.Random) -> str:
    """`number` with one digit replaced by a different digit (never a new leading zero)."""
    positions = [i for i, c in enumerate(number) if c in DIGITS]
    if not positions:
        raise ValueError(f"no digit to corrupt in {number!r}")
    i = rng.choice(positions)
    leading = i == positions[0] and len(positions) > 1
    choices = [d for d in DIGITS if d != number[i] and not (leading and d == "0")]
    return number[:i] + rng.choice(choices) + number[i + 1:]


def math_demo(problem: dict, rng: random.Random, corrupt_prob: float) -> str:
    """The demonstration for an SFT data set; with probability `corrupt_prob` the answer has
    one wrong digit (a converged-but-noisy student anchor is what OPD and RLVR can improve).

    Draws from `rng` the same way whatever `corrupt_prob` is, so clean and noisy demo sets
    built from one seed differ only in the corrupted answers."""
    answer = str(problem["answer"])
    corrupt = rng.random() < corrupt_prob
    wrong = corrupt_digit(answer, rng)
    return math_response(wrong if corrupt else answer)


# ---- code -----------------------------------------------------------------------------------

NAMES = (("a", "b"), ("x", "y"), ("m", "n"), ("p", "q"))
# (expression template, whether "*K" needs parentheses around it)
BASES = (("{u}+{v}", True), ("{u}-{v}", True), ("{v}-{u}", True), ("{u}*{v}", False),
         ("max({u},{v})", False), ("min({u},{v})", False), ("abs({u}-{v})", False))
PHRASINGS = ("Read {u} {v} from stdin, print {e}.",
             "Given {u} {v} on one line, print {e}.",
             "Input: {u} {v}. Output: {e}.")
TESTS_PER_PROBLEM = 4
_SAFE_BUILTINS = {"max": max, "min": min, "abs": abs}


def _expressions(u: str, v: str) -> list[str]:
    out = []
    for template, needs_parens in BASES:
        base = template.format(u=u, v=v)
        out.append(base)
        out += [f"{base}+{k}" for k in range(1, 10)]
        out += [f"{base}-{k}" for k in range(1, 10)]
        out += [f"({base})*{k}" if needs_parens else f"{base}*{k}" for k in range(2, 10)]
    return out


def program(u: str, v: str, expr: str) -> str:
    return f"{u},{v}=map(int,input().split())\nprint({expr})"


def code_pool(split: str) -> list[tuple[str, str, str, int]]:
    """Every (u, v, expression, phrasing index) whose program belongs to `split`, in a fixed order."""
    _check(0, split)
    return [(u, v, e, k) for u, v in NAMES for e in _expressions(u, v)
            if split_of("code:" + program(u, v, e)) == split for k in range(len(PHRASINGS))]


def _evaluate(u: str, v: str, expr: str, a: int, b: int) -> int:
    return eval(expr, {"__builtins__": _SAFE_BUILTINS}, {u: a, v: b})  # our own expression strings


def _stdout(u: str, v: str, expr: str, a: int, b: int) -> str:
    return f"{_evaluate(u, v, expr, a, b)}\n"


def _tests(u: str, v: str, expr: str, rng: random.Random) -> list[dict]:
    pairs = []
    while len(pairs) < TESTS_PER_PROBLEM:
        a, b = rng.randint(-20, 99), rng.randint(-20, 99)
        # The first two tests order the operands both ways, so max/min/a-b/b-a are told apart.
        if (len(pairs) == 0 and a <= b) or (len(pairs) == 1 and a >= b):
            continue
        pairs.append((a, b))
    return [{"input": f"{a} {b}\n", "output": _stdout(u, v, expr, a, b)} for a, b in pairs]


def code_problems(n: int, seed: int, split: str) -> list[dict]:
    """`n` code problems {"id", "task": "code", "prompt", "solution", "tests"} of one split.

    The pool of distinct problems is finite (~2,000 train, ~250 test prompts). The train split
    cycles through reshuffled copies when n exceeds it (fresh test inputs each time); the test
    split refuses, since a repeated test problem would be counted twice.

    There is deliberately no "answer" key: rewards and graders take records with an "answer"
    for math problems."""
    _check(n, split)
    pool = code_pool(split)
    if split == "test" and n > len(pool):
        raise UserError(f"code: asked for {n} test problems but only {len(pool)} distinct ones exist")
    rng = random.Random(f"code:{split}:{seed}")
    out: list[dict] = []
    order: list[tuple[str, str, str, int]] = []
    while len(out) < n:
        if not order:
            order = list(pool)
            rng.shuffle(order)
        u, v, expr, k = order.pop()
        out.append({"id": f"code-{split}-{len(out):06d}", "task": "code",
                    "prompt": PHRASINGS[k].format(u=u, v=v, e=expr),
                    "solution": program(u, v, expr), "tests": _tests(u, v, expr, rng)})
    return out


def code_response(problem: dict, solution: str | None = None) -> str:
    return f"{THINK_PREFIX}```python\n{solution or problem['solution']}\n```"


def _parse_program(solution: str) -> tuple[str, str, str]:
    first, second = solution.split("\n")
    u, v = first.split("=")[0].split(",")
    return u, v, second[len("print("):-1]


def _fails_a_test(u: str, v: str, expr: str, tests: list[dict]) -> bool:
    return any(_stdout(u, v, expr, *map(int, t["input"].split())) != t["output"] for t in tests)


def corrupt_program(problem: dict, rng: random.Random) -> str:
    """The reference program with one wrong constant: a digit of the expression replaced
    (corrupt_digit), or "+d" appended to an expression that has no digit. Redrawn until the
    program fails at least one of the problem's tests, so a corrupted demo is always wrong."""
    u, v, expr = _parse_program(problem["solution"])
    for _ in range(100):
        if any(c in DIGITS for c in expr):
            wrong = corrupt_digit(expr, rng)
        else:
            wrong = f"{expr}+{rng.randint(1, 9)}"
        if _fails_a_test(u, v, wrong, problem["tests"]):
            return program(u, v, wrong)
    raise ValueError(f"could not corrupt {problem['solution']!r} into a failing program")


def code_demo(problem: dict, rng: random.Random, corrupt_prob: float) -> str:
    """As math_demo, for code: with probability `corrupt_prob` the demonstrated program has
    one wrong constant and fails the tests. Draws from `rng` the same way whatever
    `corrupt_prob` is."""
    corrupt = rng.random() < corrupt_prob
    wrong = corrupt_program(problem, rng)
    return code_response(problem, wrong if corrupt else None)


# ---- pretraining corpus ---------------------------------------------------------------------

MAX_DOC_CHARS = 60  # documents fit the 64-token pretraining window with the EOS token


def _facts_doc(rng: random.Random, max_digits: int = MAX_DIGITS) -> str:
    facts: list[str] = []
    for _ in range(rng.randint(2, 5)):
        a, b = _math_pair(rng, "train", max_digits)
        fact = f"{a}+{b}={a + b}"
        if len("\n".join(facts + [fact])) > MAX_DOC_CHARS:
            break
        facts.append(fact)
    return "\n".join(facts)


def _sequence_doc(rng: random.Random) -> str:
    step = rng.choice((1, 1, 1, 2, 5, 10, rng.randint(3, 9)))
    x = rng.randrange(0, 990)
    terms: list[str] = []
    while len(" ".join(terms + [str(x)])) <= MAX_DOC_CHARS and len(terms) < 12:
        terms.append(str(x))
        x += step
    return " ".join(terms)


def _code_doc(rng: random.Random, pool: list) -> str:
    u, v, expr, _ = rng.choice(pool)
    text = program(u, v, expr)
    if rng.random() < 0.5 and len(text) + len(expr) + 3 <= MAX_DOC_CHARS:
        text = f"# {expr}\n{text}"
    return text


def pretrain_corpus(n: int, seed: int, max_digits: int = MAX_DIGITS) -> list[str]:
    """`n` short documents for language-model pretraining: addition facts ("37+45=82", a few
    per document, operands of up to `max_digits` digits), counting sequences ("17 18 19 20")
    and the code task's programs; none in the answer format, which SFT teaches. Only
    train-split sums and programs are used."""
    if n < 0:
        raise UserError(f"corpus size must be >= 0, got {n}")
    _check_digits(max_digits)
    rng = random.Random(f"corpus:{seed}")
    pool = code_pool("train")
    docs = []
    for _ in range(n):
        r = rng.random()
        if r < 0.6:
            docs.append(_facts_doc(rng, max_digits))
        elif r < 0.75:
            docs.append(_sequence_doc(rng))
        else:
            docs.append(_code_doc(rng, pool))
    return docs
