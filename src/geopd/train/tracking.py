"""What a training run shows while it trains, beside its metrics.jsonl (rank 0 only).

- **TensorBoard** event files in the run's folder (geopd.paths.RunFiles.tensorboard): every
  scalar of every metrics row at its step, tagged by its key (a nested key as
  "extrapolation/accepted_factor"), as classic scalar summaries (float32), which TensorBoard,
  its EventAccumulator and tbparse all read. Event files are append-only, while a resumed run's
  metrics.jsonl is cut back to the resumed step (geopd.train.resume.truncate_metrics): so every
  start rewrites the event files from the rows kept (with the wall times the old files had), and
  the curves continue without duplicates or stale points of a killed attempt.
- **W&B** (Tracking.wandb): the same scalars at the same steps, the run's spec as its config, one
  W&B run per grid run. Its id and the last step it got are kept in the state folder
  (`wandb.json`), so a retry resumes that W&B run and skips the steps it already holds (W&B's
  steps only increase); a run that starts over (its state dropped) gets a new W&B run.
- **Progress lines** in the training log every `progress_interval` seconds: step/total, loss or
  reward, time per step, tokens/s and an ETA (geopd.io.progress).
- **The progress file** (RunFiles.progress), written when the command starts (`announce`, before
  any model loads) and after every step: where the run is, how fast it goes, and which host,
  process and Slurm job run it. `geopd status` reads it.

Torch-free: `geopd status` imports the progress file's reader from here.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

from geopd.errors import UserError
from geopd.io.atomic import write_text
from geopd.io.jsonl import iter_jsonl
from geopd.io.progress import Progress
from geopd.paths import RunFiles
from geopd.spec import RunSpec, Tracking, WandB

# The headline numbers of a row, in the order the progress line and `geopd status` show them.
HEADLINE = ("loss", "reward", "mean_r_t")
WANDB_RECORD = "wandb.json"  # in the state folder: the W&B run id and the last step it got


def scalars(row: dict, prefix: str = "") -> dict[str, float]:
    """Every scalar of a metrics row by tag: numbers (booleans as 0/1), nested mappings'
    numbers as "key/inner". The row's "step" is the x-axis, not a scalar; lists are skipped."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key == "step" and not prefix:
            continue
        tag = f"{prefix}{key}"
        if isinstance(value, (bool, int, float)):
            out[tag] = float(value)
        elif isinstance(value, dict):
            out.update(scalars(value, f"{tag}/"))
    return out


# ---- the progress file -------------------------------------------------------------------------

def read_progress(path: str | Path) -> dict | None:
    """The run's progress record, or None when there is none (or it cannot be read)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _process() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def announce(spec: RunSpec, tracking: Tracking) -> None:
    """The run's progress file says "starting" (rank 0, before anything loads: loading an 8B
    student and a 32B teacher takes minutes, and `geopd status` should see the job's process)."""
    if tracking.run_dir is None or int(os.environ.get("RANK", "0")) != 0:
        return
    now = time.time()
    write_text(RunFiles(tracking.run_dir).progress, json.dumps(
        {"run": spec.run, "phase": "starting", "step": None, "steps": spec.steps, "start_step": spec.start_step,
         "started": now, "updated": now, **_process()}) + "\n")


# ---- TensorBoard -------------------------------------------------------------------------------

def _wall_times(logdir: Path) -> dict[int, float]:
    """step -> wall time of the scalars in the event files already there."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    times: dict[int, float] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        try:
            for event in EventFileLoader(str(path)).Load():
                if event.HasField("summary"):
                    times.setdefault(event.step, event.wall_time)
        except Exception:  # wall times are cosmetic: an unreadable old file only loses its own
            continue
    return times


class EventLog:
    """A run's TensorBoard event files: rewritten from `rows` (the run's metrics so far), then
    appended to."""

    def __init__(self, logdir: str | Path, rows: list[dict]):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        logdir = Path(logdir)
        times = _wall_times(logdir) if logdir.is_dir() else {}
        shutil.rmtree(logdir, ignore_errors=True)
        self.writer = EventFileWriter(str(logdir), max_queue_size=100, flush_secs=5)
        for row in rows:
            self.add(row, times.get(row["step"]))
        self.writer.flush()

    def add(self, row: dict, wall_time: float | None = None) -> None:
        values = [self._summary.Value(tag=tag, simple_value=v) for tag, v in scalars(row).items()]
        self.writer.add_event(self._event(wall_time=wall_time or time.time(), step=int(row["step"]),
                                          summary=self._summary(value=values)))

    def close(self) -> None:
        self.writer.close()


# ---- W&B ---------------------------------------------------------------------------------------

class WandbLog:
    """One W&B run per grid run, resumed by the id kept in the state folder."""

    def __init__(self, spec: RunSpec, settings: WandB, root: Path, state_dir: Path):
        import wandb  # an optional service: only runs that ask for it import it

        self.record_path = state_dir / WANDB_RECORD
        record = _read_record(self.record_path)
        if record is None:
            record = {"id": f"{re.sub(r'[^A-Za-z0-9_-]', '-', spec.run)}-{uuid.uuid4().hex[:8]}", "step": None}
        self.record = record
        root.mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(project=settings.project, entity=settings.entity, mode=settings.mode,
                                  dir=str(root), id=record["id"], resume="allow", name=spec.run,
                                  group=settings.group, job_type=spec.method,
                                  tags=list(dict.fromkeys([*settings.tags, spec.method, *([spec.family] if spec.family else [])])),
                                  config=spec.to_dict(), settings=wandb.Settings(console="off"))
        except wandb.errors.Error as exc:
            raise UserError(f"run {spec.run}: W&B could not start ({exc}); on a node without network set "
                            "tracking.wandb.mode: offline (then `wandb sync`), or leave tracking.wandb out") from None
        write_text(self.record_path, json.dumps(self.record) + "\n")

    def log(self, row: dict) -> None:
        step = int(row["step"])
        if self.record["step"] is not None and step <= self.record["step"]:
            return  # this W&B run holds the step already (from the attempt a retry resumed)
        self.run.log(scalars(row), step=step)
        self.record["step"] = step
        write_text(self.record_path, json.dumps(self.record) + "\n")

    def close(self, finished: bool) -> None:
        self.run.finish(exit_code=0 if finished else 1)


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("id") else None


# ---- the tracker -------------------------------------------------------------------------------

class Tracker:
    """Started by the trainer's loop once the state is resumed (the metrics file then holds the
    rows this attempt continues); `log` after each step's metrics row, `close` at the end."""

    def __init__(self, trainer):
        spec, tracking = trainer.spec, trainer.tracking
        self.spec, self.tracking = spec, tracking
        self.main = trainer.dist.main
        self.events: EventLog | None = None
        self.wandb: WandbLog | None = None
        self.files = RunFiles(tracking.run_dir) if tracking.run_dir is not None else None
        self.start_step = trainer.step
        self.started = time.time()
        self.tokens = 0.0
        self.last: dict = {}
        self.lines = Progress(spec.run, spec.steps, unit="steps", interval=tracking.progress_interval,
                              enabled=bool(trainer.progress and self.main))
        self.lines.begin(trainer.step)
        if not self.main:
            return
        rows = list(iter_jsonl(trainer.metrics_path)) if trainer.metrics_path.exists() else []
        if self.files is not None:
            self.events = EventLog(self.files.tensorboard, rows)
        w = tracking.wandb
        if w is not None and w.mode != "disabled":
            self.wandb = WandbLog(spec, w, (self.files.wandb_root if self.files else Path(spec.state_dir)),
                                  Path(spec.state_dir))
            for row in rows:  # steps an earlier attempt logged before W&B was asked for, or lost
                self.wandb.log(row)
        self._write_progress("training", trainer.step)

    def log(self, row: dict) -> None:
        if not self.main:
            return
        if self.events is not None:
            self.events.add(row)
        if self.wandb is not None:
            self.wandb.log(row)
        self.tokens += float(row.get("tokens", 0.0))
        self.last = {k: row[k] for k in HEADLINE if isinstance(row.get(k), (int, float))}
        head = ", ".join(f"{k} {v:.4g}" for k, v in self.last.items())
        self.lines.done = row["step"]  # the speed below counts this step
        self.lines.update(row["step"], ", ".join(p for p in (head, self._speed()) if p))
        self._write_progress("training", row["step"])

    def _speed(self) -> str:
        per_step = self.lines.rate()
        elapsed = time.monotonic() - self.lines.start if self.lines.start is not None else 0.0
        parts = []
        if per_step is not None:
            parts.append(f"{per_step:.3g} s/step")
        if elapsed > 0 and self.tokens:
            parts.append(f"{self.tokens / elapsed:,.0f} tokens/s")
        return ", ".join(parts)

    def _write_progress(self, phase: str, step: int) -> None:
        if self.files is None:
            return
        per_step = self.lines.rate()
        elapsed = time.time() - self.started
        record = {"run": self.spec.run, "phase": phase, "step": step, "steps": self.spec.steps,
                  "start_step": self.spec.start_step, "resumed_at": self.start_step, "started": self.started,
                  "updated": time.time(), "s_per_step": per_step,
                  "tokens_per_s": self.tokens / elapsed if elapsed > 0 and self.tokens else None,
                  "eta_s": self.lines.eta(), "last": self.last, **_process()}
        write_text(self.files.progress, json.dumps(record) + "\n")

    def close(self, step: int, finished: bool) -> None:
        if not self.main:
            return
        if self.events is not None:
            self.events.close()
        if self.wandb is not None:
            self.wandb.close(finished)
        self._write_progress("finished" if finished else "stopped", step)
