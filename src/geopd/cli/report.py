"""`geopd report`: tables, figures and the claims check."""
from geopd.report.cli import configure, main  # noqa: F401  (moves here in the layout refactor)
