from .checkpoint import LastCheckpoint
from .progress import ProgressBarHandler
from .validation import EpochValidationHandler
from .wasserstein import WassersteinAlignment

__all__ = ["EpochValidationHandler", "LastCheckpoint", "ProgressBarHandler", "WassersteinAlignment"]
