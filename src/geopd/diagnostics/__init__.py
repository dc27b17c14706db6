"""Parameter-space diagnostics of checkpoint pairs (geometry paper s3.1, App. C.3, E; EffOPD F.1).

metrics     the per-matrix metrics as pure functions
columns     the per-matrix table's module types and metric columns (torch-free; the report reads them)
cache       on-disk SVD cache of W0, keyed by content
run         planning, per-matrix analysis in a process pool, summary (`geopd diagnose`)
similarity  Sim_K across a checkpoint series (`geopd similarity`)
output      the tables and JSON summaries both write
Checkpoints are read tensor by tensor through geopd.io.tensors; the commands are geopd.cli.diagnose
and geopd.cli.similarity.
"""
