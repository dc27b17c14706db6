"""The workflow's DAG through the Snakemake CLI (dry runs: no GPU, no network) vs. the planner."""
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from geopd.grid import Grid
from geopd.plan import build_jobs, select, summarize

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def dry_run(repo, *args, workdir):
    """A dry run in an empty working directory: outputs of a real run in the repo don't count."""
    proc = subprocess.run([SNAKEMAKE, "-n", "--quiet", "rules", "-s", str(repo / "Snakefile"), "-d", str(workdir),
                           *args], cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def job_counts(text: str) -> dict[str, int]:
    table = text.split("Job stats:")[1]
    counts = {}
    for line in table.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/paper.yaml"])
def test_dry_run_matches_planner(repo, configfile, tmp_path):
    out = dry_run(repo, "--configfile", str(repo / configfile), workdir=tmp_path)
    counts = job_counts(out)
    counts.pop("all")
    planned = summarize(build_jobs(Grid.from_file(repo / configfile)))["per_rule"]
    assert counts == {rule: row["jobs"] for rule, row in planned.items()}


@pytest.mark.parametrize("grouping", [{"evaluate": "checkpoint", "diagnose": "checkpoint"},
                                      {"evaluate": "run", "diagnose": "checkpoint"},
                                      {"evaluate": "checkpoint", "diagnose": "run"}])
def test_job_grouping_matches_planner_and_keeps_the_work(repo, tmp_path, grouping):
    """Grouped or not, Snakemake and the planner agree; the per-checkpoint work is the same."""
    override = tmp_path / "grouping.yaml"
    override.write_text(f"job_grouping: {json.dumps(grouping)}\n")
    files = [repo / "config/config.yaml", override]
    out = dry_run(repo, "--configfile", *map(str, files), workdir=tmp_path / "wd")
    counts = job_counts(out)
    counts.pop("all")
    grid = Grid.from_files(files)
    assert counts == {rule: row["jobs"] for rule, row in summarize(build_jobs(grid))["per_rule"].items()}
    runs_evaluated = {r for r, step, _ in grid.eval_targets() if step != "model"}
    if grouping["evaluate"] == "run":
        assert counts["evaluate_run"] == len(runs_evaluated) and "evaluate" not in counts
    else:
        assert counts["evaluate"] == sum(step != "model" for _, step, _ in grid.eval_targets())
    if grouping["diagnose"] == "run":
        assert counts["diagnose_run"] == len({r for r, _, _ in grid.diagnostics_targets()})
        assert "diagnose" not in counts and "similarity" not in counts
    else:
        assert counts["diagnose"] == len(grid.diagnostics_targets())
        assert counts["similarity"] == len(grid.similarity_runs())


def grouped_and_per_checkpoint(repo, tmp_path, files, workdir=None):
    """Dry runs of `files` (grouped per run) and of `files` + job_grouping checkpoint (one job per
    checkpoint, what --profile slurm submits by default): the per-checkpoint commands inside the
    grouped jobs' batches and outside, the per-checkpoint jobs' commands, and both job counts."""
    override = tmp_path / "checkpoint.yaml"
    override.write_text('job_grouping: {evaluate: checkpoint, diagnose: checkpoint}\n')
    shell, counts = {}, {}
    for name, configs in (("run", files), ("checkpoint", [*files, override])):
        out = subprocess.run([SNAKEMAKE, "-n", "-p", "-s", str(repo / "Snakefile"), "-d", str(workdir or tmp_path / name),
                              "--configfile", *map(str, configs)], cwd=repo, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        text = out.stdout + out.stderr
        shell[name] = [shlex.split(line.removeprefix("Shell command: ").split(" 2> ")[0])
                       for line in text.splitlines() if line.startswith("Shell command: geopd ")]
        counts[name] = job_counts(text)
    per_checkpoint = {tuple(c[1:]) for c in shell["checkpoint"] if c[1] in ("evaluate", "diagnose", "similarity")}
    batched = {tuple(c) for cmd in shell["run"] if cmd[1] == "batch" for c in json.loads(cmd[3])}
    # the models' evaluations and the reference pairs' diagnoses stay single jobs
    batched |= {tuple(c[1:]) for c in shell["run"] if c[1] in ("evaluate", "diagnose", "similarity")}
    return batched, per_checkpoint, counts


def test_grouped_jobs_run_the_per_checkpoint_commands(repo, tmp_path):
    """A per-run job's commands are exactly the per-checkpoint jobs' commands (same files, seeds,
    benchmark specs), and the aggregate rules wait for the runs' folders."""
    batched, per_checkpoint, _ = grouped_and_per_checkpoint(repo, tmp_path, [repo / "config/config.yaml"])
    assert batched == per_checkpoint and len(batched) > 100
    grid = Grid.from_file(repo / "config/config.yaml")
    assert grid.grouping("evaluate") == grid.grouping("diagnose") == "run"
    assert all(Path(p).parent == grid.results / "eval" or "/models/" in p for p in grid.eval_inputs())


def test_paper_fixture_grouped_and_per_checkpoint_dags_make_the_same_files(repo, tmp_path):
    """The paper grid on the fixture runs grouped per run (tests/configs/paper-fixture.yaml; CI
    runs all of it, tests/with_vllm/test_paper_fixture.py); the paper's GPU jobs are one per
    checkpoint. Both DAGs run the same evaluate / diagnose / similarity commands (so write the
    same files) and the same jobs of every other rule, through to tables, figures and claims, and
    Snakemake agrees with the planner on each."""
    from geopd.fixture import build

    files = [repo / "config/paper.yaml", repo / "tests/configs/paper-fixture.yaml"]
    workdir = tmp_path / "wd"
    build(workdir / "results/paper-fixture/mirror")
    batched, per_checkpoint, counts = grouped_and_per_checkpoint(repo, tmp_path, files, workdir=workdir)
    assert batched == per_checkpoint and len(batched) > 200
    grouping = {"evaluate", "evaluate_run", "diagnose", "diagnose_run", "similarity"}
    assert {r: n for r, n in counts["run"].items() if r not in grouping} == \
        {r: n for r, n in counts["checkpoint"].items() if r not in grouping}
    assert {"tables", "figures", "claims", "aggregate_eval", "aggregate_diagnostics"} <= set(counts["run"])
    assert "evaluate_run" in counts["run"] and "evaluate" not in counts["run"]
    for name, configs in (("run", files), ("checkpoint", [*files, tmp_path / "checkpoint.yaml"])):
        planned = summarize(build_jobs(Grid.from_files(configs)))["per_rule"]
        planned.pop("prefetch")  # the fixture's mirror stands in for it
        assert {r: n for r, n in counts[name].items() if r != "all"} == {r: row["jobs"] for r, row in planned.items()}


def test_paper_dry_run_trains_every_spec_row(repo):
    grid = Grid.from_file(repo / "config/paper.yaml")
    targets = [grid.checkpoints_dir(r) for r in grid.runs]
    proc = subprocess.run([SNAKEMAKE, *targets, "-n", "--configfile", "config/paper.yaml"],
                          cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # prefetch: the 3 Base inits and 4 teachers, and the 3 training data sets, into the hub mirror
    assert job_counts(proc.stdout) == {"train": 26, "prepare_data": 3, "prefetch": 10}
    trained = set(re.findall(r"results/paper/runs/([^/\s,]+)/checkpoints", proc.stdout))
    assert trained == set(grid.runs)


def test_bad_config_stops_workflow_naming_key_and_file(repo, tmp_path):
    bad = tmp_path / "bad.yaml"
    text = (repo / "config/config.yaml").read_text().replace("sim_k: 16", "sim_k: 16\n  simk: 3")
    bad.write_text(text)
    proc = subprocess.run([SNAKEMAKE, "-n", "--configfile", str(bad)], cwd=repo,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "'simk'" in proc.stderr + proc.stdout and str(bad) in proc.stderr + proc.stdout


def test_planner_targets_and_sums(repo):
    grid = Grid.from_file(repo / "config/paper.yaml")
    jobs = build_jobs(grid)
    only = select(jobs, grid, ["opd-8b-t32b"])
    assert set(only) == {"train:opd-8b-t32b", "train:sft-8b", "prepare_data:dapo-math-17k",
                         "prepare_data:dolci-think-sft", "prefetch:models/Qwen/Qwen3-8B-Base",
                         "prefetch:models/Qwen/Qwen3-32B", "prefetch:datasets/BytedTsinghua-SIA/DAPO-Math-17k",
                         "prefetch:datasets/allenai/Dolci-Think-SFT-7B"}
