"""The CI slice of the miniature grid end to end through Snakemake on this CPU, then what a
researcher does next: rerun one rule, resume after a killed run, build the report."""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
SLICE = REPO / "tests" / "configs" / "slice.yaml"
# The slice as the miniature runs it: evaluations and diagnoses grouped by run.
CONFIGS = [str(SLICE), str(REPO / "tests" / "configs" / "slice-grouped.yaml")]

pytestmark = pytest.mark.slow


def smk(workdir: Path, *args: str, env=None, timeout=900) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile", *CONFIGS,
           "--cores", "2", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout + proc.stderr


def planned(workdir: Path, *args: str) -> dict[str, int]:
    """Rule -> job count of a dry run."""
    text = ok(smk(workdir, "-n", "--quiet", "rules", *args))
    if "Job stats:" not in text:
        return {}
    counts = {}
    for line in text.split("Job stats:")[1].splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) not in ("total", "all"):
            counts[m.group(1)] = int(m.group(2))
    return counts


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("slice")
    ok(smk(workdir))
    return workdir


def test_slice_builds_every_table_figure_and_the_claims_check(done):
    tables = done / "results" / "tables"
    for name in ("table1_sparsity", "update_masks", "effopd_spectral", "accuracy", "teachers", "claims"):
        assert (tables / f"{name}.csv").stat().st_size > 0 and (tables / f"{name}.md").stat().st_size > 0
    for fig in (done / "results" / "figures").glob("*.png"):
        assert fig.stat().st_size > 1000
    accuracy = (tables / "accuracy.csv").read_text().splitlines()
    assert any(line.startswith("opd-8b-t32b,") for line in accuracy)
    # No verdict rests on a run that did not move (on the slice RLVR makes no update).
    with open(tables / "missing.csv") as f:
        still = {row["subject"] for row in csv.DictReader(f) if row["problem"] == "did not move"}
    with open(tables / "claims.csv") as f:
        for row in csv.DictReader(f):
            assert row["reproduced"] == "insufficient data" or not still & set(row["runs"].split(", ")), row
    assert planned(done) == {}  # nothing left to do


def test_each_runs_tensorboard_equals_its_metrics_and_status_says_done(done, tmp_path):
    """After the slice, each run's TensorBoard scalars are its metrics.jsonl rows, in number and
    value; `geopd status` says done for each; and changing the tracking settings (W&B here)
    reruns nothing."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from geopd.grid import Grid
    from geopd.train.tracking import scalars

    grid = Grid.from_files(CONFIGS)
    for run in grid.runs:
        rows = [json.loads(l) for l in (done / grid.metrics_file(run)).read_text().splitlines()]
        acc = EventAccumulator(str(done / grid.layout.run_files(run).tensorboard), size_guidance={"scalars": 0})
        acc.Reload()
        assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(r["step"], np.float32(r["loss"])) for r in rows]
        for tag in {t for r in rows for t in scalars(r)}:
            assert [(e.step, e.value) for e in acc.Scalars(tag)] == \
                [(r["step"], np.float32(scalars(r)[tag])) for r in rows if tag in scalars(r)], (run, tag)
    proc = subprocess.run([str(Path(sys.executable).parent / "geopd"), "status", "--configfile", *CONFIGS,
                           "-d", str(done), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    states = [json.loads(l) for l in proc.stdout.splitlines()]
    assert [(s["run"], s["state"], s["step"]) for s in states] == \
        [(r, "done", grid.runs[r].steps) for r in grid.runs]
    overlay = tmp_path / "tracking.yaml"
    overlay.write_text("tracking: {wandb: {project: p, mode: offline}, progress_interval: 5}\n")
    proc = subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(done), "--configfile", *CONFIGS,
                           str(overlay), "-n", "--quiet", "rules"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "Job stats:" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_grouped_jobs_write_every_per_checkpoint_file(done):
    from geopd.grid import Grid

    grid = Grid.from_files(CONFIGS)
    assert grid.grouping("evaluate") == grid.grouping("diagnose") == "run"
    for f in grid.eval_files():  # the per-checkpoint layout the report reads
        result = json.loads((done / f).read_text())
        assert result["n"] == 12 and (done / f.replace(".json", ".samples.jsonl")).stat().st_size > 0
    for run, step, matrices in grid.diagnostics_targets():
        assert (done / grid.diagnostics_file(run, step, matrices)).stat().st_size > 0
    for run in grid.similarity_runs():
        assert (done / grid.similarity_file(run)).stat().st_size > 0
    log = (done / "results" / "logs" / "evaluate" / "opd-8b-t32b.log").read_text()
    assert "command 2/2: geopd evaluate done" in log  # both checkpoints in one process


def test_forcerun_recomputes_only_what_depends_on_the_rule(done):
    counts = planned(done, "--forcerun", "diagnose_run")
    assert counts.get("diagnose_run") == 3
    assert not {"train", "evaluate_run", "prepare_data", "pretrain_model"} & set(counts)
    assert {"aggregate_diagnostics", "tables", "figures", "claims"} <= set(counts)
    # -R on one run's training: that run and what uses its checkpoints, not the other runs.
    counts = planned(done, "-R", "results/runs/rlvr-8b/checkpoints")
    assert counts["train"] == 1 and "pretrain_model" not in counts and "finetune_model" not in counts
    # --until stops at the named rule. (`--forcerun train --until train` trips Snakemake's
    # dry-run bug #823 because runs train from other runs' checkpoints; targets work there.)
    counts = planned(done, "--forcerun", "diagnose_run", "--until", "diagnose_run")
    assert set(counts) == {"diagnose_run"}


def test_moving_the_gpu_environment_reruns_nothing(done, tmp_path):
    """The GPU rules run `{resources.geopd}`: once their jobs request GPUs they name another
    `geopd` by path (the dry run shows it), and a finished grid stays finished: resources are no
    rerun trigger, and neither the rules' code nor their params hold the path."""
    import yaml

    elsewhere = tmp_path / "elsewhere venv"
    overlay = tmp_path / "gpu-env.yaml"
    overlay.write_text(yaml.safe_dump({"environments": {"gpu": str(elsewhere)},
                                       "resources": {"train": {"gpus": 1}, "evaluate": {"gpus": 1}}}))
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(done), "--configfile", *CONFIGS, str(overlay),
           "--cores", "2", "-n"]
    shown = ok(subprocess.run([*cmd, "-p", "--forcerun", "evaluate_run", "--until", "evaluate_run"], cwd=REPO,
                              capture_output=True, text=True, timeout=300))
    assert f"{elsewhere / 'bin' / 'geopd'}' batch --commands" in shown, shown[-3000:]
    out = ok(subprocess.run([*cmd, "--quiet", "rules"], cwd=REPO, capture_output=True, text=True, timeout=300))
    assert "Job stats:" not in out, out[-3000:]


def test_killed_workflow_leaves_no_half_written_output_and_resumes(done):
    target = "results/runs/sft-8b/checkpoints"
    final = done / target / "step-6" / "model.safetensors"
    reference = final.read_bytes()
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(done), "--configfile", *CONFIGS,
           "--cores", "1", "--forcerun", "train", "--", target]
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, GEOPD_FAULT_STEP_DELAY="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    state = done / "results" / "runs" / "sft-8b" / "state"
    deadline = time.time() + 300
    while not any(state.glob("state-00000003")):
        assert proc.poll() is None and time.time() < deadline, "training never reached step 3"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and the trainer die together
    proc.wait()
    # Snakemake's output was removed before the job started and the trainer publishes its
    # outputs only when done: nothing half-written carries the output's name.
    assert not (done / target).exists()
    assert not (done / "results" / "runs" / "sft-8b" / "metrics.jsonl").exists()
    ok(smk(done, "--unlock"))  # a SIGKILLed Snakemake leaves its lock: the documented first step
    ok(smk(done, "--rerun-incomplete", "--", target))
    assert final.read_bytes() == reference
    log = (done / "results" / "logs" / "train" / "sft-8b.log").read_text()
    assert re.search(r"resumed sft-8b from \S+ \(step 3\)", log), log[-1500:]
    steps = [json.loads(line)["step"] for line in
             (done / "results" / "runs" / "sft-8b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


def test_report_collects_tables_and_figures(done):
    from geopd.paths import FIGURES, TABLES

    ok(smk(done, "--report", str(done / "report.html")))
    html = (done / "report.html").read_text(errors="replace")
    # Every table and figure (CSV and Markdown, PNG and PDF) with its own caption, rendered from
    # workflow/report/<family>/<name>.rst; the claims check and missing.md with theirs.
    captioned = re.findall(r'"caption": "<p><strong>([\w]+)</strong>', html)
    assert sorted(captioned) == sorted(2 * (TABLES + FIGURES))
    assert html.count('"labels": {"file": "claims"') == html.count('"labels": {"file": "missing"') == 2
    assert "var workflow_desc" in html and "reproduced on the grid" in html
    # Each run's training curves, under "Training curves", with the caption naming the run.
    for run in ("sft-8b", "opd-8b-t32b", "rlvr-8b"):
        assert f"Training curves of run {run}" in html, run
