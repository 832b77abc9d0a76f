"""Label audit: find the training labels most likely wrong, per case and per pixel (``python -m dale_monai audit``).

See ``docs/audit.md``. Modules: :mod:`.folds` (cross-validation split), :mod:`.cross_validation` (out-of-fold
probabilities, each fold trained by the bundle's own config), :mod:`.signals` (cleanlab, DALE's partition, the
per-case training statistics, their combination), :mod:`.outputs` (table, maps, overlays, review datalist),
:mod:`.auditor` (the audit itself).
"""

from .auditor import AuditInputError, AuditResult, LabelAudit, training_cases
from .cross_validation import AuditConfigError, BundleTraining, out_of_fold_probabilities
from .folds import kfold_indices
from .signals import CASE_SIGNALS, agreeing_signals, cleanlab_signals, rank_average

__all__ = ["AuditConfigError", "AuditInputError", "AuditResult", "BundleTraining", "CASE_SIGNALS", "LabelAudit",
           "agreeing_signals", "cleanlab_signals", "kfold_indices", "out_of_fold_probabilities", "rank_average",
           "training_cases"]
