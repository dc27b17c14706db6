"""`geopd evaluate`: evaluate a checkpoint on a benchmark."""
from geopd.evaluate.cli import configure, main  # noqa: F401  (moves here in the layout refactor)
