from .trainer import MASK_MODES, NONFINITE_POLICIES, NORM_STATS, DALETrainer, NonFiniteError
from .utils import DALEEvents, DALEKeys

__all__ = ["DALETrainer", "DALEEvents", "DALEKeys", "MASK_MODES", "NONFINITE_POLICIES", "NORM_STATS", "NonFiniteError"]
