"""`geopd make-model`: build a miniature model (pretrain or finetune)."""
from geopd.world.build import configure, main  # noqa: F401  (moves here in the layout refactor)
