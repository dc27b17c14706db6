"""`geopd plan`: list jobs and GPU-hours before anything runs."""
from geopd.plan import configure, main  # noqa: F401  (moves here in the layout refactor)
