# What runs once around the workflow (Snakemake's handlers; not on a dry run).


# Before anything is submitted: the environment of the jobs that request GPUs exists
# (geopd.workflow.check_environments says how to make it when it does not).
onstart:
    check_environments(G, workflow.basedir, {job.rule.name for job in workflow.dag.needrun_jobs()})
