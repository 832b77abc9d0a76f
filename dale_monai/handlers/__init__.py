from .checkpoint import LastCheckpoint
from .progress import ProgressBarHandler
from .wasserstein import WassersteinAlignment

__all__ = ["LastCheckpoint", "ProgressBarHandler", "WassersteinAlignment"]
