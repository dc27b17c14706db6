"""`geopd status` (geopd.status): the state of every run from the files runs write and from
Slurm's queue, on a results tree laid out here; torch-free and fast. The slice (test_workflow_local)
and the Slurm cluster (test_slurm_cluster) check it on real runs."""
import getpass
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from geopd.grid import Grid
from geopd.status import SlurmJob, Status, parse_squeue, render, squeue_jobs

REPO = Path(__file__).resolve().parents[1]
SLICE = REPO / "tests/configs/slice.yaml"
NOW = 1_800_000_000.0


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def rows(steps, **extra) -> str:
    return "".join(json.dumps({"step": s, "loss": 1.0 / s, **extra}) + "\n" for s in steps)


def progress(run: str, step: int, steps: int, pid: int, **extra) -> str:
    return json.dumps({"run": run, "phase": "training", "step": step, "steps": steps, "started": NOW - 100,
                       "updated": NOW - 5, "s_per_step": 10.0, "eta_s": 10.0 * (steps - step),
                       "last": {"loss": 1.0 / step}, "host": socket.gethostname(), "pid": pid,
                       "slurm_job_id": None, **extra})


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def tree(tmp_path):
    """sft-8b done (evaluated at step 3, diagnosed at 3 and 6), opd-8b-t32b running at step 2 of 4
    (this process), rlvr-8b failed (its process is gone, its log names the error)."""
    grid = Grid.from_file(SLICE)
    L = grid.layout
    R = lambda p: tmp_path / p  # noqa: E731
    (R(L.checkpoints_dir("sft-8b")) / "step-6").mkdir(parents=True)
    write(R(L.metrics_file("sft-8b")), rows(range(1, 7)))
    write(R(L.eval_file("sft-8b", 3, "math-heldout")), json.dumps({"metrics": {"avg@2": 0.25, "pass@2": 0.5}}))
    for step in (3, 6):
        write(R(L.diagnostics_file("sft-8b", step, "attention")), "name\n")
    write(R(L.run_files("opd-8b-t32b").progress), progress("opd-8b-t32b", 2, 4, os.getpid()))
    write(R(L.state_dir("opd-8b-t32b")) / "metrics.jsonl", rows(range(1, 3)))
    write(R(L.run_files("rlvr-8b").progress), progress("rlvr-8b", 1, 4, dead_pid()))
    write(R(L.log("train", "rlvr-8b.log")), "rlvr-8b: 1/4 steps\nTraceback ...\ngeopd train: error: run rlvr-8b: "
                                             "every reward of its first 1 steps was 0\n")
    return grid, tmp_path


def test_states_from_the_files(tree):
    grid, workdir = tree
    st = {s.run: s for s in Status(grid, workdir, jobs=None, now=NOW).all()}
    sft, opd, rlvr = st["sft-8b"], st["opd-8b-t32b"], st["rlvr-8b"]
    assert (sft.state, sft.step, sft.steps, sft.last) == ("done", 6, 6, {"loss": pytest.approx(1 / 6)})
    assert sft.evals == "1/2 step 3: math-heldout avg@2 0.25"
    assert sft.diagnostics.startswith("2/") and "up to step 6" in sft.diagnostics
    assert (opd.state, opd.step, opd.s_per_step, opd.eta_s) == ("running", 2, 10.0, 15.0)  # 20 s, 5 s ago
    assert (rlvr.state, rlvr.step) == ("failed", 1)
    assert "is gone" in rlvr.note and "every reward of its first 1 steps was 0" in rlvr.note
    text = render(list(st.values()), "slice", slurm=False)
    assert text.splitlines()[0].startswith("slice: 3 runs: 1 running, 1 failed, 1 done")
    assert "no Slurm queue here" in text.splitlines()[0]


def test_not_started_and_a_progress_file_from_another_host(tree):
    grid, workdir = tree
    L = grid.layout
    for p in (L.run_files("rlvr-8b").progress, L.log("train", "rlvr-8b.log")):
        (workdir / p).unlink()
    assert Status(grid, workdir, now=NOW).run("rlvr-8b").state == "not started"
    # Another host, no Slurm to ask: live while it was updated lately, failed when stale.
    elsewhere = progress("rlvr-8b", 1, 4, 1, host="node-17")
    write(workdir / L.run_files("rlvr-8b").progress, elsewhere)
    assert Status(grid, workdir, now=NOW).run("rlvr-8b").state == "running"
    assert Status(grid, workdir, now=NOW + 3600).run("rlvr-8b").state == "failed"


def test_slurm_states_win_and_jobs_match_by_comment_and_workdir(tree):
    grid, workdir = tree
    text = "\n".join([
        f"101|RUNNING|geopd_a|rule_train_wildcards_opd-8b-t32b|{workdir}|node1",
        f"102|PENDING|geopd_a|rule_train_wildcards_rlvr-8b|{workdir}|(Priority)",
        f"103|RUNNING|geopd_a|rule_evaluate_wildcards_sft-8b_6_math-heldout|{workdir}|node1",
        f"104|PENDING|geopd_a|rule_diagnose_run_wildcards_sft-8b|{workdir}|(Resources)",
        "105|RUNNING|geopd_b|rule_train_wildcards_sft-8b|/elsewhere|node2",     # another grid's job
        "106|RUNNING|x|something else|/x|node3",                                 # not the plugin's
    ])
    jobs = parse_squeue(text)
    assert [j.id for j in jobs] == ["101", "102", "103", "104", "105"]
    assert jobs[2] == SlurmJob("103", "RUNNING", "evaluate", "sft-8b", str(workdir), "node1", "geopd_a")
    st = {s.run: s for s in Status(grid, workdir, jobs=jobs, now=NOW).all()}
    assert (st["opd-8b-t32b"].state, st["opd-8b-t32b"].slurm) == ("running", "101 RUNNING")
    assert (st["rlvr-8b"].state, st["rlvr-8b"].slurm) == ("queued", "102 PENDING ((Priority))")
    assert st["sft-8b"].state == "done" and st["sft-8b"].slurm == ""
    assert st["sft-8b"].evals.endswith("(+1 running)") and st["sft-8b"].diagnostics.endswith("(+1 queued)")
    # Where Snakemake logged its Slurm run IDs, those name this grid's jobs (whatever their
    # working directory: Snakemake's start directory, not -d's).
    write(workdir / ".snakemake" / "log" / "2026-01-01T000000.snakemake.log", "SLURM run ID: geopd_b\n")
    st = {s.run: s for s in Status(grid, workdir, jobs=jobs, now=NOW).all()}
    assert st["sft-8b"].state == "running" and st["sft-8b"].slurm == "105 RUNNING"
    assert st["opd-8b-t32b"].slurm == "" and st["rlvr-8b"].state == "failed"


def test_squeue_is_asked_for_this_users_jobs(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "squeue"
    write(fake, "#!/bin/sh\necho \"$@\" > " + str(tmp_path / "args") + "\n"
                "echo '7|PENDING|geopd_c|rule_train_wildcards_sft-8b|/w|(Priority)'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    assert squeue_jobs() == [SlurmJob("7", "PENDING", "train", "sft-8b", "/w", "(Priority)", "geopd_c")]
    args = (tmp_path / "args").read_text().split()
    assert args[:3] == ["-h", "-u", getpass.getuser()] and "%i|%T|%j|%k|%Z|%R" in args
    write(fake, "#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm controller' >&2\nexit 1\n")
    assert squeue_jobs() is None  # no answer: the states come from the files alone
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert squeue_jobs() is None


def test_cli_is_fast_and_torch_free(tree):
    grid, workdir = tree
    code = ("import sys, time; t = time.perf_counter(); from geopd.cli import main; "
            f"rc = main(['status', '--configfile', {str(SLICE)!r}, '-d', {str(workdir)!r}, '--no-slurm', '--json']); "
            "assert rc == 0; assert 'torch' not in sys.modules, 'torch imported'; "
            "print('seconds', time.perf_counter() - t)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    assert [(r["run"], r["state"]) for r in out] == [("sft-8b", "done"), ("opd-8b-t32b", "running"),
                                                     ("rlvr-8b", "failed")]
    seconds = float(proc.stdout.split("seconds")[-1])
    assert seconds < 5, seconds
