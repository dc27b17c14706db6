"""`geopd launch`: run a command on 1 process, torchrun, or srun+torchrun across nodes."""
from geopd.launch import configure, main  # noqa: F401  (moves here in the layout refactor)
