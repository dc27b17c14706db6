"""Compare geopd's code grader with LiveCodeBench's official runner, case by case.

    python scripts/lcb_parity.py                        # geopd's verdicts vs the pinned official ones
    python scripts/lcb_parity.py --official ~/LiveCodeBench   # also run the official runner now

The cases and the official results pinned from the last measurement are in
tests/lcb_parity_cases.py (tests/test_lcb.py asserts them). With --official the script
imports lcb_runner from that checkout (nothing of it is copied here) and runs
`check_correctness` on each case, with the same time limit; it prints one row per case and
the CASES entries to paste when the official results changed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.set_int_max_str_digits(50000)  # as the official evaluation module sets for itself

from lcb_parity_cases import CASES, PARITY_TIMEOUT  # noqa: E402


def geopd_results(code: str, tests, fn_name) -> list:
    """geopd's per-test results in the official encoding (True, or an error code)."""
    from geopd.grading.code import grade_tests

    graded = grade_tests(code, [{"input": i, "output": o} for i, o in tests], fn_name=fn_name,
                         timeout_s=PARITY_TIMEOUT)
    return [True if r["passed"] else r["error_code"] for r in graded["results"]]


def official_results(code: str, tests, fn_name) -> list:
    from lcb_runner.evaluation.compute_code_generation_metrics import check_correctness

    sample = {"input_output": json.dumps({"inputs": [i for i, _ in tests], "outputs": [o for _, o in tests],
                                          "fn_name": fn_name})}
    try:
        result, _ = check_correctness(sample, code, timeout=PARITY_TIMEOUT, debug=False)
    except Exception:  # noqa: BLE001 - as evaluate_generations_by_problem: the sample keeps [-2]
        return [-2]
    out = []
    for r in result:
        if hasattr(r, "item"):  # a comparison that gave an array: not a pass
            r = False
        out.append(r if isinstance(r, bool) else int(r))
        if r is not True:
            # Entries after the first failure belong to the same test (the runner appends
            # an error code when even describing the wrong answer raises).
            break
    return out


def passes(results: list) -> list[bool]:
    return [r is True for r in results]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", help="a LiveCodeBench/LiveCodeBench checkout to run the official runner from")
    args = ap.parse_args()
    if args.official:
        sys.path.insert(0, str(Path(args.official).resolve()))
    differ, changed = [], []
    print(f"{'case':34} {'official':>16} {'geopd':>16}  same pass/fail per test")
    for name, code, tests, fn_name, pinned, difference in CASES:
        official = pinned
        if args.official:
            official = official_results(code, tests, fn_name)
            if official != pinned:
                changed.append((name, official))
        t = time.monotonic()
        ours = geopd_results(code, tests, fn_name)
        same = passes(ours) == passes(official)
        if not same and difference is None:
            differ.append(name)
        mark = "yes" if same else f"NO ({difference or 'undocumented'})"
        print(f"{name[:34]:34} {str(official):>16} {str(ours):>16}  {mark}  [{time.monotonic() - t:.1f}s]")
    for name, official in changed:
        print(f"official result changed: {name!r}: {official}")
    print(f"{len(CASES)} cases; undocumented differences: {differ or 'none'}")
    return 1 if differ or changed else 0


if __name__ == "__main__":
    sys.exit(main())
