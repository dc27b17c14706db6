"""Code-grading throughput: tests per second through the sandbox, on the miniature code task.

    python scripts/bench_sandbox.py [--problems 40] [--workers 2] [--mode auto]

Grades every problem's correct solution (so every test runs) two ways, `workers`
programs at a time: one sandboxed process per program serving all its tests (what
geopd.grading.code does), and one sandboxed process per test (what it did before). Run it
with PYTHONPATH pointing at an older checkout's src/ to measure that code's per-test path
(it falls back to geopd.evaluate.lcb.run_stdin_test when grade_tests does not exist).
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--mode", default="auto")
    args = ap.parse_args()

    from geopd.world.tasks import code_problems

    problems = code_problems(args.problems, seed=0, split="test")
    n_tests = sum(len(p["tests"]) for p in problems)
    try:
        from geopd.grading.code import grade_tests
    except ImportError:
        grade_tests = None

    def per_program(p):
        graded = grade_tests(p["solution"], p["tests"], mode=args.mode)
        return all(r["passed"] for r in graded["results"]) and len(graded["results"]) == len(p["tests"])

    def per_test(p):
        if grade_tests is None:  # an older checkout: one process per test was its only path
            from geopd.evaluate import lcb

            return all(lcb.run_stdin_test(p["solution"], t["input"], t["output"])["passed"] for t in p["tests"])
        return all(grade_tests(p["solution"], [t], mode=args.mode)["results"][0]["passed"] for t in p["tests"])

    ways = [("one process per test", per_test)]
    if grade_tests is not None:
        ways.insert(0, ("one process per program", per_program))
    print(f"{len(problems)} programs, {n_tests} tests, {args.workers} at a time")
    for name, fn in ways:
        t = time.monotonic()
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            ok = list(pool.map(fn, problems))
        wall = time.monotonic() - t
        assert all(ok), f"{name}: a correct solution failed"
        print(f"  {name:26} {wall:7.2f} s  {n_tests / wall:7.1f} tests/s  {1000 * wall / n_tests:6.1f} ms/test  "
              f"{1000 * wall / len(problems):6.1f} ms/program")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
