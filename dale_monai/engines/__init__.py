from .trainer import MASK_MODES, NONFINITE_POLICIES, DALETrainer, NonFiniteError
from .utils import DALEEvents, DALEKeys

__all__ = ["DALETrainer", "DALEEvents", "DALEKeys", "MASK_MODES", "NONFINITE_POLICIES", "NonFiniteError"]
