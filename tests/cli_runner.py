"""Run many `snakemake` and `geopd` command lines fast, each exactly as from a shell.

    python tests/cli_runner.py JOBS.json OUT_DIR [PARALLEL]

JOBS.json is a list of {"prog": "snakemake" | "geopd", "argv": [...], "cwd": "..."}. The runner
imports Snakemake's and geopd's command lines once, then forks one child per job: the child
changes to its folder, sends its stdout and stderr to OUT_DIR/<i>.out and calls the command's
main() as the console script would, so its exit status is the command's. Forking skips the
second or so of imports per command that a fresh interpreter pays. Writes OUT_DIR/status.json
(one exit status per job) and OUT_DIR/seconds.json (each job's wall and CPU seconds).
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback


def _child(job: dict, out: str) -> None:
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    code = 1
    try:
        os.chdir(job["cwd"])
        if job["prog"] == "snakemake":
            from snakemake.cli import main
            sys.argv = ["snakemake", *job["argv"]]
            main()
            code = 0
        else:
            from geopd.cli import main
            sys.argv = ["geopd", *job["argv"]]
            code = int(main() or 0)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # what a console script would print before exiting 1
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> int:
    jobs = json.loads(open(sys.argv[1]).read())
    out_dir = sys.argv[2]
    parallel = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    import snakemake.cli  # noqa: F401  (imported once, inherited by every child)
    import geopd.cli  # noqa: F401
    import geopd.plan  # noqa: F401
    status: dict[int, int] = {}
    seconds: dict[int, float] = {}
    running: dict[int, tuple[int, float]] = {}
    pending = list(enumerate(jobs))
    while pending or running:
        while pending and len(running) < parallel:
            i, job = pending.pop(0)
            pid = os.fork()
            if pid == 0:
                _child(job, os.path.join(out_dir, f"{i}.out"))
            running[pid] = (i, time.monotonic())
        pid, raw, usage = os.wait4(-1, 0)
        i, start = running.pop(pid)
        status[i] = os.waitstatus_to_exitcode(raw)
        seconds[i] = [round(time.monotonic() - start, 3), round(usage.ru_utime + usage.ru_stime, 3)]
    with open(os.path.join(out_dir, "status.json"), "w") as fh:
        json.dump([status[i] for i in range(len(jobs))], fh)
    with open(os.path.join(out_dir, "seconds.json"), "w") as fh:
        json.dump([seconds[i] for i in range(len(jobs))], fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
