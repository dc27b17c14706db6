"""One program, many requests: a `Session` keeps a sandboxed runner alive for all tests of a
program (as LiveCodeBench's runner does), each request timed by the grader."""
from __future__ import annotations

import json
import math
import struct
import time
from dataclasses import dataclass

from geopd.sandbox.process import _limits, _Sandboxed, _sched

# The request protocol (its runner side: guest/runner_lib.py, geopd.sandbox.RUNNER_LIB, which
# runner sources start with). Requests come on a private descriptor (stdin is /dev/null for the program), replies go out on another;
# both frames are: 4-byte header length, 8-byte body length, JSON header, body. Replies
# carry the request's sequence number: a late reply to an earlier request is refused.


def frame(header: dict, body: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return struct.pack(">IQ", len(h), len(body)) + h + body


@dataclass
class Reply:
    """One request's outcome. status: ok | timeout | exit (the process ended) |
    output_limit | protocol. elapsed_s: seconds from the request's delivery to the arrival of
    the whole reply, measured by the grader (never by anything inside the sandbox), less the
    time the process spent waiting for a CPU (so that a loaded machine does not turn correct
    programs into timeouts)."""

    status: str
    header: dict | None = None
    body: bytes = b""
    elapsed_s: float | None = None
    wall_s: float | None = None


class Session:
    """A sandboxed runner that answers requests one at a time (see RUNNER_LIB).

    `runner` is Python source that starts with RUNNER_LIB (the reply descriptor filled in
    by `Session`) and serves requests with recv()/send(); it sends {"ready": true} first.
    Per request the runner sends one reply frame. The time is the host's alone: from the
    request's delivery to the arrival of the complete reply (its delivery included), so no
    frame a program sends can stop the clock early (an early "done" and a reply delivered
    later within a grace period once let a 2x-limit program pass)."""

    HARD_FACTOR = 4.0  # a request never runs longer than this x its limit, however loaded

    def __init__(self, runner: str, *, timeout_s: float = 6.0, n_requests: int = 1, startup_s: float = 60.0,
                 memory_mb: int = 1024, max_procs: int = 32, max_file_mb: int = 16, disk_mb: int = 64,
                 max_output_bytes: int = 16 * 1024 * 1024, max_open_files: int = 64, env: dict | None = None,
                 mode: str = "auto", guard: bool = True, python: str | None = None,
                 workdir_base: str | None = None):
        cpu = int(math.ceil((timeout_s + 1) * max(1, n_requests) * self.HARD_FACTOR)) + 5
        self.box = _Sandboxed(runner, replies=True, keep_stdout=False, **_limits(
            timeout_s, cpu, memory_mb, max_procs, max_file_mb, disk_mb, max_open_files, max_output_bytes, env,
            mode, guard, python, workdir_base))
        self.ready = False
        self.seq = 0
        ev = self.box.pump(lambda: bool(self.box.frames.frames), time.monotonic() + startup_s)
        if ev == "done":
            header, _, _ = self.box.frames.frames.pop(0)
            self.ready = header.get("ready") is True
        if not self.ready:
            self.box.kill("startup" if ev == "deadline" else "protocol")

    @property
    def isolation(self) -> tuple[str, ...]:
        return self.box.layers

    @property
    def stderr(self) -> str:
        return self.box.stderr.text()

    @property
    def stdout_tail(self) -> str:
        return self.box.stdout_tail.text()

    def _next_frame(self, deadline_fn) -> tuple[str, tuple | None]:
        frames = self.box.frames.frames
        while True:
            ev = self.box.pump(lambda: bool(frames), deadline_fn())
            if ev == "done":
                return "ok", frames.pop(0)
            if ev != "deadline":
                return ev, None
            if time.monotonic() >= deadline_fn():
                return "deadline", None

    def request(self, header: dict, body: bytes = b"", *, timeout_s: float = 6.0) -> Reply:
        box = self.box
        if not self.ready or box.exited:
            return Reply("exit")
        if box.frames.frames:  # replies nobody asked for yet: the program forged them
            box.kill("protocol")
            return Reply("protocol")
        self.seq += 1
        seq = self.seq
        box.send(frame(dict(header, seq=seq), body))
        if box.pump(lambda: box.sent, time.monotonic() + max(30.0, timeout_s * self.HARD_FACTOR)) != "done":
            return self._failed(None, None)
        t0 = time.monotonic()
        pid = box.host_pid
        s0 = _sched(pid)
        hard = t0 + timeout_s * self.HARD_FACTOR + 1.0

        def waited() -> float:
            s = _sched(pid)
            return (s[1] - s0[1]) if (s and s0) else 0.0

        def deadline() -> float:
            # Extended by the time the program sat in the run queue, up to the hard cap.
            return min(hard, t0 + timeout_s + waited() + 0.05)

        ev, got = self._next_frame(deadline)  # a frame counts once it has arrived whole
        t_done = time.monotonic()
        elapsed = max(0.0, (t_done - t0) - waited())
        if ev == "deadline":
            box.kill("timeout")
            return Reply("timeout", elapsed_s=max(elapsed, timeout_s), wall_s=t_done - t0)
        if ev != "ok":
            return self._failed(elapsed, t_done - t0)
        header, body_bytes, _ = got
        if header.get("seq") != seq:  # a late reply to an earlier request, or a forgery
            box.kill("protocol")
            return Reply("protocol", header, elapsed_s=elapsed, wall_s=t_done - t0)
        return Reply("ok", header, body_bytes, elapsed_s=elapsed, wall_s=t_done - t0)

    def _failed(self, elapsed, wall) -> Reply:
        why = self.box.killed_for
        status = {"output": "output_limit", "protocol": "protocol", "timeout": "timeout"}.get(why, "exit")
        return Reply(status, elapsed_s=elapsed, wall_s=wall)

    def end_status(self) -> str:
        """How the process ended (RunResult.status words), once it has."""
        return self.box.status()

    def close(self) -> None:
        self.box.close()  # kills what still runs: nothing of a run outlives its session

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
