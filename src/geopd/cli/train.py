"""`geopd train`: train one run of the grid."""
from geopd.train.cli import configure, main  # noqa: F401  (moves here in the layout refactor)
