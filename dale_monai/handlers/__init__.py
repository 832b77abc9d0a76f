from .case_stats import CaseStatsHandler
from .checkpoint import LastCheckpoint
from .progress import ProgressBarHandler
from .validation import EpochValidationHandler
from .wasserstein import WassersteinAlignment

__all__ = ["CaseStatsHandler", "EpochValidationHandler", "LastCheckpoint", "ProgressBarHandler",
           "WassersteinAlignment"]
