"""The workflow's conventions, checked in CI: `snakemake --lint` finds nothing, every table and
figure the report collects has its caption, and config/README.md is the schema's current text."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from geopd.grid import Grid

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
CONFIGS = {
    "default": ["config/config.yaml"],
    "paper": ["config/paper.yaml"],
    # one job per checkpoint (diagnose, similarity, evaluate): the rules the default's grouping skips
    "slice": ["tests/configs/slice.yaml"],
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_snakemake_lint_is_clean(name, tmp_path):
    files = [str(REPO / f) for f in CONFIGS[name]]
    proc = subprocess.run([SNAKEMAKE, "--lint", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                           "--configfile", *files], cwd=REPO, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out, out[-6000:]


@pytest.mark.parametrize("name", ["default", "paper"])
def test_every_report_result_has_a_caption_file(name):
    grid = Grid.from_files([REPO / f for f in CONFIGS[name]])
    families = {"tables": grid.table_files(), "figures": grid.figure_files(),
                "claims": grid.claims_files() + [str(grid.results / "tables" / f"missing.{e}") for e in ("csv", "md")]}
    captions = REPO / "workflow" / "report"
    for family, files in families.items():
        stems = {Path(f).stem for f in files}
        assert {p.stem for p in (captions / family).glob("*.rst")} == stems, family
    assert (captions / "workflow.rst").exists()
    # Each run's training curves (one page per run) share one caption, which names the run
    # through the rule's wildcard.
    assert {p.name for p in (captions / "runs").glob("*.rst")} == {"run_curves.rst"}
    assert "snakemake.wildcards.run" in (captions / "runs" / "run_curves.rst").read_text()
    curves = grid.run_curves_files()
    assert len(curves) == len(grid.runs) and set(curves) <= set(grid.final_targets())
    # That the report shows each with its caption: tests/test_workflow_local.py builds it.


def test_snakefile_states_its_minimum_snakemake():
    assert re.search(r'^min_version\("[\d.]+"\)$', (REPO / "Snakefile").read_text(), re.M)


def test_config_readme_is_the_schemas_current_text():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "config_readme.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
