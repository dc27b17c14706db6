# Shared by every file of workflow/rules: the config checked (as `geopd plan` checks it), the grid
# (geopd.grid.Grid) and its results root, wildcard constraints, resources, and the functions that
# build the commands' arguments and the report's captions. Functions only, no rules (Snakemake's
# linter asks for the two to be apart).
import json
import os
import re
import shlex
import sys
from pathlib import Path

from geopd.config import mask_alphas
from geopd.errors import UserError
from geopd.grid import Grid
from geopd.grid.checks import refuse
from geopd.spec import spec_json
from geopd.paths import Layout, samples_file, summary_file
from geopd.plan import evaluation_spec, refusals
from geopd.report.gridfile import input_files, write_grid
from geopd.workflow import Unversioned, check_environments, geopd_commands, snakemake_resources, threads_of


# The config checked before any job is scheduled, by the same code as `geopd plan`: each config
# file read strictly (YAML errors, repeated keys: file and line), the schema, every reference,
# then what no job could carry out (geopd.grid.checks) and each job's memory and time (the cost
# model). One line per problem, naming the file and key; exit status 2, as `geopd plan`.
# (A file Snakemake itself cannot parse never gets here: the plugin snakemake_logger_plugin_geopd
# names its file and line instead of Snakemake's "Config file is not valid JSON or YAML".)
try:
    G = Grid.load(workflow.configfiles, config)
    if workflow.is_main_process:
        for line in G.changes:
            print(f"warning: {line}", file=sys.stderr)
    refuse(refusals(G), ", ".join(G.sources))
except UserError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)

# Rules call the `geopd` console script of the environment Snakemake itself runs in (those of the
# jobs that request GPUs name the GPU environment's by path: GEOPD below). Set, not
# read: the envvars directive the linter suggests asserts variables the user must define.
os.environ.update(PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))

R = str(G.results)
# The `geopd` run by the jobs of each class of rules that may use GPUs: the GPU environment's
# (environments.gpu) where its jobs request GPUs, else the one above. A resource of those rules
# (`{resources.geopd}`), so `snakemake -n -p` shows the path while neither the rules' code nor
# their params, rerun triggers, change with it.
GEOPD = geopd_commands(G, workflow.basedir)
# Every path under R, for the rules' patterns too: L.checkpoints_dir("{run}") is the pattern
# results/runs/{run}/checkpoints (geopd.paths, which the grid and the report use).
L = Layout(G.results)

if G.mirror is not None:
    # Every compute job reads hub models and data sets from the mirror, never from the network
    # (many clusters have none on compute nodes); set here, so Slurm jobs (which re-read the
    # Snakefile) get it too. Only `prefetch` goes online.
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")


wildcard_constraints:
    run="|".join(map(re.escape, G.runs)) or "NO_RUN",
    dataset="|".join(map(re.escape, G.datasets)),
    step=r"\d+",
    matrices="all|attention",
    bench="|".join(map(re.escape, G.benchmarks)) or "NO_BENCH",


def res(name):
    """Resources of a rule from the config (Slurm partition, GPUs, nodes, runtime, memory), and for
    the rules that may use GPUs the `geopd` their jobs run."""
    out = snakemake_resources(G, name)
    cls = G.RESOURCE_CLASS.get(name, name)
    if cls in GEOPD:
        out["geopd"] = GEOPD[cls]
    return out


def threads(name):
    """CPUs per task from the config (capped by --cores when running locally)."""
    return threads_of(G, name)


def built_models(stage):
    """Wildcard constraint: the models built by `stage` ("pretrain" or "finetune")."""
    return "|".join(re.escape(m) for m in G.models if G.model_stage(m) == stage) or "NO_MODEL"


# ---- diagnostics ---------------------------------------------------------------------------


def diagnose_args(base, tuned, out, matrices, threads):
    """`geopd diagnose`'s arguments for one checkpoint pair (every grouping, and reference pairs)."""
    d = config["diagnostics"]
    return ["diagnose", "--base", base, "--tuned", tuned, "--out", out, "--summary", summary_file(out),
            "--matrices", matrices, "--k", str(d["k"]), "--r", str(d["r"]),
            "--alpha", *[str(a) for a in mask_alphas(d)], "--eta", str(d["eta"]), "--workers", str(threads), "--cache-dir", f"{R}/cache/svd"]


def checkpoint_diagnosis(run, step, matrices, threads):
    return diagnose_args(G.ref_source(G.runs[run].w0), G.checkpoint(run, step), G.diagnostics_file(run, step, matrices),
                         matrices, threads)


def reference_diagnosis(pair, out, threads):
    p = G.reference_pairs()[pair]
    return diagnose_args(G.model_source(p["base"]), G.model_source(p["tuned"]), out, "all", threads)


def reference_inputs(wildcards):
    p = G.reference_pairs()[wildcards.pair]
    return G.model_inputs(p["base"]) + G.model_inputs(p["tuned"])


def similarity_args(run, threads):
    d = config["diagnostics"]
    return ["similarity", "--init", G.ref_source(G.runs[run].w0),
            "--checkpoints", *[G.checkpoint(run, s) for s in G.runs[run].checkpoints], "--out", G.similarity_file(run),
            "--k", str(d["sim_k"]), "--matrices", d.get("trajectory_matrices", "attention"), "--workers", str(threads)]


def run_diagnoses(run, threads):
    commands = [checkpoint_diagnosis(run, step, matrices, threads) for step, matrices in G.diagnose_run_targets(run)]
    if run in G.similarity_runs():
        commands.append(similarity_args(run, threads))
    return commands


# ---- evaluation ----------------------------------------------------------------------------


def evaluate_args(model, spec, out, threads):
    """`geopd evaluate`'s arguments for one model on one benchmark (both groupings)."""
    return ["evaluate", "--model", str(model), "--benchmark", spec_json(spec), "--seed", str(config["seed"]),
            "--out", out, "--samples", samples_file(out), "--threads", str(threads)]


def run_evaluations(run, threads):
    return [evaluate_args(G.checkpoint(run, step), evaluation_spec(G, bench, run=run), G.eval_file(run, step, bench),
                          threads) for step, bench in G.eval_run_targets(run)]


def benchmark_data(bench):
    return G.data_dir(G.benchmarks[bench]["data"])


# ---- report --------------------------------------------------------------------------------


def results_root(wildcards, input):
    """R, read off the rule's grid.json input (R/grid.json) rather than taken from outside the rule."""
    return os.path.dirname(input.grid)


def grid_file(spec, out, log):
    """The grid description, written here rather than passed on a command line: the paper grid's
    list of expected inputs is tens of kilobytes, near the kernel's limit for one argument."""
    write_grid(spec, out)
    Path(log).write_text(f"wrote {out}\n")


def captioned(files, family):
    """Report items with one caption file each, workflow/report/<family>/<name>.rst, shown under
    the category of the family (labels: the table or figure, and the file's format)."""
    kind = {"tables": "table", "figures": "figure"}.get(family, "file")
    return [report(f, caption=f"../report/{family}/{Path(f).stem}.rst", category=family.capitalize(),
                   labels={kind: Path(f).stem, "format": Path(f).suffix[1:]})
            for f in files]


# The complete DAG needs every evaluation and diagnosis: one failed job (a hub checkpoint that
# cannot be read, a run that crashed) means no tables at all. report_partial takes as input only
# the per-checkpoint files that exist when the DAG is built, so it never waits for (or
# schedules) a missing one, and reruns when one appears or changes.
def present_report_inputs(wildcards):
    return [p for p in (os.path.join(R, f) for f in input_files(G.report_spec())) if os.path.exists(p)]
