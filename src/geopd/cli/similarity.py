"""`geopd similarity`: Sim_K of a run's checkpoint series."""
from geopd.diagnostics.similarity import configure, main  # noqa: F401  (moves here in the layout refactor)
