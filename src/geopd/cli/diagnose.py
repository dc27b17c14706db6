"""`geopd diagnose`: parameter-space diagnostics of a checkpoint pair."""
from geopd.diagnostics.cli import configure, main  # noqa: F401  (moves here in the layout refactor)
