"""One program, one input: `run_program` (and `run_batch`, many at a time)."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from geopd.sandbox.machine import is_isolated
from geopd.sandbox.process import _limits, _Sandboxed


@dataclass
class RunResult:
    """status: ok | timeout | memory | runtime_error | killed | output_limit | sandbox_error."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    cpu_s: float = 0.0
    isolation: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def isolated(self) -> bool:
        return is_isolated(self.isolation)


def run_program(
    source: str,
    stdin: str = "",
    *,
    timeout_s: float = 6.0,
    memory_mb: int = 1024,
    cpu_s: int | None = None,
    max_procs: int = 32,
    max_file_mb: int = 16,
    disk_mb: int = 64,
    max_output_bytes: int = 16 * 1024 * 1024,
    max_open_files: int = 64,
    env: dict | None = None,
    mode: str = "auto",
    guard: bool = True,
    python: str | None = None,
    workdir_base: str | None = None,
) -> RunResult:
    """Run `source` as a Python program with `stdin`, isolated as the module doc describes.

    timeout_s is wall-clock from the start; cpu_s (default: timeout rounded up, plus 1) is
    the CPU-time rlimit; memory_mb bounds the address space (one process: all of it);
    disk_mb the program's directory; max_procs threads (or processes where nothing
    stops forking). `guard=False` leaves out the audit hook so tests can check what the
    kernel layers contain on their own."""
    box = _Sandboxed(source, replies=False, keep_stdout=True, **_limits(
        timeout_s, cpu_s, memory_mb, max_procs, max_file_mb, disk_mb, max_open_files, max_output_bytes, env, mode,
        guard, python, workdir_base))
    try:
        box.send(stdin.encode("utf-8"), close=True)
        if box.pump(lambda: False, box.start + timeout_s) == "deadline":
            box.kill("timeout")
        box.close()
    finally:
        box.close()
    wall = time.monotonic() - box.start
    cpu = (box.rusage.ru_utime + box.rusage.ru_stime) if box.rusage is not None else 0.0
    status = box.status()
    notes = list((box.info or {}).get("errors", []))
    if box.info is None:
        notes.append("the sandbox bootstrap did not report (it failed before the program ran)")
    return RunResult(status, box.rc, bytes(box.stdout[:max_output_bytes]).decode("utf-8", "replace"),
                     box.stderr.text(), wall, cpu, box.layers, notes)


def run_batch(jobs, *, workers: int = 2, **kwargs) -> list[RunResult]:
    """Run many programs, `workers` at a time; results in the order of `jobs`.

    Each job is a source string, a (source, stdin) pair, or a dict with "source", optional
    "stdin" and per-job keyword overrides of `run_program`."""
    def one(job):
        if isinstance(job, str):
            return run_program(job, **kwargs)
        if isinstance(job, tuple):
            return run_program(job[0], job[1], **kwargs)
        job = dict(job)
        return run_program(job.pop("source"), job.pop("stdin", ""), **{**kwargs, **job})

    jobs = list(jobs)
    if workers <= 1 or len(jobs) <= 1:
        return [one(j) for j in jobs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, jobs))
