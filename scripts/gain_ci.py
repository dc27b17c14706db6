"""Accuracy gain of one evaluated checkpoint over another, with a paired bootstrap 95% CI over
problems (the README's "OPD and RLVR vs the anchor" figures).

    python scripts/gain_ci.py [--results results] [--bench math-heldout] RUN@STEP BASE@STEP ...

Pairs are given as `run@step` (the final checkpoint of `opd-8b-t32b` is `opd-8b-t32b@50`);
each argument after the first two pairs is another RUN@STEP compared against the same BASE.
Per problem, accuracy is the mean correctness of its samples (avg@k); the gain is the mean
over problems of (run - base) on the same problems, resampled with replacement 10,000 times.
"""
import argparse
import json
import random
from collections import defaultdict
from pathlib import Path


def per_problem(results: Path, point: str, bench: str) -> dict[str, float]:
    run, step = point.split("@")
    path = results / "eval" / run / f"step-{step}" / f"{bench}.samples.jsonl"
    if not path.is_file():
        raise SystemExit(f"no samples for {point} on {bench}: {path}")
    hits = defaultdict(list)
    for line in path.read_text().splitlines():
        row = json.loads(line)
        hits[row["id"]].append(float(row["correct"]))
    return {k: sum(v) / len(v) for k, v in hits.items()}


def paired_ci(a: dict[str, float], b: dict[str, float], iters: int = 10_000, seed: int = 0):
    ids = sorted(a)
    if set(ids) != set(b):
        raise SystemExit("the two points were evaluated on different problems")
    diffs = [a[i] - b[i] for i in ids]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(iters))
    return sum(diffs) / n, means[int(0.025 * iters)], means[int(0.975 * iters) - 1], n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results", type=Path)
    ap.add_argument("--bench", default="math-heldout")
    ap.add_argument("base")
    ap.add_argument("points", nargs="+")
    args = ap.parse_args()
    base = per_problem(args.results, args.base, args.bench)
    print(f"| {args.bench} | vs {args.base} | gain | 95% CI (paired bootstrap) | problems |")
    print("|---|---|---|---|---|")
    for point in args.points:
        gain, lo, hi, n = paired_ci(per_problem(args.results, point, args.bench), base)
        print(f"| {point} | | {gain:+.3f} | {lo:+.3f} .. {hi:+.3f} | {n} |")


if __name__ == "__main__":
    main()
