#!/usr/bin/env python
"""Wall time per rule and in total of a finished Snakemake run, from Snakemake's own records.

    python scripts/bench_miniature.py                 # the run in this checkout (.snakemake/, results/)
    python scripts/bench_miniature.py -d /tmp/slice   # a run made with `snakemake -d /tmp/slice`

Snakemake records, for every output it made, the rule, when the job started (its incomplete
marker) and when the output was last written (.snakemake/metadata/, what `snakemake --report`
shows as runtimes). One job can have several outputs: they are counted once. The span is from
the first job's start to the last job's end (the second `snakemake --report` call of
scripts/run-miniature.sh and Snakemake's own start-up are outside it; time the script for
those). Nothing is run or changed.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import sys
from collections import defaultdict
from pathlib import Path


def jobs(workdir: Path) -> list[dict]:
    """One record per finished job: rule, start, end, outputs."""
    meta = workdir / ".snakemake" / "metadata"
    if not meta.is_dir():
        raise SystemExit(f"{meta}: no Snakemake records (was the workflow run with -d {workdir}?)")
    by_job: dict[tuple, dict] = {}
    for f in meta.iterdir():
        try:
            rec = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if rec.get("incomplete") or rec.get("starttime") is None or rec.get("endtime") is None:
            continue
        try:
            output = base64.urlsafe_b64decode(f.name.encode()).decode()
        except (ValueError, UnicodeDecodeError):
            output = f.name
        if not (workdir / output).exists():  # removed since, or a killed job's record
            continue
        # Each output has its own record; its start is its own incomplete marker's time.
        job = by_job.setdefault((rec.get("rule"), rec.get("job_hash")),
                                {"rule": rec.get("rule"), "start": rec["starttime"], "end": rec["endtime"], "outputs": []})
        job["start"], job["end"] = min(job["start"], rec["starttime"]), max(job["end"], rec["endtime"])
        job["outputs"].append(output)
    return sorted(by_job.values(), key=lambda j: j["start"])


def last_invocation(records: list[dict], gap_s: float) -> list[dict]:
    """The jobs of the latest run: records are kept across runs, so a job made in an earlier
    invocation (and not remade) would stretch the span. Jobs closer than gap_s to each other
    belong to one invocation."""
    if not records:
        return records
    out = [records[-1]]
    for job in reversed(records[:-1]):
        if min(j["start"] for j in out) - job["end"] > gap_s:
            break
        out.append(job)
    return sorted(out, key=lambda j: j["start"])


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} {platform.release()}"


def table(records: list[dict]) -> list[str]:
    per_rule: dict[str, list[float]] = defaultdict(list)
    for j in records:
        per_rule[j["rule"]].append(max(0.0, j["end"] - j["start"]))  # a local rule's output can predate its record
    span = max(j["end"] for j in records) - min(j["start"] for j in records)
    total = sum(sum(v) for v in per_rule.values())
    lines = ["| rule | jobs | summed job wall (min) | mean s | max s | share |", "|---|---|---|---|---|---|"]
    for rule, walls in sorted(per_rule.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"| {rule} | {len(walls)} | {sum(walls) / 60:.1f} | {sum(walls) / len(walls):.1f} | "
                     f"{max(walls):.1f} | {sum(walls) / total:.0%} |")
    lines.append(f"| **all** | {len(records)} | {total / 60:.1f} | | | |")
    lines.append("")
    lines.append(f"span (first job start to last job end): {span / 60:.1f} min; summed job wall / span = "
                 f"{total / span:.2f} (jobs running at once, on average)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", "--directory", default=".", help="the workflow's working directory")
    parser.add_argument("--all-records", action="store_true",
                        help="every recorded job, not only those of the latest invocation")
    parser.add_argument("--gap", type=float, default=600.0,
                        help="seconds without a job that separate two invocations (default 600)")
    parser.add_argument("--json", action="store_true", help="per-job records as JSON")
    args = parser.parse_args(argv)
    records = jobs(Path(args.directory))
    if not args.all_records:
        records = last_invocation(records, args.gap)
    if not records:
        print("no finished jobs recorded", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(records, indent=1))
        return 0
    print(f"machine: {machine()}; load average now: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\n".join(table(records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
