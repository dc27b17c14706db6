# The whole paper grid as rules. Default: the miniature grid (config/config.yaml);
#   snakemake --profile slurm --configfile config/paper.yaml   for the paper grid on Slurm.
# The logic lives in the `geopd` package; rules only wire inputs, outputs and resources.
import os
import re
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from geopd.config import explain
from geopd.grid import Grid
from geopd.spec import spec_json
from geopd.workflow import snakemake_resources, threads_of

# The miniature default, unless --configfile names another config: Snakemake would otherwise
# deep-merge the two grids into one.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


try:
    validate(config, "workflow/schemas/config.schema.yaml")
except WorkflowError as exc:
    # Snakemake's message does not name the key or the file; ours does.
    raise WorkflowError(explain(config, workflow.configfiles) or str(exc))

# Rules call the `geopd` console script of the environment Snakemake itself runs in.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])

G = Grid(config, workflow.configfiles)
R = str(G.results)

wildcard_constraints:
    run="|".join(map(re.escape, G.runs)) or "NO_RUN",
    dataset="|".join(map(re.escape, G.datasets)),
    step=r"\d+",
    matrices="all|attention",
    bench="|".join(map(re.escape, G.benchmarks)) or "NO_BENCH",


def res(rule):
    """Resources of a rule from the config (Slurm partition, GPUs, nodes, runtime, memory)."""
    return snakemake_resources(G, rule)


def threads(rule):
    """CPUs per task from the config (capped by --cores when running locally)."""
    return threads_of(G, rule)


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/diagnostics.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        G.final_targets(),
