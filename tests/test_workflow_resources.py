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
