"""Issue 23: bad input is refused before anything runs, by `geopd plan` and by the workflow
(`snakemake -n`) alike, one line per problem naming the file and key, exit status 2, never a
traceback. One test per finding of the issue (numbered as there), then the battery of
tests/config_battery.py through both command lines."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from config_battery import CASES
from geopd.config import read_yaml
from geopd.errors import UserError
from geopd.grid import Grid

REPO = Path(__file__).resolve().parents[1]
MINI, PAPER, LITERAL = REPO / "config/config.yaml", REPO / "config/paper.yaml", REPO / "config/paper-literal.yaml"
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def overlay(tmp_path, text: str, name: str = "overlay.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def plan(*configfiles, args=()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geopd.cli", "plan", "--configfile", *map(str, configfiles), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def dry_run(workdir, *configfiles, args=()) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, "-n", "--quiet", "rules", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                           "--configfile", *map(str, configfiles), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def refused(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    for fragment in fragments:
        assert fragment in out, (fragment, out[-3000:])
    return out


def grid_problems(*configfiles) -> list[str]:
    from geopd.grid.checks import problems

    return problems(Grid.load(configfiles))


# ---- 1. no output may equal or live inside an input --------------------------------------------

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from test_diagnostics import toy_model, tuned_from, write_ckpt

    root = tmp_path_factory.mktemp("ckpt")
    base = toy_model(0)
    return write_ckpt(root / "base", base), write_ckpt(root / "tuned", tuned_from(base))


@pytest.mark.parametrize("where", ["the file", "inside"])
def test_1_diagnose_never_writes_over_its_input(tmp_path, checkpoints, capsys, where):
    from geopd.cli import main

    base, tuned = checkpoints
    weights = tuned / "model.safetensors"
    before = weights.read_bytes()
    summary = weights if where == "the file" else tuned / "summary.json"
    rc = main(["diagnose", "--base", str(base), "--tuned", str(tuned), "--out", str(tmp_path / "d.csv"),
               "--summary", str(summary), "--k", "4", "--r", "2", "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and f"--summary {summary}" in err and "--tuned" in err, err
    assert weights.read_bytes() == before and not (tuned / "summary.json").exists()
    assert not (tmp_path / "d.csv").exists()  # refused before any work


def test_1_outputs_equal_to_each_other_or_an_evaluated_model_are_refused(tmp_path, checkpoints):
    from geopd.io.outputs import check_outputs

    base, tuned = checkpoints
    with pytest.raises(UserError, match="two outputs cannot be one file"):
        check_outputs({"--out": tmp_path / "a.csv", "--summary": tmp_path / "a.csv"}, {})
    with pytest.raises(UserError, match=r"--samples .* lies inside the input --model"):
        check_outputs({"--out": tmp_path / "r.json", "--samples": tuned / "s.jsonl"}, {"--model": str(tuned)})
    check_outputs({"--out": tmp_path / "r.json"}, {"--model": "Qwen/Qwen3-8B", "--checkpoints": [base, tuned]})


# ---- 2. every path quoted in every rule ----------------------------------------------------------

def spaced_config(tmp_path) -> Path:
    config_dir = tmp_path / "config dir"
    config_dir.mkdir()
    path = config_dir / "slice with spaces.yaml"
    path.write_text((REPO / "tests/configs/slice.yaml").read_text() + '\nresults: "out put/res ults"\n')
    return path


def test_2_every_shell_command_keeps_spaced_paths_whole(tmp_path):
    """Every job of the slice (both groupings), dry-run with spaces in the results path, the working
    directory and the config path: each path in each printed shell command is one argument."""
    config = spaced_config(tmp_path)
    grouping = overlay(tmp_path / "config dir", "job_grouping: {evaluate: run, diagnose: run}\n", "per run.yaml")
    rules = set()
    for files in ([config], [config, grouping]):
        proc = subprocess.run([SNAKEMAKE, "-n", "-p", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "work dir"),
                               "--configfile", *map(str, files)], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        text = proc.stdout + proc.stderr
        rules |= set(re.findall(r"^rule (\w+):", text, re.M)) | set(re.findall(r"^localrule (\w+):", text, re.M))
        commands = [line.removeprefix("Shell command: ") for line in text.splitlines()
                    if line.startswith("Shell command: ") and line != "Shell command: None"]  # None: a run: block
        assert len(commands) > 20
        for command in commands:
            words = shlex.split(command)
            assert not any(w.startswith(("put/", "ults/")) or w in ("out", "out put/res") for w in words), command
            spaced = [w for w in words if "res ults" in w and not w.startswith(("{", "["))]  # JSON specs: whole
            assert spaced and all(w.startswith("out put/res ults") for w in spaced), command
    assert {"prepare_data", "train", "evaluate", "evaluate_run", "diagnose", "similarity", "diagnose_run",
            "aggregate_eval", "aggregate_diagnostics", "tables", "figures", "claims"} <= rules


def test_2_a_real_job_with_spaces_in_every_path(tmp_path):
    config = spaced_config(tmp_path)
    workdir = tmp_path / "work dir"
    target = "out put/res ults/data/math"
    proc = subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile", str(config),
                           "--cores", "1", target], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = workdir / "out put" / "res ults"
    assert (results / "data" / "math" / "test.jsonl").is_file()
    log = results / "logs" / "prepare_data" / "math.log"
    assert log.is_file()
    assert sorted(p.name for p in workdir.iterdir()) == [".snakemake", "out put"]  # no stray files


# ---- 3. a run named like a model ----------------------------------------------------------------

def test_3_name_clash_between_a_run_and_a_model_is_refused(tmp_path):
    clash = overlay(tmp_path, "runs:\n  qwen3-8b-base: {method: sft, init: qwen3-4b-base}\n")
    with pytest.raises(UserError, match=rf"{re.escape(str(clash))}: runs\.qwen3-8b-base: 'qwen3-8b-base' names "
                                        r"both a run and a model"):
        Grid.from_files([MINI, clash])


# ---- 4. every float finite ------------------------------------------------------------------------

@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_4_non_finite_numbers_are_refused(tmp_path, value):
    bad = overlay(tmp_path, f"runs:\n  opd-8b-t32b:\n    optim: {{lr: {value}}}\n")
    with pytest.raises(UserError, match=rf"{re.escape(str(bad))}: runs\.opd-8b-t32b\.optim\.lr: -?(nan|inf) "
                                        r"is not a finite number"):
        Grid.from_files([MINI, bad])


# ---- 5. jobs that cannot start ---------------------------------------------------------------------

def test_5_no_gpu_for_a_cuda_job_is_refused(tmp_path):
    no_gpus = overlay(tmp_path, "resources:\n  evaluate: {gpus: 0}\n")
    # the grid's placement check (Grid.placement_problems, issue 22) refuses these first
    refused(plan(PAPER, no_gpus), str(no_gpus), "resources.evaluate: device cuda, but gpus is 0: evaluations would "
                                                "have no GPU")
    train = overlay(tmp_path, "runs:\n  rlvr-8b: {resources: {gpus: 0}}\n", "train.yaml")
    refused(plan(PAPER, train), str(train), "runs.rlvr-8b: device cuda, but resources train gpus is 0: the job would "
                                            "have no GPU")


def test_5_benchmark_response_beyond_its_engine_is_refused(tmp_path):
    bad = overlay(tmp_path, "benchmarks:\n  aime24: {max_new_tokens: 40000}\n")
    refused(plan(PAPER, bad), "benchmarks.aime24.max_new_tokens: 40000 tokens do not fit max_model_len 32768")
    assert grid_problems(PAPER, bad) == [
        f"{bad}: benchmarks.aime24.max_new_tokens: 40000 tokens do not fit max_model_len 32768 beside a prompt: "
        f"lower max_new_tokens or raise max_model_len"]
    short = overlay(tmp_path, "benchmarks:\n  aime24: {max_model_len: 31000}\n", "short.yaml")
    refused(plan(PAPER, short), "benchmark aime24: max_model_len 31000 is shorter than a prompt (2048) + "
                                "max_new_tokens (30720)")


# ---- 6. global_batch_size beyond a step's samples ------------------------------------------------

def test_6_global_batch_above_the_step_is_refused_and_counted_as_the_trainer_does(tmp_path):
    from geopd import costmodel as cm
    from geopd.train.batching import num_updates

    bad = overlay(tmp_path, "runs:\n  rlvr-8b: {rollout: {global_batch_size: 100000}}\n")
    refused(plan(PAPER, bad), "runs.rlvr-8b.rollout.global_batch_size: 100000 samples per update")
    assert grid_problems(PAPER, bad) == [
        f"{bad}: runs.rlvr-8b.rollout.global_batch_size: 100000 samples per update, but a step samples only "
        f"64 prompts x 8 = 512: at most 512"]
    grid = Grid.from_files([MINI])
    for run in grid.runs.values():
        if run.settings.rollout is not None:
            r = run.settings.rollout
            assert cm.updates_info(run)["updates_per_step"] == num_updates(r.samples_per_step, r.global_batch_size)


# ---- 7. a benchmark on an unknown data set ---------------------------------------------------------

def test_7_benchmark_on_an_unknown_data_set_names_the_key(tmp_path):
    bad = overlay(tmp_path, "benchmarks:\n  math-heldout: {data: math500}\n")
    out = refused(plan(MINI, bad), f"{bad}: benchmarks.math-heldout.data: unknown data set 'math500'")
    assert "KeyError" not in out
    refused(dry_run(tmp_path / "wd", MINI, bad), f"{bad}: benchmarks.math-heldout.data: unknown data set 'math500'")


# ---- 8. diagnose checks that it can write before it computes ---------------------------------------

def test_8_diagnose_refuses_an_unwritable_output_before_reading_anything(tmp_path, capsys):
    from geopd.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc = main(["diagnose", "--base", str(tmp_path / "no-base"), "--tuned", str(tmp_path / "no-tuned"),
               "--out", str(tmp_path / "d.csv"), "--summary", str(blocker / "s.json")])
    err = capsys.readouterr().err
    assert rc == 2 and f"--summary {blocker / 's.json'} cannot be created: {blocker} is a file" in err, err
    rc = main(["similarity", "--init", str(tmp_path / "x"), "--checkpoints", str(tmp_path / "y"),
               "--out", str(tmp_path)])
    assert rc == 2 and "output must end in .parquet or .csv" in capsys.readouterr().err
    rc = main(["similarity", "--init", str(tmp_path / "x"), "--checkpoints", str(tmp_path / "y"),
               "--out", str(blocker / "s.csv")])
    assert rc == 2 and "cannot be created" in capsys.readouterr().err


# ---- 9. a key repeated in one file -----------------------------------------------------------------

def test_9_repeated_keys_are_refused_with_file_and_line(tmp_path):
    text = MINI.read_text().replace("  sft-4b:        {family: sft-anchor,",
                                    "  sft-4b:        {family: sft-anchor, steps: 11, steps: 22,")
    bad = overlay(tmp_path, text, "dup.yaml")
    line = text[:text.index("steps: 22")].count("\n") + 1
    with pytest.raises(UserError, match=rf"dup\.yaml:{line}: key 'steps' appears twice in one mapping"):
        read_yaml(bad)
    merged = overlay(tmp_path, "x: &x {a: 1}\ny:\n  <<: *x\n  a: 2\n", "merge.yaml")
    assert read_yaml(merged)["y"] == {"a": 2}  # a merge key's keys may be overridden


# ---- 10. YAML errors under Snakemake name the file and line ----------------------------------------

@pytest.mark.parametrize("text, fragment", [
    ("name: x\nruns: [a, b\nseed: 1\n", "bad config.yaml:3: not valid YAML"),
    ("runs:\n\tsft-8b: {}\n", "bad config.yaml:2: a tab character"),
    ("runs: *nope\n", "bad config.yaml:1: not valid YAML, column 7: found undefined alias 'nope'"),
    ("", "bad config.yaml: empty (no keys)"),
    ("- a\n- b\n", "bad config.yaml:1: the top level is a list"),
])
def test_10_snakemake_names_file_and_line_of_a_yaml_error(tmp_path, text, fragment):
    bad = overlay(tmp_path, text, "bad config.yaml")
    out = refused(dry_run(tmp_path / "wd", bad), fragment)
    assert "not valid JSON or YAML" not in out and "keys at top level" not in out


# ---- 11. README's plan command ---------------------------------------------------------------------

def test_11_readme_plan_command_with_a_run_after_the_config():
    res = Grid.from_files([PAPER]).resources("train", "rlvr-8b")
    title = f"train rlvr-8b: {res['nodes']} node(s) x {res['gpus']} GPU(s)"
    proc = plan(PAPER, args=["rlvr-8b", "--detail"])
    assert proc.returncode == 0, proc.stderr
    assert title in proc.stdout and "train opd-8b-t32b" not in proc.stdout
    proc = plan(PAPER, "rlvr-8b", args=["--detail"])
    assert proc.returncode == 0 and title in proc.stdout, proc.stderr


# ---- 12. partition caps refused by the plan too ----------------------------------------------------

@pytest.mark.parametrize("text, fragment", [
    # the runtime is train_resources' (config/paper.yaml), the cap the overlay's: both named
    ("resources:\n  train: {max_runtime: 2000}\n", f"{PAPER}, {{bad}}: train_resources.rlvr-8b: "
                                                   f"runtime 5220 min exceeds max_runtime 2000 (rule train, run rlvr-8b)"),
    ("resources:\n  evaluate: {mem_mb: 950000}\n", "mem_mb 950000 exceeds max_mem_mb 900000 (rule evaluate)"),
])
def test_12_plan_refuses_requests_above_the_partition_caps(tmp_path, text, fragment):
    bad = overlay(tmp_path, text)
    refused(plan(PAPER, bad), fragment.replace("{bad}", str(bad)), str(bad))


# ---- 13. a self-referencing run, a missing local checkpoint, a mistyped results folder, an empty
# hub_mirror, an overlay that redefines a run -------------------------------------------------------

def test_13_a_run_that_starts_from_itself_is_a_cycle(tmp_path):
    bad = overlay(tmp_path, "runs:\n  rlvr-8b: {init: rlvr-8b@20}\n")
    with pytest.raises(UserError, match=r"overlay\.yaml: runs\.rlvr-8b\.init: cycle between runs: rlvr-8b -> rlvr-8b "
                                        r"\(a run cannot start from its own checkpoints\)"):
        Grid.from_files([MINI, bad])
    # the same through `extends`: the cycle is the run and itself, once
    bad = overlay(tmp_path, "runs:\n  sft-4b: {extends: sft-4b}\n")
    with pytest.raises(UserError, match=r"runs\.sft-4b\.extends: cycle between runs: sft-4b -> sft-4b$"):
        Grid.from_files([MINI, bad])


def test_13_a_missing_local_checkpoint_is_no_such_file(tmp_path, monkeypatch):
    from geopd.io.tensors import resolve_source

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "results").mkdir()
    monkeypatch.chdir(tmp_path)
    for path in ("results/step-5", str(tmp_path / "runs" / "x"), "./step-5"):
        with pytest.raises(UserError, match=rf"^{re.escape(path)}: no such file or folder$"):
            resolve_source(path)
    with pytest.raises(UserError, match="no such file or folder, nor a hub id in the local hub cache"):
        resolve_source("geopd-test/no-such-model")


def test_13_report_refuses_a_mistyped_results_folder(tmp_path, capsys):
    from geopd.cli import main
    from geopd.report.gridfile import write_grid
    from geopd.spec import spec_json

    grid = tmp_path / "grid.json"
    write_grid(spec_json(Grid.from_files([REPO / "tests/configs/slice.yaml"]).report_spec()), grid)
    for sub in ("tables", "figures", "claims", "partial", "aggregate-eval"):
        extra = ["--out", str(tmp_path / "a.csv")] if sub == "aggregate-eval" else (
            ["--out-dir", str(tmp_path / "p")] if sub == "partial" else [])
        rc = main(["report", sub, "--results", str(tmp_path / "reslts"), "--grid", str(grid), *extra])
        assert rc == 2 and f"--results {tmp_path / 'reslts'}: no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    rc = main(["report", "tables", "--results", str(tmp_path / "empty"), "--grid", str(grid)])
    assert rc == 2 and "is it the results folder?" in capsys.readouterr().err
    assert not (tmp_path / "reslts").exists() and not (tmp_path / "empty" / "tables").exists()


def test_13_an_empty_hub_mirror_is_refused(tmp_path):
    bad = overlay(tmp_path, "hub_mirror: ''\n")
    with pytest.raises(UserError, match=r"overlay\.yaml: hub_mirror: '' should be non-empty"):
        Grid.from_files([PAPER, bad])


def test_13_an_overlay_that_redefines_a_run_says_what_it_changed(tmp_path):
    good = overlay(tmp_path, "runs:\n  opd-8b-t32b: {seed: 3}\n", "seed.yaml")
    proc = plan(MINI, good)
    assert proc.returncode == 0, proc.stderr
    assert f"geopd plan: warning: {good} redefines run opd-8b-t32b: seed (new: 3)" in proc.stderr
    proc = dry_run(tmp_path / "wd", MINI, good)
    assert proc.returncode == 0 and f"warning: {good} redefines run opd-8b-t32b: seed (new: 3)" in proc.stderr
    change = overlay(tmp_path, "runs:\n  opd-mix-0.75: {method: opd, objective: {alpha: null}}\n"
                               "  sft-4b: {family: sft-anchor}\n")  # the same value: no change
    from geopd.config import merge_files

    changes = merge_files([MINI, change]).changes
    assert changes == [f"{change} redefines run opd-mix-0.75: method (mix -> opd), objective.alpha (0.75 -> None)"]


# ---- 14. nodes beyond the partition ----------------------------------------------------------------

def test_14_nodes_beyond_the_partition_are_refused(tmp_path):
    bad = overlay(tmp_path, "train_resources:\n  opd-8b-t32b: {nodes: 100000}\n")
    refused(plan(PAPER, bad), f"{bad}: train_resources.opd-8b-t32b: nodes 100000 exceeds max_nodes (default 64) 64 "
                              f"(rule train, run opd-8b-t32b)")
    allowed = overlay(tmp_path, "train_resources:\n  opd-8b-t32b: {nodes: 100000}\n"
                                "resources:\n  train: {max_nodes: 100000}\n", "big.yaml")
    proc = plan(PAPER, allowed)
    assert proc.returncode == 0, proc.stderr
    # the numbers stay apart (they once ran together: "26 1,094,432,832.0136,388,375.9")
    assert re.search(r"^  train +26 +12,011,368\.0 +8,074,716\.8 +77\.0/80 /GPU$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^  opd-8b-t32b +100000x8 +32768 +71\.2/80 \(teacher scoring\) +10\.1 +15\.0 +1 +299$",
                     proc.stdout, re.M), proc.stdout


# ---- the two command lines agree: refusals come from one place ---------------------------------------

def test_plan_and_workflow_share_one_set_of_checks(repo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no results/paper-fixture/mirror here
    common = (repo / "workflow/rules/common.smk").read_text()
    assert "refusals(G)" in common and "Grid.load(workflow.configfiles, config)" in common
    cli = (repo / "src/geopd/cli/plan.py").read_text()
    assert "checks.problems(grid)" in cli
    from geopd.plan import UNPLANNED, refusals
    assert refusals(Grid.load([MINI])) == [] and refusals(Grid.load([PAPER])) == []
    # What only says the plan lacks an input (the fixture's `shape: null` before its mirror
    # exists) stops `geopd plan`, not the workflow that may be about to prefetch it; each such
    # message is the cost model's own text.
    fixture = Grid.load([PAPER, repo / "tests/configs/paper-fixture.yaml"])
    assert refusals(fixture) == [] and refusals(fixture, unplanned=True)
    assert all(any(u in p for u in UNPLANNED) for p in refusals(fixture, unplanned=True))
    sources = (repo / "src/geopd/costmodel.py").read_text() + (repo / "src/geopd/plan.py").read_text()
    assert all(sources.count(u) >= 2 for u in UNPLANNED)


# ---- the battery -------------------------------------------------------------------------------------

def _case_files(case, root: Path) -> list[Path]:
    path = root / f"{case.name}.yaml"
    if case.kind == "dir":
        path.mkdir()
    elif case.kind == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 20)
    elif case.kind == "file":
        path.write_text(case.text.replace("{repo}", str(REPO)))
    return {"mini": [MINI], "paper": [PAPER], "literal": [PAPER, LITERAL], None: []}[case.base] + [path]


def run_many(jobs: list[dict], out_dir: Path) -> list[tuple[int, str]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = out_dir / "jobs.json"
    spec.write_text(json.dumps(jobs))
    subprocess.run([sys.executable, str(REPO / "tests/cli_runner.py"), str(spec), str(out_dir), "2"], check=True,
                   timeout=1200, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                       filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))})
    status = json.loads((out_dir / "status.json").read_text())
    return [(rc, (out_dir / f"{i}.out").read_text()) for i, rc in enumerate(status)]


@pytest.mark.slow
def test_battery_refused_by_plan_and_snakemake(tmp_path):
    """Every case of tests/config_battery.py through `geopd plan` and `snakemake -n`: both exit 2,
    print no traceback, name the file where the case says, and give the expected reason. The two
    configs themselves pass both (so the battery cannot pass by refusing everything)."""
    root = tmp_path / "battery configs"
    root.mkdir()
    jobs, labels = [], []
    for i, case in enumerate(CASES):
        files = _case_files(case, root)
        wd = tmp_path / "wd" / str(i)
        jobs.append({"prog": "geopd", "argv": ["plan", "--configfile", *map(str, files)], "cwd": str(REPO)})
        jobs.append({"prog": "snakemake", "cwd": str(REPO),
                     "argv": ["-n", "--quiet", "rules", "-s", str(REPO / "Snakefile"), "-d", str(wd),
                              "--configfile", *map(str, files)]})
        labels += [(case, files, "geopd plan"), (case, files, "snakemake -n")]
    for bases in ([MINI], [PAPER], [PAPER, LITERAL]):
        jobs.append({"prog": "geopd", "argv": ["plan", "--configfile", *map(str, bases)], "cwd": str(REPO)})
        jobs.append({"prog": "snakemake", "cwd": str(REPO),
                     "argv": ["-n", "--quiet", "rules", "-s", str(REPO / "Snakefile"), "-d",
                              str(tmp_path / "wd" / bases[-1].stem), "--configfile", *map(str, bases)]})
    results = run_many(jobs, tmp_path / "out")
    for rc, out in results[len(labels):]:
        assert rc == 0, out[-3000:]
    failures = []
    for (case, files, prog), (rc, out) in zip(labels, results):
        named = {"overlay": files[-1], "base": files[0], None: None}[case.names]
        why = []
        if rc != 2:
            why.append(f"exit {rc}")
        if "Traceback" in out or re.search(r'^\s+File "', out, re.M):
            why.append("a traceback")
        if case.expect not in out:
            why.append(f"no '{case.expect}'")
        if named is not None and str(named) not in out:
            why.append(f"does not name {named.name}")
        if why:
            failures.append(f"{case.name} / {prog}: {', '.join(why)}:\n{out[-1500:]}")
    assert not failures, f"{len(failures)} of {len(labels)}:\n" + "\n".join(failures)
