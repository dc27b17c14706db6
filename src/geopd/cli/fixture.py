"""`geopd fixture`: write the paper-shaped offline fixture as a hub mirror."""
from geopd.fixture import configure, main  # noqa: F401  (moves here in the layout refactor)
