"""What a run shows while it trains (geopd.train.tracking): TensorBoard holds every scalar of
metrics.jsonl at the same steps, also after a kill and a resume; a W&B offline run holds the
same scalars and continues after a stop; progress lines and the progress file say where the
run is."""
import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from geopd.data import prepare
from geopd.grid import Grid
from geopd.io.progress import Progress, duration
from geopd.spec import SpecError, Tracking, spec_json
from geopd.train.tracking import read_progress, scalars

REPO = Path(__file__).resolve().parents[1]
SLICE = REPO / "tests/configs/slice.yaml"


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The slice's SFT data and base model, made once."""
    from geopd.world.build import make_model

    root = tmp_path_factory.mktemp("tracking")
    grid = Grid.from_file(SLICE, overrides={"results": str(root)})
    for name in ("pretrain-corpus", "sft-demos"):
        prepare(grid.data_spec(name), grid.data_dir(name))
    make_model(grid.model_spec("qwen3-8b-base"), grid.built_model_dir("qwen3-8b-base"), threads=1)
    return grid


def sft(grid, where: Path) -> tuple[dict, dict]:
    """sft-8b's spec and tracking, its run folder under `where` (6 steps, states at 3 and 6)."""
    spec = grid.run_spec("sft-8b").to_dict()
    spec["state_dir"] = str(where / "state")
    tracking = {**grid.tracking_spec("sft-8b").to_dict(), "run_dir": str(where), "progress_interval": 0}
    return spec, tracking


def train_cli(spec: dict, tracking: dict, where: Path, env=None, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "geopd.cli", "train", "--spec", spec_json(spec), "--tracking",
                           json.dumps(tracking), "--out", str(where / "checkpoints"), "--metrics",
                           str(where / "metrics.jsonl"), "--threads", "1"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def rows_of(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def tensorboard_scalars(logdir: Path) -> dict[str, list]:
    """tag -> [(step, value, wall_time)] as TensorBoard's own reader loads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_same_scalars(events: dict[str, list], rows: list[dict]) -> None:
    """Every scalar of every row at its step, once, equal in float32 (TensorBoard's scalars)."""
    expected: dict[str, list] = {}
    for row in rows:
        for tag, value in scalars(row).items():
            expected.setdefault(tag, []).append((row["step"], np.float32(value)))
    assert sorted(events) == sorted(expected)
    for tag, points in expected.items():
        assert [(s, np.float32(v)) for s, v, _ in events[tag]] == points, tag


def test_scalars_of_a_row_are_its_numbers_with_nested_keys():
    row = {"step": 4, "loss": 0.5, "updates": 2, "run": "x", "ok": True,
           "extrapolation": {"step": 4, "accepted_factor": 2.0, "factors": [0.0, 2.0]}}
    assert scalars(row) == {"loss": 0.5, "updates": 2.0, "ok": 1.0, "extrapolation/step": 4.0,
                            "extrapolation/accepted_factor": 2.0}


def test_tensorboard_equals_metrics_after_a_kill_and_resume(grid, tmp_path):
    spec, tracking = sft(grid, tmp_path / "run")
    proc = train_cli(spec, tracking, tmp_path / "run", {"GEOPD_FAULT_KILL_AT_STEP": "5"}, check=False)
    assert proc.returncode == -signal.SIGKILL
    tb = tmp_path / "run" / "tensorboard"
    killed = tensorboard_scalars(tb)
    assert [s for s, _, _ in killed["loss"]] == [1, 2, 3, 4, 5]  # steps 4 and 5 will be trained again
    progress = read_progress(tmp_path / "run" / "progress.json")
    assert (progress["phase"], progress["step"], progress["steps"]) == ("training", 5, 6)
    assert progress["last"] == {"loss": rows_of(tmp_path / "run" / "state" / "metrics.jsonl")[-1]["loss"]}

    proc = train_cli(spec, tracking, tmp_path / "run")  # the retry resumes from step 3
    assert "resumed sft-8b" in proc.stderr
    rows = rows_of(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    events = tensorboard_scalars(tb)
    assert_same_scalars(events, rows)
    assert len(list(tb.glob("events.out.tfevents.*"))) == 1  # rewritten, not appended to
    # The steps the retry kept keep the wall times of the attempt that wrote them.
    assert [w for _, _, w in events["loss"][:3]] == [w for _, _, w in killed["loss"][:3]]
    # Progress lines: step/total, the loss, time per step, tokens/s and an ETA.
    lines = [l for l in proc.stderr.splitlines() if l.startswith("sft-8b: ") and " steps (" in l]
    assert [l.split()[1] for l in lines] == ["4/6", "5/6", "6/6"], proc.stderr[-2000:]
    assert all("loss " in l and "tokens/s" in l for l in lines) and "ETA" in lines[0] and lines[-1].endswith("done")
    assert "s/step" in lines[1]
    done = read_progress(tmp_path / "run" / "progress.json")
    assert (done["phase"], done["step"], done["resumed_at"]) == ("finished", 6, 3)
    assert done["last"] == {"loss": rows[-1]["loss"]} and done["s_per_step"] > 0


def test_a_fresh_start_rewrites_tensorboard_from_nothing(grid, tmp_path):
    """A run whose settings changed starts over (geopd.train.resume): its old curves go too."""
    spec, tracking = sft(grid, tmp_path / "run")
    assert train_cli(spec, tracking, tmp_path / "run", {"GEOPD_FAULT_SIGTERM_AT_STEP": "4"},
                     check=False).returncode == 75
    changed = {**spec, "optim": {**spec["optim"], "lr": 2 * spec["optim"]["lr"]}, "steps": 3, "checkpoints": [3]}
    train_cli(changed, tracking, tmp_path / "run")
    rows = rows_of(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert_same_scalars(tensorboard_scalars(tmp_path / "run" / "tensorboard"), rows)


# ---- W&B, offline --------------------------------------------------------------------------------

def wandb_records(path: Path):
    """The records of a W&B run file (run-<id>.wandb): W&B's header, then LevelDB-log framed
    protobuf records (32 KiB blocks of chunks: crc32 u32, length u16, type u8 full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, block, parts = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding to the block's end
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            yield record


def wandb_run(run_dir: Path) -> dict:
    """What one offline run directory holds: its id, config and history rows (step -> scalars)."""
    (file,) = run_dir.glob("run-*.wandb")
    out = {"id": None, "config": {}, "history": {}}
    for record in wandb_records(file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["id"] = record.run.run_id
            out["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            step = items.pop("_step")
            out["history"][step] = {k: v for k, v in items.items() if not k.startswith("_")}
    return out


def test_wandb_offline_run_holds_the_same_scalars_and_resumes_by_id(grid, tmp_path):
    spec, tracking = sft(grid, tmp_path / "run")
    tracking["wandb"] = {"project": "geopd-test", "mode": "offline", "group": "slice"}
    env = {"WANDB_API_KEY": "", "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
           "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"), "WANDB_DATA_DIR": str(tmp_path / "wandb-data")}
    # A stop (Slurm's time-limit signal) after step 2, then the retry, which resumes the W&B run.
    assert train_cli(spec, tracking, tmp_path / "run", {**env, "GEOPD_FAULT_SIGTERM_AT_STEP": "2"},
                     check=False).returncode == 75
    train_cli(spec, tracking, tmp_path / "run", env)
    runs = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2, runs  # one directory per attempt, one W&B run id: `wandb sync` joins them
    first, second = (wandb_run(r) for r in runs)
    assert first["id"] == second["id"] and first["id"].startswith("sft-8b-")
    assert sorted(first["history"]) == [1, 2] and sorted(second["history"]) == [3, 4, 5, 6]
    assert first["config"]["run"] == "sft-8b" and first["config"]["optim"] == spec["optim"]
    rows = rows_of(tmp_path / "run" / "metrics.jsonl")
    logged = {**first["history"], **second["history"]}
    assert sorted(logged) == [r["step"] for r in rows]
    for row in rows:  # every scalar, exactly (W&B keeps float64)
        assert logged[row["step"]] == pytest.approx(scalars(row), rel=1e-12, abs=0), row["step"]
    # TensorBoard got the same rows.
    assert_same_scalars(tensorboard_scalars(tmp_path / "run" / "tensorboard"), rows)


def test_wandb_online_without_a_key_stops_with_a_clear_message(grid, tmp_path, monkeypatch):
    from geopd.errors import UserError
    from geopd.spec import RunSpec, WandB
    from geopd.train.tracking import WandbLog

    monkeypatch.setenv("WANDB_API_KEY", "")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))  # no stored key either
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(UserError, match="W&B could not start.*mode: offline"):
        WandbLog(RunSpec.from_dict(sft(grid, tmp_path)[0]), WandB(project="p"), tmp_path, tmp_path / "state")


def test_tracking_spec_from_the_config():
    g = Grid.from_file(SLICE, overrides={"tracking": {"wandb": {"project": "p", "mode": "offline"},
                                                      "progress_interval": 5}})
    t = g.tracking_spec("sft-8b")
    assert t.run_dir == g.layout.run_dir("sft-8b") and t.progress_interval == 5
    assert (t.wandb.project, t.wandb.mode, t.wandb.group) == ("p", "offline", "slice")
    plain = Grid.from_file(SLICE).tracking_spec("sft-8b")
    assert plain.wandb is None and plain.progress_interval == 60.0
    with pytest.raises(SpecError, match="mode"):
        Tracking.from_dict({"wandb": {"project": "p", "mode": "sometimes"}})


# ---- progress lines ------------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_progress_lines_come_at_the_interval_with_an_eta(capsys):
    clock = Clock()
    p = Progress("job", 10, unit="items", interval=30, clock=clock)
    p.begin(2)  # a resumed job: 2 done before this process
    printed = []
    for i in range(3, 11):
        clock.t += 10
        printed.append(p.update(i, "x 1"))
    # first update, then every 30 s, then the last
    assert printed == [True, False, False, True, False, False, True, True]
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "job: 3/10 items (30%), x 1, 10s elapsed, ETA 1m10s"
    assert lines[-1] == "job: 10/10 items (100%), x 1, 1m20s elapsed, done"


def test_duration():
    assert [duration(s) for s in (None, 5, 65, 3600 * 2 + 420, 86400 * 3 + 3600 * 4)] == \
        ["-", "5s", "1m05s", "2h07m", "3d04h"]
