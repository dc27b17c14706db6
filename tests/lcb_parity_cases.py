"""Cases on which geopd's code grader is compared with LiveCodeBench's official runner.

Each case: (name, code, tests, fn_name, official, difference). `tests` is a list of
(input, expected output); `official` is the per-test result list the official runner
(lcb_runner/evaluation/compute_code_generation_metrics.check_correctness, timeout
PARITY_TIMEOUT) returned, as measured by `python scripts/lcb_parity.py --official
<checkout>`: True passed, -1 the whole run died, -2 wrong answer, -3 time limit, -4 runtime
error. `difference` names the README row ("Code sandbox and graders") when geopd's
pass/fail deliberately differs, else None.

Measured on LiveCodeBench/LiveCodeBench at commit 28fef95 with Python 3.11.7.
"""
from __future__ import annotations

PARITY_TIMEOUT = 2  # seconds, both runners (the official default is 6; 2 keeps the suite lean)

_S = None  # stdin problem

CASES = [
    # -- stdin: the mocks and the wrapping
    ("a+b", "a, b = map(int, input().split())\nprint(a + b)", [("1 2\n", "3\n")], _S, [True], None),
    ("numeric", "print('1.0000000 2.50')", [("", "1 2.5")], _S, [True], None),
    ("for line in sys.stdin", "import sys\nfor line in sys.stdin:\n    print(line.strip())", [("1\n2\n", "1\n2")],
     _S, [-4], None),
    ("stdin.buffer.readline", "import sys\ninput = sys.stdin.buffer.readline\nn = int(input())\n"
     "print(sum(int(input()) for _ in range(n)))", [("2\n5\n7\n", "12")], _S, [-2], None),
    ("readlines", "import sys\nprint(len(sys.stdin.readlines()))", [("a\nb\n", "3")], _S, [True], None),
    ("main guard last", "def main():\n    print(5)\nif __name__ == '__main__':\n    main()", [("", "5")], _S,
     [True], None),
    ("main guard not last", "def main():\n    print(5)\nif __name__ == '__main__':\n    main()\nx = 1",
     [("", "5")], _S, [-2], None),
    ("class Solution in stdin", "class Solution:\n    def go(self):\n        print(7)\nSolution().go()",
     [("", "7")], _S, [-4], None),
    ("exit after print", "print(1)\nexit()\nprint(2)", [("", "1")], _S, [True], None),
    ("global statement", "x = 5\ndef f():\n    global x\n    return x\nprint(f())", [("", "5")], _S, [-4], None),
    ("missing import", "print(int(sqrt(16)))", [("", "4")], _S, [True], None),
    ("stdout.buffer", "import sys\nsys.stdout.buffer.write(b'1\\n')", [("", "1")], _S, [-4], None),
    ("quit()", "print(1)\nquit()", [("", "1")], _S, [-4], None),
    ("import resource", "import resource\nprint(1)", [("", "1")], _S, [-4], None),
    ("os.write to fd 1", "import os\nos.write(1, b'3\\n')", [("", "3")], _S, [-2], None),
    ("input past EOF", "input()\ninput()", [("1\n", "")], _S, [-4], None),
    ("os.fork", "import os\nos.fork()\nprint(1)", [("", "1")], _S, [-4], None),
    ("threads", "import threading\nout = []\nt = threading.Thread(target=lambda: out.append(6))\nt.start()\n"
     "t.join()\nprint(out[0])", [("", "6")], _S, [True], None),
    ("underscore number", "print('1_000')", [("", "1000")], _S, [True], None),
    ("float noise", "print(0.1 + 0.2)", [("", "0.3")], _S, [-2], None),
    ("deep recursion", "import sys\ndef f(n):\n    return 0 if n == 0 else 1 + f(n - 1)\nprint(f(20000))",
     [("", "20000")], _S, [True], None),
    # -- stdin: several tests in one process
    ("three tests", "a, b = map(int, input().split())\nprint(a + b)",
     [("1 2\n", "3"), ("5 5\n", "10"), ("0 0\n", "0")], _S, [True, True, True], None),
    ("stops at first failure", "a, b = map(int, input().split())\nprint(a + b if a else -1)",
     [("1 2\n", "3"), ("0 5\n", "5"), ("2 2\n", "4")], _S, [True, -2], None),
    ("state across tests", "import sys\nsys.geopd_n = getattr(sys, 'geopd_n', 0) + 1\nprint(sys.geopd_n)",
     [("", "1"), ("", "2")], _S, [True, True], None),
    ("per-test time limit", "import time\ntime.sleep(1.2)\nprint(input())",
     [("a\n", "a"), ("b\n", "b"), ("c\n", "c")], _S, [True, True, True], None),
    ("time limit", "while True:\n    pass", [("", "1")], _S, [-3], None),
    ("swallowed timeout", "try:\n    while True:\n        pass\nexcept Exception:\n    print(3)", [("", "3")], _S,
     [-2], None),
    # -- stdin: hostile output (each must be a verdict, never a grader crash)
    ("sNaN", "print('sNaN')", [("", "1")], _S, [-4], None),
    ("sNaN equal text", "print('sNaN')", [("", "sNaN")], _S, [True], None),
    ("sNaN count differs", "print('sNaN 1')", [("", "1")], _S, [-2], None),
    ("NaN", "print('NaN')", [("", "NaN")], _S, [True], None),
    ("500k-digit int printed", "print(10 ** 500000)", [("", "1")], _S, [-4], None),
    ("500k digits as text", "print('7' * 500000)", [("", "7" * 500000)], _S, [True], None),
    ("500k digits vs other", "print('7' * 500000)", [("", "7" * 499999 + "8")], _S, [-2], None),
    ("20 MB line", "print('1 ' * 10_000_000)", [("", "1")], _S, [-2], None),
    ("fake timing line", "import sys\nsys.stderr.write('\\n\\x00geopd:elapsed nan\\n')\nprint(1)", [("", "1")], _S,
     [True], None),
    # -- call-based
    ("fn tuple", "class Solution:\n    def f(self, a, b):\n        return (a, b)", [("1\n2", "[1, 2]")], "f", [True],
     None),
    ("fn nested tuple", "class Solution:\n    def f(self, a, b):\n        return [(a, b)]", [("1\n2", "[[1, 2]]")],
     "f", [False], None),
    ("fn set", "class Solution:\n    def f(self, a):\n        return set(a)", [("[1,2]", "[1, 2]")], "f", [False], None),
    ("fn int keys", "class Solution:\n    def f(self, a):\n        return {1: a}", [("2", '{"1": 2}')], "f", [False],
     None),
    ("fn float", "class Solution:\n    def f(self, a):\n        return a * 1.0", [("2", "2")], "f", [True], None),
    ("fn bool", "class Solution:\n    def f(self, a):\n        return a > 1", [("2", "true")], "f", [True], None),
    ("fn prints", "class Solution:\n    def f(self, a):\n        print('noise')\n        return a", [("2", "2")], "f",
     [True], None),
    ("fn typing", "class Solution:\n    def f(self, a: List[int]) -> int:\n        return sum(a)", [("[1,2]", "3")],
     "f", [True], None),
    ("fn numpy", "import numpy as np\nclass Solution:\n    def f(self, a):\n        return [np.int64(x) for x in a]",
     [("[1,2]", "[1, 2]")], "f", [True], None),
    ("fn numpy array", "import numpy as np\nclass Solution:\n    def f(self, a):\n        return np.array(a)",
     [("[1,2]", "[1, 2]")], "f", [False], None),
    ("fn missing method", "class Solution:\n    def g(self, a):\n        return a", [("2", "2")], "f", [-4], None),
    ("fn module function", "def f(a):\n    return a + 1", [("2", "3")], "f", [True], None),
    ("fn one Solution for all tests", "class Solution:\n    n = 0\n    def __init__(self):\n        self.k = 0\n"
     "    def f(self, a):\n        self.k += 1\n        return self.k", [("0", "1"), ("0", "2")], "f", [True, True],
     None),
    ("fn SystemExit", "import sys\nclass Solution:\n    def f(self, a):\n        sys.exit(0)", [("2", "2")], "f", [-2],
     None),
    ("fn slow module", "import time\ntime.sleep(2.5)\nclass Solution:\n    def f(self, a):\n        return a",
     [("2", "2")], "f", [-4], None),
    ("fn module then tests", "import time\ntime.sleep(1.2)\nclass Solution:\n    def f(self, a):\n"
     "        time.sleep(1.2)\n        return a", [("1", "1"), ("2", "2")], "f", [True, True], None),
    ("fn deep result", "class Solution:\n    def f(self, a):\n        x = a\n        for _ in range(100000):\n"
     "            x = [x]\n        return x", [("1", "[[1]]")], "f", [False], None),
    ("fn 500k-digit int", "class Solution:\n    def f(self, a):\n        return 10 ** 500000", [("1", "1")], "f",
     [False], None),
    ("fn NaN", "class Solution:\n    def f(self, a):\n        return float('nan')", [("1", "NaN")], "f", [False], None),
    ("fn big int within limit", "class Solution:\n    def f(self, a):\n        return 7 ** 5000",
     [("1", str(7 ** 5000))], "f", [True], None),
    ("fn Decimal", "from decimal import Decimal\nclass Solution:\n    def f(self, a):\n        return Decimal(a)",
     [("2", "2")], "f", [True], "strict-json"),
]
