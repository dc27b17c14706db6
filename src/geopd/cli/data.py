"""`geopd data`: prepare a data set as local JSONL files."""
from geopd.data import configure, main  # noqa: F401  (moves here in the layout refactor)
