from .clcs import CLCSKeys, CLCSTrainer
from .coteaching import CoTeachingTrainer
from .multi_network import MultiNetworkKeys, MultiNetworkTrainer, optimizer_like
from .mwnet import MetaReweightKeys, MetaReweightTrainer
from .trainer import MASK_MODES, NONFINITE_POLICIES, NORM_STATS, DALETrainer, NonFiniteError
from .trinet import TriNetTrainer
from .utils import DALEEvents, DALEKeys

__all__ = ["DALETrainer", "DALEEvents", "DALEKeys", "MASK_MODES", "NONFINITE_POLICIES", "NORM_STATS", "NonFiniteError",
           "MultiNetworkTrainer", "MultiNetworkKeys", "optimizer_like", "CoTeachingTrainer", "TriNetTrainer",
           "MetaReweightTrainer", "MetaReweightKeys", "CLCSTrainer", "CLCSKeys"]
