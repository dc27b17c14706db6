"""`geopd prefetch`: download hub models and data sets into the hub mirror (needs network)."""
from geopd.mirror import configure, main  # noqa: F401  (moves here in the layout refactor)
