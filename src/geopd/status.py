"""Where every run of a grid is (`geopd status`), from the files the runs write, and Slurm's
queue where `squeue` answers. Reads files only: no torch, no Snakemake, fast on a login node.

A run is
- **done**: its outputs (checkpoints and metrics.jsonl) are in place;
- **queued** / **running**: Slurm has its train job pending / running, or, without Slurm, its
  progress file (geopd.train.tracking) names a live process on this host (or, on another host,
  was updated lately). snakemake-executor-plugin-slurm names every job of one Snakemake
  invocation by its run ID (logged in <workdir>/.snakemake/log/) and comments it
  `rule_<rule>_wildcards_<values>`: a job is this grid's when its comment names the rule and the
  run and its name is a run ID logged in the workflow's directory (where no log names one: when
  its working directory is that directory or this one);
- **failed**: it started (a progress file, resume state or a log) but nothing runs it now (a
  crash, a stop, a kill; the last line of its log that names an error is shown);
- **not started**: none of these.

Beside the state: last step of total, the last loss / reward / mean r_t, time per step and an
ETA (from the progress file), the Slurm job, and the evaluations and diagnoses present of those
the grid expects (with the latest evaluation's first metric).
"""
from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from geopd.grid import Grid
from geopd.io.progress import duration
from geopd.paths import Layout
from geopd.train.tracking import HEADLINE, read_progress

STATES = ("not started", "queued", "running", "failed", "done")
RUNNING = ("RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "RESIZING", "SIGNALING")
WAITING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESV_DEL_HOLD")
# A progress file on another host, with no Slurm to ask, counts as live this long after its
# last update (or 5 steps, whichever is longer).
STALE_S = 900.0
JOB_COMMENT = re.compile(r"^rule_([a-z_]+?)(?:_wildcards_(.*))?$")


# ---- Slurm -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SlurmJob:
    id: str
    state: str
    rule: str
    run: str | None        # the first wildcard (every per-run rule's is the run)
    workdir: str
    reason: str = ""
    name: str = ""         # the Snakemake invocation's run ID

    @property
    def active(self) -> bool:
        return self.state in RUNNING or self.state in WAITING


SQUEUE_FORMAT = "%i|%T|%j|%k|%Z|%R"


def parse_squeue(text: str) -> list[SlurmJob]:
    """Jobs of `squeue -h -o SQUEUE_FORMAT` that snakemake-executor-plugin-slurm submitted
    (comment rule_<rule>[_wildcards_<values joined by _>])."""
    jobs = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|", 5)]
        if len(parts) < 5:
            continue
        job_id, state, name, comment, workdir = parts[:5]
        m = JOB_COMMENT.match(comment)
        if not m:
            continue
        wildcards = m.group(2)
        jobs.append(SlurmJob(job_id, state, m.group(1), wildcards.split("_")[0] if wildcards else None, workdir,
                             parts[5] if len(parts) > 5 else "", name))
    return jobs


def snakemake_run_ids(workdir: Path, logs: int = 50) -> set[str]:
    """The Slurm run IDs (job names) of the last `logs` Snakemake invocations in `workdir`."""
    ids: set[str] = set()
    for log in sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))[-logs:]:
        try:
            with open(log, errors="replace") as fh:
                head = fh.read(200_000)
        except OSError:
            continue
        ids.update(re.findall(r"SLURM run ID: (\S+)", head))
    return ids


def squeue_jobs(timeout: float = 10.0) -> list[SlurmJob] | None:
    """This user's jobs in Slurm's queue, or None where squeue does not answer (no Slurm)."""
    exe = shutil.which("squeue")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "-h", "-u", getpass.getuser(), "-o", SQUEUE_FORMAT], capture_output=True,
                              text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_squeue(proc.stdout) if proc.returncode == 0 else None


def _same_dir(a: str, b: Path) -> bool:
    try:
        return Path(a).resolve() == b.resolve()
    except OSError:
        return False


def _pick(jobs: list[SlurmJob]) -> SlurmJob | None:
    """The job that says most: a running one, else a waiting one, else the newest."""
    def rank(j: SlurmJob):
        return (j.state in RUNNING, j.state in WAITING, int(j.id.split("_")[0]) if j.id.split("_")[0].isdigit() else 0)
    return max(jobs, key=rank) if jobs else None


# ---- one run -------------------------------------------------------------------------------------

@dataclass
class RunStatus:
    run: str
    state: str
    step: int | None = None
    steps: int | None = None
    last: dict = field(default_factory=dict)
    s_per_step: float | None = None
    eta_s: float | None = None
    slurm: str = ""
    evals: str = ""
    diagnostics: str = ""
    note: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def last_row(path: Path, tail: int = 65536) -> dict | None:
    """The last complete JSON line of a JSONL file (read from its end), None if none."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - tail))
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _alive(progress: dict, now: float) -> bool:
    """Whether the process a progress file names still runs (see the module's docstring)."""
    if progress.get("host") == socket.gethostname():
        try:
            os.kill(int(progress["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, KeyError, TypeError, ValueError):
            return True  # another user's process
        return True
    per_step = progress.get("s_per_step") or 0.0
    return now - float(progress.get("updated", 0.0)) < max(STALE_S, 5 * per_step)


def _error_line(log: Path) -> str:
    """The last line of a log that names an error (or its last line)."""
    try:
        lines = [l.strip() for l in log.read_text(errors="replace").splitlines()[-400:] if l.strip()]
    except OSError:
        return ""
    errors = [l for l in lines if re.search(r"error|exception|killed|signal|cancelled|time limit", l, re.I)]
    pick = errors[-1] if errors else (lines[-1] if lines else "")
    return pick[:160]


class Status:
    """The status of every run of `grid`, with the results root resolved under `workdir` (the
    workflow's working directory, where Snakemake ran)."""

    def __init__(self, grid: Grid, workdir: str | Path = ".", jobs: list[SlurmJob] | None = None,
                 now: float | None = None):
        self.grid = grid
        self.workdir = Path(workdir)
        root = grid.results if grid.results.is_absolute() else self.workdir / grid.results
        self.layout = Layout(root)
        self.jobs = jobs  # None: squeue does not answer
        self.now = time.time() if now is None else now
        ids = snakemake_run_ids(self.workdir)
        if ids:
            mine = [j for j in (jobs or []) if j.name in ids]
        else:
            mine = [j for j in (jobs or []) if not j.workdir or any(_same_dir(j.workdir, d)
                                                                     for d in (self.workdir, Path.cwd()))]
        self.by_run: dict[tuple[str, str | None], list[SlurmJob]] = {}
        for j in mine:
            self.by_run.setdefault((j.rule, j.run), []).append(j)

    def run(self, name: str) -> RunStatus:
        L = self.layout
        run = self.grid.runs[name]
        files = L.run_files(name)
        progress = read_progress(files.progress)
        done = Path(L.metrics_file(name)).is_file() and Path(L.checkpoints_dir(name)).is_dir()
        job = _pick([j for j in self.by_run.get(("train", name), []) if j.active])
        st = RunStatus(name, "not started", steps=run.steps)
        if job is not None:
            st.state = "running" if job.state in RUNNING else "queued"
            st.slurm = f"{job.id} {job.state}" + (f" ({job.reason})" if job.state in WAITING and job.reason else "")
        elif done:
            st.state = "done"
        elif progress is not None and progress.get("phase") in ("starting", "training"):
            if _alive(progress, self.now):
                st.state = "running"
            else:
                st.state = "failed"
                st.note = f"its process ({progress.get('host')}:{progress.get('pid')}) is gone"
        elif progress is not None or Path(L.state_dir(name)).is_dir() or Path(L.log("train", f"{name}.log")).is_file():
            st.state = "failed"
        if st.state == "failed":
            log = _error_line(Path(L.log("train", f"{name}.log")))
            st.note = "; ".join(p for p in (st.note, log) if p)
        if st.state in ("running", "failed", "done") or (st.state == "queued" and progress is not None):
            self._training(st, name, progress, done)
        st.evals = self._evals(name)
        st.diagnostics = self._diagnostics(name)
        return st

    def _training(self, st: RunStatus, name: str, progress: dict | None, done: bool) -> None:
        metrics = Path(self.layout.metrics_file(name)) if done else Path(self.layout.state_dir(name)) / "metrics.jsonl"
        row = last_row(metrics)
        if row is not None:
            st.step = int(row["step"])
            st.last = {k: row[k] for k in HEADLINE if isinstance(row.get(k), (int, float))}
        if progress is not None:
            if progress.get("step") is not None and (st.step is None or progress["step"] >= st.step):
                st.step = int(progress["step"])
                st.last = progress.get("last") or st.last
            st.s_per_step = progress.get("s_per_step")
            if st.state == "running" and progress.get("eta_s") is not None:
                st.eta_s = max(0.0, float(progress["eta_s"]) - (self.now - float(progress.get("updated", self.now))))
            if st.state == "running" and progress.get("phase") == "starting":
                st.note = st.note or f"starting (loading) since {duration(self.now - float(progress.get('started', self.now)))}"
        if st.state == "done":
            st.eta_s = 0.0

    def _active_jobs(self, rules: tuple[str, ...], name: str) -> str:
        jobs = [j for r in rules for j in self.by_run.get((r, name), []) if j.active]
        running = sum(j.state in RUNNING for j in jobs)
        parts = [f"{running} running"] if running else []
        if len(jobs) - running:
            parts.append(f"{len(jobs) - running} queued")
        return f" (+{', '.join(parts)})" if parts else ""

    def _evals(self, name: str) -> str:
        targets = self.grid.eval_run_targets(name)
        if not targets:
            return "-"
        present = [(s, b) for s, b in targets if Path(self.layout.eval_file(name, s, b)).is_file()]
        text = f"{len(present)}/{len(targets)}"
        if present:
            step = max(s for s, _ in present)
            shown = []
            for s, b in present:
                if s != step:
                    continue
                try:
                    metrics = json.loads(Path(self.layout.eval_file(name, s, b)).read_text())["metrics"]
                    key = next(iter(metrics))
                    shown.append(f"{b} {key} {metrics[key]:.3g}")
                except (OSError, ValueError, KeyError, StopIteration, TypeError):
                    shown.append(f"{b} unreadable")
            text += f" step {step}: " + ", ".join(shown)
        return text + self._active_jobs(("evaluate", "evaluate_run"), name)

    def _diagnostics(self, name: str) -> str:
        targets = [(s, self.layout.diagnostics_file(name, s, m)) for s, m in self.grid.diagnose_run_targets(name)]
        if name in self.grid.similarity_runs():
            targets.append((None, self.layout.similarity_file(name)))
        if not targets:
            return "-"
        present = [(s, f) for s, f in targets if Path(f).is_file()]
        text = f"{len(present)}/{len(targets)}"
        steps = [s for s, _ in present if s is not None]
        if steps:
            text += f" up to step {max(steps)}"
        return text + self._active_jobs(("diagnose", "diagnose_run", "similarity"), name)

    def all(self) -> list[RunStatus]:
        return [self.run(name) for name in self.grid.runs]


# ---- output --------------------------------------------------------------------------------------

def _last(last: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in last.items()) or "-"


def render(statuses: list[RunStatus], title: str, slurm: bool) -> str:
    counts = {s: sum(r.state == s for r in statuses) for s in STATES}
    head = f"{title}: {len(statuses)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    head += "" if slurm else " (no Slurm queue here: states from the runs' files)"
    header = ["run", "state", "step", "last", "s/step", "ETA", "slurm", "eval", "diagnostics"]
    right = {"step", "s/step", "ETA"}
    rows = []
    for r in statuses:
        step = f"{r.step if r.step is not None else '-'}/{r.steps}"
        rows.append([r.run, r.state, step, _last(r.last), f"{r.s_per_step:.3g}" if r.s_per_step else "-",
                     duration(r.eta_s) if r.state != "done" else "-", r.slurm or "-", r.evals, r.diagnostics])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    table = ["  ".join(format(str(v), (">" if h in right else "<") + str(w)) for v, h, w in zip(row, header, widths)).rstrip()
             for row in [header, *rows]]
    lines = [head, *table]
    notes = [f"  {r.run}: {r.note}" for r in statuses if r.note]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)
