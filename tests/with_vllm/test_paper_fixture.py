"""The paper grid (config/paper.yaml) on the paper-shaped fixture, through Snakemake, on CPU, in
the vLLM venv: the same rules, loaders, engines (FSDP2 bf16, vLLM rollouts, teacher and
lm-eval evaluation) and report code the cluster runs (issues 14 and 25).

The whole overlay (tests/configs/paper-fixture.yaml), every job of its DAG: data preparation,
every training run, every evaluation and diagnosis (grouped per run, job_grouping in the
overlay), aggregate_eval, aggregate_diagnostics, tables, figures and claims, through
scripts/run-paper-fixture.sh, whose measured time the test session prints at its end (README
"The paper grid on the fixture"). prefetch needs the network; the fixture's hub mirror stands in
for it. tests/test_dag.py checks that the per-checkpoint DAG (one job per checkpoint, what the
paper's Slurm profile submits) makes the same files.
"""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from geopd.grid import Grid

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
PAPER = [REPO / "config/paper.yaml", REPO / "tests/configs/paper-fixture.yaml"]
RESULTS = "results/paper-fixture"

# The whole overlay runs in one fixture, whose time counts toward the first test that uses it.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3 * 3600)]
# A folder where scripts/run-paper-fixture.sh has already run the same targets: the tests check it
# instead of running the overlay again (for working on these tests; CI leaves it unset).
REUSE = os.environ.get("GEOPD_PAPER_FIXTURE_WORKDIR")


def grid() -> Grid:
    return Grid.from_files(PAPER)


def smk(workdir: Path, targets: list[str], *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, *targets, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", *args,
           "--configfile", *map(str, PAPER)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    return proc


def job_counts(text: str) -> dict[str, int]:
    table = text.split("Job stats:")[1] if "Job stats:" in text else ""
    return {m.group(1): int(m.group(2)) for line in table.splitlines()
            if (m := re.match(r"^(\w+)\s+(\d+)$", line.strip())) and m.group(1) != "total"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    from geopd.fixture import build

    if REUSE:
        return Path(REUSE).resolve()
    work = tmp_path_factory.mktemp("paper-fixture")
    build(work / RESULTS / "mirror")
    return work


def targets() -> list[str]:
    """The whole DAG ("all": through tables, figures and claims) and every data set, also those
    that no run of the paper config reads yet (each loader runs on its hub schema)."""
    return ["all", *(grid().data_dir(d) for d in grid().datasets)]


@pytest.fixture(scope="module")
def planned(workdir) -> dict[str, int]:
    """The whole DAG's jobs per rule (a dry run, as if nothing had run)."""
    return job_counts(smk(workdir, targets(), "-n", "--forceall", "--quiet", "rules").stdout)


@pytest.fixture(scope="module")
def done(workdir, planned) -> tuple[Path, str]:
    """Every job of the paper DAG, grouped, as scripts/run-paper-fixture.sh runs it."""
    proc = subprocess.run(["bash", str(REPO / "scripts/run-paper-fixture.sh"), str(workdir), *targets()], cwd=REPO,
                          capture_output=True, text=True, timeout=3 * 3600)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]
    timing = [line for line in proc.stdout.splitlines() if line.startswith("run-paper-fixture:")]
    assert timing, proc.stdout[-2000:]
    return workdir / RESULTS, timing[-1]


def test_the_whole_dag_is_grouped_and_reaches_every_report_rule(planned):
    g = grid()
    assert g.grouping("evaluate") == g.grouping("diagnose") == "run"
    assert {"aggregate_eval", "aggregate_diagnostics", "tables", "figures", "claims", "all"} <= set(planned)
    assert planned["prepare_data"] == len(g.datasets) == 9
    assert planned["train"] == len(g.runs)
    assert planned["evaluate_run"] == len(g.eval_runs())


def test_the_whole_overlay_runs_end_to_end(done, workdir, planned, record_property):
    results, timing = done
    record_property("timing", f"{timing} [{sum(planned.values())} jobs planned]")
    g = grid()
    # Nothing left to do: every job of the DAG ran.
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(smk(workdir, targets(), "-n"))
    for target in g.final_targets():  # tables, figures and claims of the complete grid
        assert (workdir / target).stat().st_size > 0, target
    for name, data in g.datasets.items():  # every loader, on the hub schemas
        info = json.loads((results / "data" / name / "info.json").read_text())
        assert info["counts"][data.get("as_split", "train")] > 0, name
    for run, r in g.runs.items():
        rows = [json.loads(line) for line in (results / "runs" / run / "metrics.jsonl").read_text().splitlines()]
        assert [row["step"] for row in rows] == list(range(r.start_step + 1, r.steps + 1)), run
        assert all(row["loss"] == row["loss"] for row in rows), run  # no NaN
        assert sorted(p.name for p in (results / "runs" / run / "checkpoints").glob("step-*")) == \
            sorted(f"step-{s}" for s in r.saved_steps), run  # checkpoints and eval_at's steps
    for row in (json.loads(line) for line in (results / "runs/opd-8b-t32b/metrics.jsonl").read_text().splitlines()):
        assert row["updates"] == 2 and row["samples"] == 8  # 4 prompts x 2 samples, 4 samples an update
    evaluated = sorted((results / "eval").glob("**/*.json"))
    assert len(evaluated) == len(g.eval_targets())
    for path in evaluated:
        result = json.loads(path.read_text())
        assert result["generation"]["backend"] == "vllm" and result["n"] > 0, path
        samples = path.with_suffix("").with_suffix(".samples.jsonl").read_text().splitlines()
        assert len(samples) == result["n"] * result["samples_per_problem"], path
        if result["kind"] == "lcb":
            assert result["sandbox"]["isolated"], result["sandbox"]
    for run in g.similarity_runs():
        assert len((results / "diagnostics" / run / "similarity.csv").read_text().splitlines()) > 1, run


def test_grouped_evaluations_share_one_engine_per_run(done):
    """Each run's evaluation job (geopd batch) started one vLLM engine (its benchmarks share the
    engine settings) and loaded every other checkpoint into it; no traceback-hook wrapping
    ("[rank0]: " per engine), and its memory after the second evaluation stayed within 256 MiB."""
    results, _ = done
    g = grid()
    for run in g.eval_runs():
        log = (results / "logs" / "evaluate" / f"{run}.log").read_text()
        n = len(g.eval_run_targets(run))
        targets = g.eval_run_targets(run)  # (step, benchmark), benchmark by benchmark
        starts = log.count("geopd evaluate: starting a vLLM engine")
        loads = log.count("into the running engine")
        changes = sum(a[0] != b[0] for a, b in zip(targets, targets[1:]))
        # One engine unless a benchmark needs other engine settings (then one per such change, at
        # most one per benchmark); every other change of checkpoint is a load into the running one.
        assert starts == 1 + log.count("needs other engine settings"), run
        assert starts <= len({b for _, b in targets}), run
        assert loads <= changes <= loads + starts - 1, run
        assert "[rank0]" not in log, run
        rss = [float(m) for m in re.findall(r"geopd batch: command \d+/\d+: geopd evaluate done in .*, rss (\d+) MiB", log)]
        assert len(rss) == n, run
        if n > 2:
            assert max(rss[1:]) - rss[1] <= 256, (run, rss)


def test_no_claim_is_yes_on_random_models(done):
    """Random fixture models earn no reward and their teachers are no stronger than their
    students: no claim may rest on them (README "Reading the paper")."""
    results, _ = done
    claims = list(csv.DictReader((results / "tables" / "claims.csv").open()))
    assert claims and not [c["id"] for c in claims if c["reproduced"] == "yes"]
