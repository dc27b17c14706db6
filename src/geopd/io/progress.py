"""Progress lines for long work: nothing that takes minutes is silent in a job's log.

`Progress` prints "WHAT: i/n UNIT (p%), EXTRA, T elapsed, ETA T" to stderr at most every
`interval` seconds (the first update and the last always), one line each, never a carriage
return: a Slurm or Snakemake log is a file, not a terminal. The rate is counted from the
first update this process made, so a resumed run's ETA is not skewed by the steps it inherited.
`duration` writes seconds the way the lines and `geopd status` show them.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def duration(seconds: float | None) -> str:
    """12s, 3m05s, 2h07m, 3d04h; "-" when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


class Progress:
    """Counts work done out of `total` and prints a line at most every `interval` seconds."""

    def __init__(self, what: str, total: int, *, unit: str = "", interval: float = 60.0,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 enabled: bool = True):
        self.what, self.total, self.unit = what, int(total), unit
        self.interval, self.enabled = float(interval), enabled
        self.stream = stream
        self.clock = clock
        self.start: float | None = None     # clock at the first update
        self.first_done: int | None = None  # work done at the first update
        self.last_print: float | None = None
        self.done = 0

    def rate(self) -> float | None:
        """Seconds per unit of work since the first update (None before two points)."""
        if self.start is None or self.done <= self.first_done:
            return None
        return (self.clock() - self.start) / (self.done - self.first_done)

    def eta(self) -> float | None:
        r = self.rate()
        return None if r is None else r * max(self.total - self.done, 0)

    def line(self, extra: str = "") -> str:
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        unit = f" {self.unit}" if self.unit else ""
        elapsed = self.clock() - self.start if self.start is not None else 0.0
        parts = [f"{self.what}: {self.done}/{self.total}{unit}{pct}"]
        if extra:
            parts.append(extra)
        parts.append(f"{duration(elapsed)} elapsed")
        parts.append("done" if self.done >= self.total else f"ETA {duration(self.eta())}")
        return ", ".join(parts)

    def begin(self, done: int = 0) -> None:
        """Start the clock at `done` units (work a resumed job inherited)."""
        self.start, self.first_done, self.done = self.clock(), int(done), int(done)

    def update(self, done: int, extra: str = "") -> bool:
        """Set the work done; print a line when due. Returns whether it printed."""
        if self.start is None:
            self.begin(0)
        self.done = int(done)
        now = self.clock()
        due = (self.last_print is None or now - self.last_print >= self.interval or self.done >= self.total)
        if not (due and self.enabled):
            return False
        self.last_print = now
        print(self.line(extra), file=self.stream or sys.stderr, flush=True)
        return True

    def advance(self, n: int = 1, extra: str = "") -> bool:
        return self.update(self.done + n, extra)
