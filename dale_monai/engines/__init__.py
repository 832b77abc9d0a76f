from .arco import ARCOKeys, ARCOTrainer
from .clcs import CLCSKeys, CLCSTrainer
from .coteaching import CoTeachingTrainer
from .cps import CrossPseudoSupervisionTrainer
from .dale_pseudo import DALEPseudoLabelTrainer
from .fixed_dynamic import FixedDynamicKeys, FixedDynamicTrainer
from .gapmatch import GapMatchKeys, GapMatchTrainer
from .mean_teacher import MeanTeacherKeys, MeanTeacherTrainer
from .multi_network import MultiNetworkKeys, MultiNetworkTrainer, optimizer_like
from .mwnet import MetaReweightKeys, MetaReweightTrainer
from .semisup import PairedBatches, SemiSupervisedKeys, SemiSupervisedTrainer
from .dale import MASK_MODES, NONFINITE_POLICIES, NORM_STATS, DALETrainer, NonFiniteError
from .trinet import TriNetTrainer
from .dale_events import DALEEvents, DALEKeys

__all__ = ["DALETrainer", "DALEEvents", "DALEKeys", "MASK_MODES", "NONFINITE_POLICIES", "NORM_STATS", "NonFiniteError",
           "MultiNetworkTrainer", "MultiNetworkKeys", "optimizer_like", "CoTeachingTrainer", "TriNetTrainer",
           "MetaReweightTrainer", "MetaReweightKeys", "SemiSupervisedTrainer", "SemiSupervisedKeys", "PairedBatches",
           "MeanTeacherTrainer", "MeanTeacherKeys", "CrossPseudoSupervisionTrainer", "FixedDynamicTrainer",
           "FixedDynamicKeys", "DALEPseudoLabelTrainer", "GapMatchTrainer", "GapMatchKeys", "CLCSTrainer", "CLCSKeys",
           "ARCOTrainer", "ARCOKeys"]
