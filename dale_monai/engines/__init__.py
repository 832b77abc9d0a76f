from .trainer import MASK_MODES, DALETrainer
from .utils import DALEEvents, DALEKeys

__all__ = ["DALETrainer", "DALEEvents", "DALEKeys", "MASK_MODES"]
