"""Config resources -> Snakemake/Slurm resources (src/geopd/workflow.py): retries scale runtime
up to max_runtime and memory up to max_mem_mb, and a request above its own cap is refused."""
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from geopd.config import read_yaml
from geopd.errors import UserError
from geopd.grid import Grid
from geopd.workflow import DEFAULT_MAX_RUNTIME, retry_mem_mb, retry_runtime, snakemake_resources

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


@pytest.mark.parametrize("res, runtimes, mems", [
    # opd on paper.yaml's gpu partition: time grows to the 96 h limit, a whole node stays a node
    ({"runtime": 1440, "max_runtime": 5760, "mem_mb": 900000, "max_mem_mb": 900000},
     [1440, 2880, 4320], [900000, 900000, 900000]),
    # sft-8b (72 h) on the same partition: capped at the limit on the first retry
    ({"runtime": 4320, "max_runtime": 5760, "mem_mb": 900000, "max_mem_mb": 900000},
     [4320, 5760, 5760], [900000, 900000, 900000]),
    # a request already at its cap is not scaled
    ({"runtime": 5760, "max_runtime": 5760, "mem_mb": 16000, "max_mem_mb": 256000},
     [5760, 5760, 5760], [16000, 32000, 48000]),
    # memory capped at the node's part way; no max_runtime: the default 48 h
    ({"runtime": 1000, "mem_mb": 1000, "max_mem_mb": 2500}, [1000, 2000, 2880], [1000, 2000, 2500]),
    # no max_mem_mb: nothing says how much a node has, so memory is not scaled
    ({"runtime": 10, "mem_mb": 1000}, [10, 20, 30], [1000, 1000, 1000]),
])
def test_retry_scaling_known_values(res, runtimes, mems):
    assert [retry_runtime(res, a) for a in (1, 2, 3)] == runtimes
    assert [retry_mem_mb(res, a) for a in (1, 2, 3)] == mems


def _at(resources: dict, key: str, run=None, attempt=1):
    return resources[key](SimpleNamespace(run=run), attempt=attempt)


def test_paper_grid_retries_stay_within_its_partitions(repo):
    grid = Grid.from_file(repo / "config/paper.yaml")
    train = snakemake_resources(grid, "train")
    # The defect this replaces: 900000 MB x attempt (1.8 TB, 2.7 TB) and 4320 min x 3 (216 h).
    for attempt in (1, 2, 3):
        for run in grid.runs:
            assert _at(train, "mem_mb", run, attempt) == 900000
            assert _at(train, "runtime", run, attempt) <= 10080
    for run in ("sft-8b", "rlvr-8b", "opd-8b-t32b"):  # each its train_resources runtime, x attempt, capped
        runtime = grid.resources("train", run)["runtime"]
        assert [_at(train, "runtime", run, a) for a in (1, 2, 3)] == [min(runtime * a, 10080) for a in (1, 2, 3)]
    evaluate = snakemake_resources(grid, "evaluate_model")   # the evaluate class, as in the Snakefile
    assert [_at(evaluate, "mem_mb", attempt=a) for a in (1, 2, 3)] == [256000, 512000, 768000]
    diagnose = snakemake_resources(grid, "diagnose")         # a whole cpu node: not scaled
    assert [_at(diagnose, "mem_mb", attempt=a) for a in (1, 2, 3)] == [256000] * 3
    assert [_at(diagnose, "runtime", attempt=a) for a in (1, 2, 3)] == [360, 720, 1080]


def _paper(tmp_path, edit) -> Path:
    config = read_yaml(Path(__file__).resolve().parents[1] / "config/paper.yaml")
    edit(config)
    path = tmp_path / "paper-edited.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("block, key", [("train_resources", r"train_resources\.rlvr-8b"),
                                        ("runs", r"runs\.rlvr-8b\.resources")])
def test_runtime_above_its_cap_names_the_run_and_key(tmp_path, block, key):
    def edit(c):
        if block == "runs":
            c["runs"]["rlvr-8b"]["resources"] = {"runtime": 11000}
        else:
            c["train_resources"]["rlvr-8b"]["runtime"] = 11000
    path = _paper(tmp_path, edit)
    with pytest.raises(UserError, match=rf"{path}: {key}: runtime 11000 min exceeds "
                                        r"max_runtime 10080 \(rule train, run rlvr-8b\)"):
        snakemake_resources(Grid.from_file(path), "train")


def test_runtime_above_the_default_cap_says_to_set_max_runtime(tmp_path):
    def edit(c):
        del c["resources"]["default"]["max_runtime"]
        c["resources"]["report"]["runtime"] = DEFAULT_MAX_RUNTIME + 1
    with pytest.raises(UserError, match=r"resources\.report: runtime 2881 min exceeds max_runtime "
                                        r"\(default 2880 min = 48 h\) 2880 \(rule tables\); set max_runtime"):
        snakemake_resources(Grid.from_file(_paper(tmp_path, edit)), "tables")


def test_memory_above_its_cap_is_refused(tmp_path):
    def edit(c):
        c["resources"]["diagnose"]["mem_mb"] = 300000
    with pytest.raises(UserError, match=r"resources\.diagnose: mem_mb 300000 exceeds max_mem_mb 256000 "
                                        r"\(rule diagnose_reference\): no node could run it"):
        snakemake_resources(Grid.from_file(_paper(tmp_path, edit)), "diagnose_reference")


def test_snakemake_stops_on_a_request_above_its_cap(repo, tmp_path):
    def edit(c):
        c["resources"]["train"]["max_runtime"] = 2000
    path = _paper(tmp_path, edit)
    proc = subprocess.run([SNAKEMAKE, "-n", "--configfile", str(path), "-d", str(tmp_path)], cwd=repo,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert re.search(rf"{re.escape(str(path))}: (runs\.[\w.-]+\.resources|train_resources\.[\w.-]+|resources\.train): "
                     r"runtime \d+ min exceeds "
                     r"max_runtime 2000 \(rule train, run [\w.-]+\)", out), out[-3000:]


# ---- the early signal, the GPU environment, the CPUs of a training job (issue 22) --------------

def _of(resources: dict, key: str, run=None):
    return resources[key](SimpleNamespace(run=run))


def test_train_jobs_ask_for_the_plans_early_signal(repo):
    from geopd.plan import train_estimate

    grid = Grid.from_file(repo / "config/paper.yaml")
    train = snakemake_resources(grid, "train")
    for run in ("sft-8b", "opd-8b-t32b", "effopd", "rlvr-8b"):
        est = train_estimate(grid, run)
        lead = round(1.5 * (est.info["longest_step_s"] + est.info["state_save_s"]) + 60 + 0.5)
        assert _of(train, "slurm_extra", run) == f"--signal=USR1@{est.info['signal_lead_s']}"
        assert abs(est.info["signal_lead_s"] - lead) <= 1
        assert est.info["longest_step_s"] + est.info["state_save_s"] < est.info["signal_lead_s"] < est.requested_hours * 1800
    # EffOPD's longest step carries a validation search: it is warned earlier than plain OPD
    assert train_estimate(grid, "effopd").info["signal_lead_s"] > train_estimate(grid, "opd-8b-t32b").info["signal_lead_s"]
    assert _of(train, "state_every_min", "sft-8b") == "30.0"


def test_the_configs_lead_and_state_interval_win(repo):
    grid = Grid.from_file(repo / "tests/configs/slurm-slice.yaml",
                          overrides={"runs": {"sft-8b": {"resources": {"signal_lead_s": 90, "state_every_min": 5}}}})
    train = snakemake_resources(grid, "train")
    assert _of(train, "slurm_extra", "sft-8b") == "--signal=USR1@90"
    assert _of(train, "state_every_min", "sft-8b") == "5"
    # a CPU job the plan does not model: the default lead, at most half its runtime (10 min)
    assert _of(train, "slurm_extra", "opd-8b-t32b") == "--signal=USR1@300"


def test_dry_run_shows_gpu_rules_running_the_gpu_environment_with_the_early_signal(repo, tmp_path):
    proc = subprocess.run([SNAKEMAKE, "-n", "-p", "--profile", "slurm", "--configfile", "config/paper.yaml",
                           "-d", str(tmp_path), "--cores", "64"], cwd=repo, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    gpu_geopd = str(repo / ".venv-gpu" / "bin" / "geopd")
    commands = [l for l in out.splitlines() if l.startswith("Shell command:")]
    train = [c for c in commands if " launch " in c]
    assert len(train) == 26 and all(c.startswith(f"Shell command: {gpu_geopd} launch ") for c in train)
    assert all(f"-- {gpu_geopd} train " in c and "--cpus-per-task 64 " in c for c in train)
    evaluate = [c for c in commands if " evaluate " in c]
    assert evaluate and all(c.startswith(f"Shell command: {gpu_geopd} evaluate ") for c in evaluate)
    assert not any(c.startswith(f"Shell command: {gpu_geopd} ") for c in commands if " launch " not in c
                   and " evaluate " not in c)  # CPU rules: Snakemake's own environment
    assert len(re.findall(r"slurm_extra=--signal=USR1@\d+", out)) == 26


def test_a_missing_gpu_environment_stops_the_run_before_any_job(repo, tmp_path):
    """`snakemake` without -n: nothing is submitted or run, and the message says how to make it;
    the dry run (here, on a machine without it) still works."""
    config = tmp_path / "no-env.yaml"
    config.write_text(yaml.safe_dump({"environments": {"gpu": str(tmp_path / "missing-venv")}}))
    cmd = [SNAKEMAKE, "--cores", "1", "-d", str(tmp_path / "work"), "--configfile",
           str(repo / "tests/configs/slurm-slice.yaml"), str(config)]
    assert subprocess.run([*cmd, "-n"], cwd=repo, capture_output=True, text=True, timeout=300).returncode == 0
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (f"environments.gpu: {tmp_path / 'missing-venv' / 'bin' / 'geopd'} does not exist, and the jobs of "
            "evaluate, evaluate_model, train request GPUs") in out, out[-3000:]
    assert "bash scripts/bootstrap-gpu.sh" in out
    assert not (tmp_path / "work" / "results").exists()  # nothing ran


@pytest.mark.parametrize("version, ok", [("550.54.14", False), ("575.57.08", False), ("580.65.06", True),
                                         ("590.44.01", True)])
def test_bootstrap_gpu_checks_the_driver_for_cuda_13(repo, tmp_path, version, ok):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text(f"#!/bin/sh\necho {version}\n")
    (fake / "nvidia-smi").chmod(0o755)
    env = {**__import__("os").environ, "PATH": f"{fake}:/usr/bin:/bin", "VENV": str(tmp_path / "venv")}
    for args in (["--check-driver"], []):
        proc = subprocess.run(["bash", "scripts/bootstrap-gpu.sh", *args], cwd=repo, env=env, capture_output=True,
                              text=True, timeout=60)
        if ok:
            assert proc.returncode == 0 and f"NVIDIA driver {version} (>= 580" in proc.stderr, proc.stderr
            break  # (building the environment itself needs the network and a GPU node)
        assert proc.returncode == 1
        assert f"NVIDIA driver {version} is too old" in proc.stderr and "need driver >= 580" in proc.stderr
        assert not (tmp_path / "venv").exists()  # refused before anything was installed


def test_bootstrap_gpu_without_a_driver_says_where_to_run_it(repo, tmp_path):
    env = {**__import__("os").environ, "PATH": "/usr/bin:/bin", "VENV": str(tmp_path / "venv")}
    proc = subprocess.run(["bash", "scripts/bootstrap-gpu.sh"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "nvidia-smi not found" in proc.stderr and "--no-driver-check" in proc.stderr
    assert not (tmp_path / "venv").exists()
