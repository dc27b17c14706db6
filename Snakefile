# The whole paper grid as rules. Default: the miniature grid (config/config.yaml);
#   snakemake --profile slurm --configfile config/paper.yaml   for the paper grid on Slurm.
# The logic lives in the `geopd` package; rules only wire inputs, outputs and resources.
# workflow/rules/common.smk holds what the rule files share (the grid, argument builders).
from snakemake.utils import min_version

# Tested with 9.27, the version envs/cpu.txt pins.
min_version("9.0")

# The miniature default, unless --configfile names another config: Snakemake would otherwise
# deep-merge the two grids into one.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/diagnostics.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/hooks.smk"


rule all:
    default_target: True
    input:
        G.final_targets(),
