"""`python -m geopd.cli`: what the `geopd` console script runs (used where a process must
run the same interpreter, e.g. under torchrun)."""
import sys

from geopd.cli import main

sys.exit(main())
