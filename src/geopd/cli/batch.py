"""`geopd batch`: several evaluate / diagnose / similarity commands in one process."""
from geopd.batch import configure, main  # noqa: F401  (moves here in the layout refactor)
