"""`geopd validate`: validate a config file against the schema."""
from geopd.config import configure, main  # noqa: F401  (moves here in the layout refactor)
