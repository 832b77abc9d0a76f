"""Prediction for pipelines: a bundle's ``inference.json`` on image files, NIfTI files and DICOM series.

Python::

    from dale_monai.predict import Predictor

    report = Predictor("bundles/synthetic2d_unet", device="cpu").predict_path("scans/", "out/", overlay=True)
    print(report.describe())

Command line: ``python -m dale_monai predict --bundle bundles/<name> --input PATH --output DIR``. See
``docs/predict.md``.
"""

from __future__ import annotations

from .checkpoint import CheckpointError, load_weights
from .inputs import Case, discover_cases
from .predictor import Predictor
from .segments import Segment, bundle_segments
from .summary import CaseResult, PredictionReport, mask_measures

__all__ = [
    "Predictor",
    "PredictionReport",
    "CaseResult",
    "CheckpointError",
    "load_weights",
    "Case",
    "discover_cases",
    "Segment",
    "bundle_segments",
    "mask_measures",
]
